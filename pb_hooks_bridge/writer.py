"""Coalesce many small record updates into PocketBase batch requests.

Each caller awaits its own update; whatever piles up while one batch is in flight goes out
in the next one, so a lone update is sent at once and a burst is sent in few transactions
(one SQLite commit per batch instead of one per row).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from cairn_common.pocketbase import PocketBase, PocketBaseError

log = logging.getLogger(__name__)

MAX_BATCH = 100


@dataclass
class _Update:
    collection: str
    record_id: str
    data: dict[str, Any]
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: (
        asyncio.get_running_loop().create_future()))


class BatchWriter:
    def __init__(self, pb: PocketBase) -> None:
        self.pb = pb
        self.pending: list[_Update] = []
        self._flushing: asyncio.Task[None] | None = None
        self.batch_ok = True

    async def update(self, collection: str, record_id: str,
                     data: dict[str, Any]) -> dict[str, Any]:
        item = _Update(collection, record_id, data)
        self.pending.append(item)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_all(), name="batch-writer")
        return await item.done

    async def _flush_all(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            await self._send(chunk)

    async def _send(self, chunk: list[_Update]) -> None:
        if self.batch_ok and len(chunk) > 1:
            requests = [{"method": "PATCH",
                         "url": f"/api/collections/{u.collection}/records/{u.record_id}",
                         "body": u.data} for u in chunk]
            try:
                results = await self.pb.batch(requests)
                for item, result in zip(chunk, results, strict=True):
                    if not item.done.done():
                        item.done.set_result(result.get("body") or {})
                return
            except PocketBaseError as exc:
                if exc.status in (403, 404):
                    self.batch_ok = False  # batch API off: stay with single requests
                elif exc.status != 400:
                    for item in chunk:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    return
                # 400: one row is bad and the transaction rolled back; isolate it below
        for item in chunk:
            try:
                result = await self.pb.update(item.collection, item.record_id, item.data)
            except PocketBaseError as exc:
                if not item.done.done():
                    item.done.set_exception(exc)
            else:
                if not item.done.done():
                    item.done.set_result(result)
