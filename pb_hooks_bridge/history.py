"""History for people: a device's telemetry over the last hour or day, its latest
document, and the tenant's recent alerts, read from the TELEMETRY and ALERTS streams by
time (the dashboard's charts, SPEC §13).

Why through the bridge and not straight from the streams: a JetStream API request has
the server publish its answer into whatever reply subject the asker named, with the
account's own client and no check of the asker's rights. A viewer allowed direct gets
could aim stored documents at `alerts.…` or at a colleague's subscriptions. So a person
publishes only `cairn.history.<kind>.<own user id>` (their JWT allows no other id); the
bridge reads the streams itself (history_reads.py) and answers only to that person's
inbox (`_INBOX_person_<user id>.…`), where the answer can reach no one but people of the
tenant, who may read telemetry anyway.

Requests are small JSON objects, checked key by key (an unknown key or a wrong type is an
error that names it); answers are bounded in points and bytes; each tenant and each
person has a few requests in flight at most (keyed on the id the person's JWT pins, not
on anything the sender picks), and requests past that are told so at most once a second,
so a loop in one browser costs its own answers, not the bridge's revocations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from cairn_common.json_body import BodyError, parse_object
from cairn_common.server_messages import server_header
from pb_hooks_bridge import metrics
from pb_hooks_bridge.device_ids import CODE
from pb_hooks_bridge.history_reads import (
    encoded,
    iso,
    latest_document,
    recent_alerts,
    telemetry_series,
)
from pb_hooks_bridge.presence import QUEUE

log = logging.getLogger(__name__)

SUBJECT = "cairn.history.*.*"  # cairn.history.<kind>.<user id>
KINDS = ("telemetry", "latest", "alerts")
PERSON_REPLY = "_INBOX_person_"
MAX_REQUEST_BYTES = 1024
SERIES = ("system", "service")  # telemetry subjects with a history worth charting
LATEST = (*SERIES, "inventory")
MIN_SINCE, MAX_SINCE = 60, 7 * 86400  # seconds back
DEFAULT_SINCE = {"telemetry": 3600, "alerts": 86400}
MAX_POINTS, DEFAULT_POINTS = 500, 120
MAX_ALERTS, DEFAULT_ALERTS = 500, 100
PER_TENANT, PER_PERSON = 8, 4  # requests answered at once
ANSWER_DEADLINE = 12.0  # one whole answer (the dashboard gives up after 15 s)
BUSY_EVERY = 1.0  # seconds between two "too many" answers to one person

FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "telemetry": {"device": (str,), "subject": (str,), "since": (int,), "points": (int,)},
    "latest": {"device": (str,), "subject": (str,)},
    "alerts": {"since": (int,), "limit": (int,)},
}


class Refused(Exception):
    """A request answered with an error in words."""


class History:
    def __init__(self) -> None:
        self.per_tenant: dict[str, int] = {}
        self.per_person: dict[tuple[str, str], int] = {}  # (tenant, user id) -> in flight
        self.told_busy: dict[tuple[str, str], float] = {}  # -> when last told (monotonic)
        self.tasks: set[asyncio.Task[None]] = set()

    async def watch(self, tenant_id: str, nc: Any) -> None:
        """Subscribe to one tenant's history requests (for each new tenant link)."""

        async def on_request(msg: Msg) -> None:
            parts = msg.subject.split(".")
            user = parts[3] if len(parts) == 4 else ""
            reply = msg.reply or ""
            # only the asking person's inbox: any other reply subject would have the
            # bridge (which may publish anywhere in the tenant) publish there for them
            if not user or not reply.startswith(f"{PERSON_REPLY}{user}.") \
                    or server_header(msg.headers):
                metrics.HISTORY_REQUESTS.labels("?", "ignored").inc()
                return
            kind = parts[2] if parts[2] in KINDS else "?"
            key = (tenant_id, user)
            if self.per_tenant.get(tenant_id, 0) >= PER_TENANT \
                    or self.per_person.get(key, 0) >= PER_PERSON:
                metrics.HISTORY_REQUESTS.labels(kind, "limited").inc()
                now = time.monotonic()
                if now - self.told_busy.get(key, -BUSY_EVERY) >= BUSY_EVERY:
                    self.told_busy[key] = now
                    if len(self.told_busy) > 10_000:
                        self.told_busy = {k: t for k, t in self.told_busy.items()
                                          if now - t < BUSY_EVERY}
                    await _reply(nc, reply, {"status": "error", "error":
                                 "too many history requests in flight; ask again shortly"})
                return
            self._start(tenant_id, key, kind, nc, msg)

        await nc.subscribe(SUBJECT, queue=QUEUE, cb=on_request)

    def _start(self, tenant_id: str, key: tuple[str, str], kind: str, nc: Any,
               msg: Msg) -> None:
        self.per_tenant[tenant_id] = self.per_tenant.get(tenant_id, 0) + 1
        self.per_person[key] = self.per_person.get(key, 0) + 1
        task = asyncio.create_task(self.answer(nc, kind, msg), name=f"history:{kind}")
        self.tasks.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            counts: dict[Any, int]
            for counts, k in ((self.per_tenant, tenant_id), (self.per_person, key)):
                counts[k] -= 1
                if not counts[k]:
                    del counts[k]

        task.add_done_callback(done)

    async def answer(self, nc: Any, kind: str, msg: Msg) -> None:
        started = time.monotonic()
        try:
            request = _checked(kind, msg.data)
            body = await asyncio.wait_for(_ANSWERS[kind](nc, request), ANSWER_DEADLINE)
            outcome = "ok"
        except Refused as exc:
            body, outcome = {"status": "error", "error": str(exc)}, "refused"
        except Exception as exc:  # NATS trouble (a stream leader moving): ask again
            log.warning("history request failed", extra={"kind": kind, "error": repr(exc)})
            body, outcome = {"status": "error", "error": "history could not be read now; "
                             "ask again shortly"}, "failed"
        metrics.HISTORY_REQUESTS.labels(kind, outcome).inc()
        metrics.HISTORY_SECONDS.observe(time.monotonic() - started)
        await _reply(nc, msg.reply, body)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _checked(kind: str, data: bytes) -> dict[str, Any]:
    """The request with every key known and of the right type, defaults filled in."""
    if kind not in FIELDS:
        known = ",".join(KINDS)
        raise Refused(f"unknown history request (known: cairn.history.{{{known}}}."
                      "<your user id>)")
    try:
        request = parse_object(data, MAX_REQUEST_BYTES)
    except BodyError as exc:
        raise Refused(str(exc)) from None
    fields = FIELDS[kind]
    problems = [f"unknown field {key!r} (known: {', '.join(fields)})"
                for key in request if key not in fields]
    for key, value in request.items():
        types = fields.get(key)
        if types and (not isinstance(value, types) or isinstance(value, bool)):
            problems.append(f"{key} must be {'an integer' if int in types else 'a string'}, "
                            f"got {type(value).__name__}")
    if problems:
        raise Refused(f"{kind}: " + "; ".join(problems))
    if "device" in fields:
        code = request.get("device")
        if not isinstance(code, str) or not CODE.match(code):
            raise Refused(f"{kind}: device must be a device code")
        allowed = SERIES if kind == "telemetry" else LATEST
        subject = request.setdefault("subject", "system")
        if subject not in allowed:
            raise Refused(f"{kind}: subject must be one of {', '.join(allowed)}")
    if "since" in fields:
        since = request.setdefault("since", DEFAULT_SINCE[kind])
        if not MIN_SINCE <= since <= MAX_SINCE:
            raise Refused(f"{kind}: since must be {MIN_SINCE}..{MAX_SINCE} seconds")
    for key, default, top in (("points", DEFAULT_POINTS, MAX_POINTS),
                              ("limit", DEFAULT_ALERTS, MAX_ALERTS)):
        if key in fields:
            value = request.setdefault(key, default)
            if not 1 <= value <= top:
                raise Refused(f"{kind}: {key} must be 1..{top}")
    return request


async def _telemetry(nc: Any, request: dict[str, Any]) -> dict[str, Any]:
    code, subject, since = request["device"], request["subject"], request["since"]
    entries, truncated = await telemetry_series(
        nc, f"agents.{code}.telemetry.{subject}", since, request["points"])
    return {"status": "ok", "device": code, "subject": subject, "since": since,
            "messages": entries, "truncated": truncated}


async def _latest(nc: Any, request: dict[str, Any]) -> dict[str, Any]:
    code, subject = request["device"], request["subject"]
    entry, too_large = await latest_document(nc, f"agents.{code}.telemetry.{subject}")
    return {"status": "ok", "device": code, "subject": subject, "message": entry,
            "too_large": too_large}


async def _alerts(nc: Any, request: dict[str, Any]) -> dict[str, Any]:
    since = request["since"]
    entries, truncated = await recent_alerts(nc, since, request["limit"])
    return {"status": "ok", "since": since, "messages": entries, "truncated": truncated}


_ANSWERS = {"telemetry": _telemetry, "latest": _latest, "alerts": _alerts}


async def _reply(nc: Any, reply: str, body: dict[str, Any]) -> None:
    body["timestamp"] = iso(datetime.now(UTC))
    try:
        await nc.publish(reply, encoded(body).encode())
    except Exception as exc:  # the page asks again
        log.info("history answer not sent", extra={"error": repr(exc)})
