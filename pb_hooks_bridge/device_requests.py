"""Answer what devices ask over NATS (cairn_common/device_control.py): a renewed JWT and
their desired config, so that after enrollment no agent logs in to PocketBase on a
schedule (a bcrypt check per login: a few dozen a second on 2 cores).

Who may ask: the agent role publishes only on its own `agents.<code>.>`, but a tenant's
service roles may publish anywhere in the tenant. Both answers are harmless to anyone but
the device: the JWT is signed for the key registered on the row, useless without that
key's seed (which never left the device), and `devices.config` is readable by every
member of the tenant. Renewal runs in the device's identity lane, re-signs only for an
active device whose registered key is the one asking, and only once the grant is due
(identities.py `renewal_window`), so a device asking in a loop gets an error, not a new
JWT and an audit row per request.

Answers go only to the asking device's own inbox (`_INBOX_<code>.…`): the bridge may
publish anywhere in the tenant, and NATS never checks a reply subject, so answering any
other one would let a device publish through the bridge. Requests are bounded before any
work is queued: per device BURST at once then one every 1/REFILL seconds and one renewal
at a time, per tenant PER_TENANT in flight, and a renewal of a JWT still short of its
window is refused without entering the device's lane. A flood from one device therefore
never delays that device's disable, nor another tenant's requests.

Desired config is read from PocketBase for each request (a superuser read, no password
check: cheap), at most READS at once, so an agent that got the `config` hint always reads
the version that caused it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from cairn_common.device_control import (
    CONFIG,
    KINDS,
    MAX_REQUEST_BYTES,
    RENEW,
    hint_subject,
)
from cairn_common.json_body import BodyError, parse_object
from cairn_common.natsauth import device_inbox
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.renewable import is_newer
from cairn_common.server_messages import server_header
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import Account
from pb_hooks_bridge.device_ids import CODE, DeviceIds
from pb_hooks_bridge.identities import Identities, renewal_window
from pb_hooks_bridge.lanes import REQUESTS, Lanes
from pb_hooks_bridge.links import TenantLinks
from pb_hooks_bridge.presence import QUEUE

log = logging.getLogger(__name__)

SUBJECT = "agents.*.ctl.*"
MAX_WAITING = 50_000  # requests being answered at once, all tenants
PER_TENANT = 256  # requests being answered at once for one tenant
BURST, REFILL = 10, 1.0  # per device: 10 requests at once, then one a second
READS = 16  # PocketBase reads for config fetches at once


class Refused(Exception):
    """A request answered with an error the device can act on (words, not a trace)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeviceRequests:
    def __init__(self, pb: PocketBase, identities: Identities, lanes: Lanes,
                 links: TenantLinks, ids: DeviceIds,
                 account_for: Callable[[str], Awaitable[Account | None]]) -> None:
        self.pb = pb
        self.identities = identities
        self.lanes = lanes
        self.links = links
        self.ids = ids
        self.account_for = account_for
        self.tasks: set[asyncio.Task[None]] = set()  # requests being answered
        self.per_tenant: dict[str, int] = {}  # tenant id -> requests being answered
        self.renewing: set[tuple[str, str]] = set()  # (tenant, code) with a renewal running
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)
        self.reads = asyncio.Semaphore(READS)

    async def watch(self, tenant_id: str, nc: Any) -> None:
        """Subscribe to one tenant's device requests (for each new tenant link)."""

        async def on_request(msg: Msg) -> None:
            parts = msg.subject.split(".")
            code = parts[1] if len(parts) == 4 else ""
            # answers go only to the asking device's own inbox: any other reply subject
            # would have the bridge (which may publish anywhere in the tenant) publish
            # there for whoever asked (NATS never checks a reply subject)
            if (not code or not msg.reply or server_header(msg.headers)
                    or not msg.reply.startswith(device_inbox(code) + ".")):
                metrics.DEVICE_REQUESTS.labels("?", "ignored").inc()
                return
            why = self._admit(tenant_id, code, parts[3])
            if why is not None:
                metrics.DEVICE_REQUESTS.labels(parts[3] if parts[3] in KINDS else "?",
                                               "limited").inc()
                await _reply(msg, {"status": "error", "error": why})
                return
            self._start(tenant_id, code, parts[3], msg)

        await nc.subscribe(SUBJECT, queue=QUEUE, cb=on_request)

    async def hint(self, account: Account, code: str) -> None:
        """Tell the agent its desired config changed (it fetches it; best effort)."""
        try:
            nc = await self.links.get(account.tenant_id, account.slug)
            # agents answer only requests: a reply subject nobody reads (no answer awaited)
            await nc.publish(hint_subject(code), b"{}", reply=nc.new_inbox())
        except Exception as exc:  # the agent's periodic check catches up
            log.info("config hint not sent", extra={"device": code, "error": str(exc)})

    def _admit(self, tenant_id: str, code: str, kind: str) -> str | None:
        """Why this request is refused before any work (None: it is taken). Bounds what one
        device and one tenant can queue, so a flood never delays anyone's revocation."""
        key = (tenant_id, code)
        now = time.monotonic()
        tokens, at = self.buckets.get(key, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - at) * REFILL)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return f"too many requests from this device; ask again in {(1 - tokens) / REFILL:.0f} s"
        if len(self.tasks) >= MAX_WAITING or self.per_tenant.get(tenant_id, 0) >= PER_TENANT:
            return "the control plane is busy; ask again later"
        if kind == RENEW and key in self.renewing:
            return "a renewal for this device is already running"
        self.buckets[key] = (tokens - 1, now)
        if len(self.buckets) > 4 * MAX_WAITING:  # forget idle devices' buckets
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < 60}
        return None

    def _start(self, tenant_id: str, code: str, kind: str, msg: Msg) -> None:
        key = (tenant_id, code)
        if kind == RENEW:
            self.renewing.add(key)
        self.per_tenant[tenant_id] = self.per_tenant.get(tenant_id, 0) + 1
        task = asyncio.create_task(self.answer(tenant_id, msg),
                                   name=f"device-request:{msg.subject[:80]}")
        self.tasks.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            self.per_tenant[tenant_id] -= 1
            if not self.per_tenant[tenant_id]:
                del self.per_tenant[tenant_id]
            if kind == RENEW:
                self.renewing.discard(key)

        task.add_done_callback(done)

    async def answer(self, tenant_id: str, msg: Msg) -> None:
        parts = msg.subject.split(".")
        kind = parts[3] if len(parts) == 4 else "?"
        try:
            body = await self._answer(tenant_id, parts, kind, msg.data)
            outcome = "ok"
        except Refused as exc:
            body, outcome = {"status": "error", "error": str(exc)}, "refused"
        except Exception as exc:  # PocketBase or NATS trouble: the device asks again
            log.warning("device request failed", extra={"subject": msg.subject,
                                                        "error": str(exc)})
            body, outcome = {"status": "error", "error": "the control plane could not "
                             "answer now; ask again later"}, "failed"
        metrics.DEVICE_REQUESTS.labels(kind if kind in KINDS else "?", outcome).inc()
        await _reply(msg, body)

    async def _answer(self, tenant_id: str, parts: list[str], kind: str,
                      data: bytes) -> dict[str, Any]:
        if len(parts) != 4 or kind not in KINDS:
            raise Refused(f"unknown request (known: agents.<code>.ctl.{{{','.join(KINDS)}}})")
        code = parts[1]
        if not CODE.match(code):
            raise Refused("not a device code")
        request = _parse(data)
        account = await self.account_for(tenant_id)
        if account is None or not account.active:
            raise Refused("the tenant is inactive or gone")
        device_id = await self.ids.resolve(tenant_id, code)
        if device_id is None:
            raise Refused(f"no device {code!r} in this tenant")
        if kind == CONFIG:
            return await self._config(device_id)
        self._not_yet_due(account, request.get("jwt"))
        # in the device's own lane, after any disable queued before us
        return await self.lanes.call(f"devices:{device_id}",
                                     lambda: self._renew(account, device_id, request),
                                     pool=REQUESTS)

    async def _config(self, device_id: str) -> dict[str, Any]:
        async with self.reads:
            row = await self._row(device_id)
        return {"status": "ok", "config": row.get("config") or {},
                "updated": row.get("updated") or ""}

    async def _renew(self, account: Account, device_id: str,
                     request: dict[str, Any]) -> dict[str, Any]:
        """In the device's lane: a new JWT for the registered key, when due."""
        public_key, stale = request.get("public_key"), request.get("jwt")
        if not isinstance(public_key, str) or not isinstance(stale, str):
            raise Refused("a renewal needs the string fields public_key and jwt")
        row = await self._row(device_id)
        self.identities.freshness.saw("devices", row)
        status = row.get("status") or "pending"
        if status != "active":
            raise Refused(f"the device is {status}")
        if row.get("nats_public_key") != public_key:
            raise Refused("that key is not the device's registered key")
        outcome = await self.identities.sync_device(account, row)
        token = row.get("nats_jwt") or ""
        grant = self.identities.current_grant(account, token)
        if outcome == "superseded" or grant is None or grant.get("sub") != public_key:
            raise Refused("the device changed meanwhile; ask again")
        if not is_newer(token, stale):
            exp = grant.get("exp")
            raise Refused("renewal is not due yet: the current JWT is good until "
                          f"{_when(exp)}; ask after half its lifetime")
        return {"status": "ok", "jwt": token, "expires": grant.get("exp")}

    def _not_yet_due(self, account: Account, stale: Any) -> None:
        """Refuse early, outside the device's lane, a renewal of a JWT we issued that is
        still short of its renewal window (checked again in the lane for the rest)."""
        grant = self.identities.current_grant(account, stale) if isinstance(stale, str) else None
        exp = grant.get("exp") if grant else None
        if isinstance(exp, int) and exp - time.time() >= renewal_window(
                self.identities.ttl, grant or {}):
            raise Refused("renewal is not due yet: the current JWT is good until "
                          f"{_when(exp)}; ask after half its lifetime")

    async def _row(self, device_id: str) -> dict[str, Any]:
        try:
            return await self.pb.get("devices", device_id)
        except PocketBaseError as exc:
            if exc.status == 404:
                raise Refused("the device is gone") from None
            raise


async def _reply(msg: Msg, body: dict[str, Any]) -> None:
    body["timestamp"] = _now()
    try:
        await msg.respond(json.dumps(body).encode())
    except Exception as exc:  # the device asks again
        log.info("device request answer not sent", extra={"subject": msg.subject,
                                                          "error": str(exc)})


def _parse(data: bytes) -> dict[str, Any]:
    try:
        return parse_object(data, MAX_REQUEST_BYTES)
    except BodyError as exc:
        raise Refused(str(exc)) from None


def _when(exp: Any) -> str:
    if not isinstance(exp, int):
        return "it expires"
    return datetime.fromtimestamp(exp, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")

