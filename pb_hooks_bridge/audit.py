"""Audit rows (`audit_log`, actor `bridge`), written in batches off the hot path.

Entries queue in memory and go out through PocketBase's batch API; a PocketBase outage
delays them (bounded queue, retried) instead of blocking issuance.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.tasks import cancel_and_wait
from pb_hooks_bridge import metrics

log = logging.getLogger(__name__)

ACTOR = "bridge"
MAX_QUEUE = 100_000
BATCH = 100


class AuditWriter:
    def __init__(self, pb: PocketBase, flush_interval: float = 0.2) -> None:
        self.pb = pb
        self.flush_interval = flush_interval
        self.queue: deque[dict[str, Any]] = deque(maxlen=MAX_QUEUE)
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch_ok = True

    def record(self, action: str, tenant: str | None, target: str,
               details: dict[str, Any] | None = None) -> None:
        if len(self.queue) == MAX_QUEUE:
            self.dropped += 1
            log.error("audit queue full, dropping oldest entry", extra={"dropped": self.dropped})
        self.queue.append({
            "tenant": tenant or "", "actor": ACTOR, "action": action, "target": target,
            "details": details or {},
        })
        if len(self.queue) >= BATCH:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self, grace: float = 5.0) -> None:
        """Flush what is queued (bounded), then stop."""
        await cancel_and_wait([self._task])
        self._task = None
        try:
            await asyncio.wait_for(self.flush(), grace)
        except (TimeoutError, PocketBaseError) as exc:
            log.warning("audit entries left unwritten at stop",
                        extra={"left": len(self.queue), "error": str(exc)})

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.5
            except PocketBaseError as exc:
                log.warning("audit write failed; will retry", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
            except Exception:  # never die silently: audit rows would stop for good
                metrics.AUDIT_FAILURES.inc()
                log.exception("audit writer failed; will retry")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    async def flush(self) -> None:
        while self.queue:
            chunk = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            await self._write(chunk)
            for _ in chunk:
                if self.queue:  # (a crash drill may have cleared it meanwhile)
                    self.queue.popleft()

    async def _write(self, chunk: list[dict[str, Any]]) -> None:
        entries = [{k: v for k, v in e.items() if not (k == "tenant" and not v)} for e in chunk]
        if self._batch_ok and len(entries) > 1:
            requests = [{"method": "POST", "url": "/api/collections/audit_log/records",
                         "body": entry} for entry in entries]
            try:
                await self.pb.batch(requests)
                return
            except PocketBaseError as exc:
                if exc.status in (403, 404):  # batch API switched off
                    self._batch_ok = False
                elif exc.status != 400:  # unreachable etc.: retry the whole chunk later
                    raise
        for entry in entries:  # one by one, so one bad entry cannot block the rest
            try:
                await self.pb.create("audit_log", entry)
            except PocketBaseError as exc:
                if exc.status != 400:
                    raise
                log.error("audit entry rejected", extra={"entry": entry, "error": str(exc)})
