"""The one async PocketBase client (httpx): auth, CRUD, paging, and the realtime SSE stream.

The `pocketbase` PyPI client is synchronous and its realtime thread dies for good when
PocketBase restarts (SPEC §10), so long-running sidecars use this instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)


def pb_date(epoch: float) -> str:
    """PocketBase's date format (UTC, milliseconds), which also sorts as text."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


class PocketBaseError(Exception):
    """A request failed; `status` is 0 when the server could not be reached."""

    def __init__(self, message: str, status: int = 0, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.data = data or {}


@dataclass(frozen=True)
class RealtimeEvent:
    topic: str
    action: str  # create | update | delete
    record: dict[str, Any]

    @property
    def collection(self) -> str:
        return self.topic.split("/", 1)[0]


class PocketBase:
    """Superuser or record auth; a 401 re-authenticates once with the same credentials."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout)
        self.token = ""
        self._login: tuple[str, str, str] | None = None

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> PocketBase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- auth -------------------------------------------------------------------------

    async def auth_superuser(self, email: str, password: str) -> dict[str, Any]:
        return await self.auth_with_password("_superusers", email, password)

    async def auth_with_password(
        self, collection: str, identity: str, password: str
    ) -> dict[str, Any]:
        self._login = (collection, identity, password)
        body = await self._send(
            "POST", f"/api/collections/{collection}/auth-with-password",
            json={"identity": identity, "password": password}, retry_auth=False,
        )
        self.token = body["token"]
        return body["record"]

    # -- records ----------------------------------------------------------------------

    async def list(
        self, collection: str, filter: str = "", sort: str = "", fields: str = "",
        expand: str = "", per_page: int = 500,
    ) -> list[dict[str, Any]]:
        """Every matching record, all pages."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "perPage": per_page, "skipTotal": 1}
            for key, value in (("filter", filter), ("sort", sort), ("fields", fields),
                               ("expand", expand)):
                if value:
                    params[key] = value
            body = await self._send("GET", self._records(collection), params=params)
            items.extend(body["items"])
            if len(body["items"]) < per_page:
                return items
            page += 1

    async def first(self, collection: str, filter: str) -> dict[str, Any] | None:
        body = await self._send(
            "GET", self._records(collection),
            params={"filter": filter, "perPage": 1, "skipTotal": 1},
        )
        return body["items"][0] if body["items"] else None

    async def get(self, collection: str, record_id: str, expand: str = "") -> dict[str, Any]:
        params = {"expand": expand} if expand else None
        return await self._send("GET", self._record(collection, record_id), params=params)

    async def create(self, collection: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", self._records(collection), json=data)

    async def update(
        self, collection: str, record_id: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._send("PATCH", self._record(collection, record_id), json=data)

    async def delete(self, collection: str, record_id: str) -> None:
        await self._send("DELETE", self._record(collection, record_id))

    async def update_settings(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Superuser only: PATCH /api/settings."""
        return await self._send("PATCH", "/api/settings", json=patch)

    async def batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several writes in one transaction (PocketBase's batch API must be enabled)."""
        return await self._send("POST", "/api/batch", json={"requests": requests})

    # -- realtime ---------------------------------------------------------------------

    async def realtime(self, topics: list[str]) -> AsyncIterator[RealtimeEvent]:
        """Subscribe and yield events until the stream ends (idle timeout, restart).

        Yields nothing of its own for the connect handshake; the caller reconnects and
        reconciles when the iterator ends or raises.
        """
        headers = {"Accept": "text/event-stream"}
        timeout = httpx.Timeout(10.0, read=None)
        try:
            async with self.http.stream("GET", "/api/realtime", headers=headers,
                                        timeout=timeout) as resp:
                if resp.status_code != 200:
                    raise PocketBaseError(f"realtime connect: HTTP {resp.status_code}",
                                          resp.status_code)
                subscribed = False
                async for name, data in _sse_events(resp.aiter_lines()):
                    if name == "PB_CONNECT":
                        client_id = json.loads(data)["clientId"]
                        await self._send("POST", "/api/realtime",
                                         json={"clientId": client_id, "subscriptions": topics})
                        subscribed = True
                        yield RealtimeEvent("PB_CONNECT", "connect", {"clientId": client_id})
                        continue
                    if not subscribed:
                        continue
                    try:
                        payload = json.loads(data)
                        yield RealtimeEvent(name, payload["action"], payload["record"])
                    except (ValueError, KeyError, TypeError):
                        log.warning("skipping malformed realtime event", extra={"topic": name})
        except httpx.HTTPError as exc:
            raise PocketBaseError(f"realtime stream lost: {exc.__class__.__name__}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------

    @staticmethod
    def _records(collection: str) -> str:
        return f"/api/collections/{quote(collection)}/records"

    def _record(self, collection: str, record_id: str) -> str:
        return f"{self._records(collection)}/{quote(record_id, safe='')}"

    async def _send(self, method: str, path: str, retry_auth: bool = True,
                    **kwargs: Any) -> Any:
        headers = {"Authorization": self.token} if self.token else {}
        try:
            resp = await self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise PocketBaseError(
                f"{method} {path}: PocketBase unreachable at {self.url} "
                f"({exc.__class__.__name__})"
            ) from exc
        if resp.status_code == 401 and retry_auth and self._login:
            await self.auth_with_password(*self._login)
            return await self._send(method, path, retry_auth=False, **kwargs)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            data = body.get("data") if isinstance(body, dict) else None
            detail = body.get("message", resp.text[:200]) if isinstance(body, dict) else ""
            if data:
                fields = "; ".join(f"{k}: {v.get('message', v) if isinstance(v, dict) else v}"
                                   for k, v in data.items())
                detail = f"{detail} ({fields})"
            raise PocketBaseError(f"{method} {path}: HTTP {resp.status_code}: {detail}",
                                  resp.status_code, data)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()


async def follow_realtime(
    pb: PocketBase, topics: list[str], on_event: Callable[[RealtimeEvent], object],
    on_connect: Callable[[], Awaitable[object]], stopping: asyncio.Event,
    on_state: Callable[[bool], object] | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> None:
    """Forever: subscribe, then `on_connect` (reconcile), then hand over events; reconnect
    with backoff when cut off (idle timeout, restart). Events that arrive while
    `on_connect` runs wait in a queue, so nothing between subscribe and reconcile is lost.
    """
    backoff = 0.2
    while not stopping.is_set():
        queue: asyncio.Queue[RealtimeEvent | None] = asyncio.Queue()
        reader = asyncio.create_task(_read_into(pb, topics, queue), name="realtime-reader")
        try:
            first = await queue.get()
            if first is None:
                raise PocketBaseError("realtime stream closed before connect")
            if on_state:
                on_state(True)
            await on_connect()
            backoff = 0.2
            while (event := await queue.get()) is not None:
                on_event(event)
        except PocketBaseError as exc:
            log.warning("PocketBase link down; will reconnect", extra={"error": str(exc)})
        except retry_on as exc:
            log.warning("resync failed; will retry", extra={"error": str(exc)})
        finally:
            if on_state:
                on_state(False)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 10.0)


async def _read_into(pb: PocketBase, topics: list[str],
                     queue: asyncio.Queue[RealtimeEvent | None]) -> None:
    try:
        async for event in pb.realtime(topics):
            queue.put_nowait(event)
    except PocketBaseError as exc:
        log.info("realtime stream ended", extra={"error": str(exc)})
    finally:
        queue.put_nowait(None)


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) pairs from an SSE line stream."""
    name, data = "", []
    async for line in lines:
        if line == "":
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    await asyncio.sleep(0)
