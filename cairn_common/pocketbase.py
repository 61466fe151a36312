"""The one async PocketBase client (httpx): auth, CRUD, paging, and the realtime SSE stream.

The `pocketbase` PyPI client is synchronous and its realtime thread dies for good when
PocketBase restarts (SPEC §10), so long-running sidecars use this instead. The follower that
keeps a realtime subscription alive (reconnect, reconcile, dead-link watchdog) lives in
cairn_common.realtime; `follow_realtime` is re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from cairn_common.audit_key import HEADER as AUDIT_HEADER

log = logging.getLogger(__name__)

# pb_hooks/realtime_ping.pb.js: asks PocketBase to write a `cairn_ping` SSE message on one
# realtime client's own stream (PocketBase sends no keepalive of its own).
PING_PATH = "/api/cairn/realtime-ping"
KEEPALIVE_EVENT = "cairn_ping"
_PING_MARK = "realtime-ping:"  # in every answer of the hook: tells it from a missing route


def pb_date(epoch: float) -> str:
    """PocketBase's date format (UTC, milliseconds), which also sorts as text."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


class PocketBaseError(Exception):
    """A request failed; `status` is 0 when the server could not be reached."""

    def __init__(self, message: str, status: int = 0, data: dict[str, Any] | None = None,
                 reason: str = ""):
        super().__init__(message)
        self.status = status
        self.data = data or {}
        self.reason = reason  # PocketBase's own message, when it sent one


class PingUnsupported(PocketBaseError):
    """PocketBase has no keepalive route (an older server without pb_hooks/realtime_ping)."""


@dataclass(frozen=True)
class RealtimeEvent:
    topic: str
    action: str  # create | update | delete
    record: dict[str, Any]

    @property
    def collection(self) -> str:
        return self.topic.split("/", 1)[0]


HTTP_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)


class PocketBase:
    """Superuser or record auth; a 401 re-authenticates once with the same credentials."""

    ping_path = PING_PATH

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        # keep as many idle connections as may be busy at once: with httpx's default of 20,
        # a burst of concurrent requests (the bridge runs up to ~100) closes and reopens a
        # TCP connection for most of them
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=HTTP_LIMITS)
        self.token = ""
        self._login: tuple[str, str, str] | None = None
        self.audit_key = ""  # sent with audit_log writes (cairn_common/audit_key.py)
        self.read_audit_key: Callable[[], str | None] | None = None  # reads it afresh

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

    async def auth_refresh(self, collection: str, token: str) -> dict[str, Any]:
        """Sign in with an existing auth token (PocketBase answers with a fresh one)."""
        self.token = token
        body = await self._send("POST", f"/api/collections/{collection}/auth-refresh",
                                retry_auth=False)
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
        if collection != "audit_log":
            return await self._send("POST", self._records(collection), json=data)
        try:
            return await self._send("POST", self._records(collection), json=data,
                                    headers=self._audit_headers())
        except PocketBaseError as exc:
            # the key was made again (a new data dir, PocketBase restarted): read it once more
            fresh = self.read_audit_key() if exc.status == 403 and self.read_audit_key else None
            if not fresh or fresh == self.audit_key:
                raise
            self.audit_key = fresh
            return await self._send("POST", self._records(collection), json=data,
                                    headers=self._audit_headers())

    def _audit_headers(self) -> dict[str, str] | None:
        """Only Cairn's components write audit rows: they carry the audit key
        (cairn_common/audit_key.py; `audit_key` is set by the component that has it)."""
        return {AUDIT_HEADER: self.audit_key} if self.audit_key else None

    async def update(
        self, collection: str, record_id: str, data: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """PATCH one record; `headers` are sent along (e.g. a precondition header)."""
        return await self._send("PATCH", self._record(collection, record_id), json=data,
                                headers=headers)

    async def delete(self, collection: str, record_id: str) -> None:
        await self._send("DELETE", self._record(collection, record_id))

    async def update_settings(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Superuser only: PATCH /api/settings."""
        return await self._send("PATCH", "/api/settings", json=patch)

    async def batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several writes in one transaction (PocketBase's batch API must be enabled)."""
        headers = self._audit_headers()
        if headers:
            requests = [{**r, "headers": {**r.get("headers", {}), **headers}}
                        if "/collections/audit_log/" in r.get("url", "") else r
                        for r in requests]
        return await self._send("POST", "/api/batch", json={"requests": requests})

    # -- realtime ---------------------------------------------------------------------

    async def realtime(self, topics: list[str]) -> AsyncIterator[RealtimeEvent]:
        """Subscribe and yield events until the stream ends (idle timeout, restart).

        Yields a `connect` event (record: {"clientId"}) once subscribed, then the records'
        events, and a `keepalive` event (topic KEEPALIVE_EVENT) for each ping asked for with
        `ping_realtime`. The caller reconnects and reconciles when the iterator ends or
        raises; this stream has no read timeout of its own (see cairn_common.realtime).
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
                    if name == KEEPALIVE_EVENT:
                        yield RealtimeEvent(KEEPALIVE_EVENT, "keepalive", {})
                        continue
                    try:
                        payload = json.loads(data)
                        yield RealtimeEvent(name, payload["action"], payload["record"])
                    except (ValueError, KeyError, TypeError):
                        log.warning("skipping malformed realtime event", extra={"topic": name})
        except httpx.HTTPError as exc:
            raise PocketBaseError(f"realtime stream lost: {exc.__class__.__name__}: {exc}") from exc

    async def ping_realtime(self, client_id: str) -> None:
        """Ask PocketBase to send a keepalive on realtime client `client_id`'s own stream
        (it must be this auth's client). Raises PingUnsupported when the route is missing."""
        try:
            await self._send("POST", self.ping_path, json={"clientId": client_id})
        except PocketBaseError as exc:
            if exc.status == 404 and _PING_MARK not in str(exc).lower():
                raise PingUnsupported(
                    f"POST {self.ping_path}: no such route (PocketBase without "
                    "pb_hooks/realtime_ping.pb.js)", 404) from exc
            raise

    # -- plumbing ---------------------------------------------------------------------

    @staticmethod
    def _records(collection: str) -> str:
        return f"/api/collections/{quote(collection)}/records"

    def _record(self, collection: str, record_id: str) -> str:
        return f"{self._records(collection)}/{quote(record_id, safe='')}"

    async def _send(self, method: str, path: str, retry_auth: bool = True,
                    headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = self.token
        try:
            resp = await self.http.request(method, path, headers=sent, **kwargs)
        except httpx.HTTPError as exc:
            raise PocketBaseError(
                f"{method} {path}: PocketBase unreachable at {self.url} "
                f"({exc.__class__.__name__})"
            ) from exc
        if resp.status_code == 401 and retry_auth and self._login:
            await self.auth_with_password(*self._login)
            return await self._send(method, path, retry_auth=False, headers=headers, **kwargs)
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
                                  resp.status_code, data,
                                  str(body.get("message", "")) if isinstance(body, dict) else "")
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()


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


def __getattr__(name: str) -> Any:
    """Re-exports from cairn_common.realtime (it imports this module, so lazily)."""
    if name in ("follow_realtime", "DEAD_AFTER", "KEEPALIVE", "FALLBACK_TIMEOUT"):
        from cairn_common import realtime
        return getattr(realtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
