"""Coalesce many small record updates into PocketBase batch requests.

Each caller awaits its own update; whatever piles up while one batch is in flight goes out
in the next one, so a lone update is sent at once and a burst is sent in few transactions
(one SQLite commit per batch instead of one per row).

An update may carry request headers, e.g. the precondition `X-Cairn-Unless-Status`
(pb_hooks/updates.pb.js). Batch sub-requests carry their own headers (PocketBase
apis/batch.go applies `requests[i].headers` to each one), so such updates always go through
the batch API, alone if need be. A batch is one transaction: when one of its updates is
refused, PocketBase names it (`data.requests.<i>.response`); that caller gets its own error
(status and message of the refusal) and the others are sent again without it.

When the batch API is off (403/404) or a 400 names no sub-request, the updates go one by one
as single PATCHes, each still carrying its headers: a precondition is never dropped, and a
refusal (409) reaches its caller exactly as from a batch (`superseded`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cairn_common.pocketbase import PocketBase, PocketBaseError

log = logging.getLogger(__name__)

MAX_BATCH = 100
UNLESS_STATUS = "X-Cairn-Unless-Status"  # refuse (409) when the row's status is listed
NOT_IF_DISABLED = {UNLESS_STATUS: "disabled"}


def superseded(exc: BaseException) -> bool:
    """Was this write refused by its precondition, i.e. a newer change won?"""
    return isinstance(exc, PocketBaseError) and exc.status == 409


@dataclass
class _Update:
    collection: str
    record_id: str
    data: dict[str, Any]
    headers: dict[str, str] | None = None
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: (
        asyncio.get_running_loop().create_future()))

    @property
    def url(self) -> str:
        return f"/api/collections/{self.collection}/records/{self.record_id}"


Observer = Callable[[str, dict[str, Any]], None]


class BatchWriter:
    def __init__(self, pb: PocketBase, on_written: Observer | None = None) -> None:
        self.pb = pb
        self.on_written = on_written  # (collection, stored record) after each success
        self.pending: list[_Update] = []
        self._flushing: asyncio.Task[None] | None = None
        self.batch_ok = True

    async def update(self, collection: str, record_id: str, data: dict[str, Any],
                     headers: dict[str, str] | None = None) -> dict[str, Any]:
        item = _Update(collection, record_id, data, headers)
        self.pending.append(item)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_all(), name="batch-writer")
        return await item.done

    async def _flush_all(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            await self._send(chunk)

    async def _send(self, chunk: list[_Update]) -> None:
        left = chunk
        while left and self.batch_ok and (len(left) > 1 or left[0].headers):
            try:
                results = await self.pb.batch([_request(u) for u in left])
            except PocketBaseError as exc:
                index, refusal = _refused_item(exc, len(left))
                if index is not None:
                    self._fail(left[index], refusal)
                    left = left[:index] + left[index + 1:]
                    continue  # the transaction rolled back: the others go again
                if exc.status in (403, 404):
                    self.batch_ok = False  # batch API off: stay with single requests
                    break
                if exc.status != 400:
                    for item in left:
                        self._fail(item, exc)
                    return
                break  # a 400 that names no request: isolate it below
            for item, result in zip(left, results, strict=True):
                self._succeed(item, result.get("body") or {})
            return
        for item in left:  # one by one, each with its own headers (its precondition)
            try:
                result = await self.pb.update(item.collection, item.record_id, item.data,
                                              headers=item.headers)
            except PocketBaseError as exc:
                self._fail(item, exc)
            else:
                self._succeed(item, result)

    def _succeed(self, item: _Update, record: dict[str, Any]) -> None:
        if self.on_written is not None and record:
            try:
                self.on_written(item.collection, record)
            except Exception:  # an observer never fails a write
                log.exception("write observer failed")
        if not item.done.done():
            item.done.set_result(record)

    @staticmethod
    def _fail(item: _Update, exc: BaseException) -> None:
        if not item.done.done():
            item.done.set_exception(exc)


def _request(item: _Update) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "PATCH", "url": item.url, "body": item.data}
    if item.headers:
        request["headers"] = item.headers
    return request


def _refused_item(exc: PocketBaseError, count: int) -> tuple[int | None, PocketBaseError]:
    """The index of the sub-request PocketBase says failed, with its own error."""
    requests = exc.data.get("requests") if isinstance(exc.data, dict) else None
    if not isinstance(requests, dict) or len(requests) != 1:
        return None, exc
    (key, detail), = requests.items()
    if not str(key).isdigit() or not 0 <= int(key) < count or not isinstance(detail, dict):
        return None, exc
    response = detail.get("response") if isinstance(detail.get("response"), dict) else {}
    status = int(response.get("status") or 400)
    message = str(response.get("message") or detail.get("message") or "refused")
    data = response.get("data") if isinstance(response.get("data"), dict) else {}
    return int(key), PocketBaseError(f"PATCH (batch): HTTP {status}: {message}", status, data)
