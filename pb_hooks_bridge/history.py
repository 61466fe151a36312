"""History for people: a device's telemetry over the last hour or day, its latest
document, and the tenant's recent alerts, read from the TELEMETRY and ALERTS streams by
time (the dashboard's charts, SPEC §13).

Why through the bridge and not straight from the streams: a JetStream API request has
the server publish its answer into whatever reply subject the asker named, with the
account's own client and no check of the asker's rights. A viewer allowed direct gets
could aim stored documents at `alerts.…` or at a colleague's subscriptions. So a person
publishes only `cairn.history.<kind>`; the bridge reads the streams itself (direct gets:
any replica answers, no consumer is made) and answers only to a person's inbox
(`_INBOX_person_<user id>.…`), where the answer can reach no one but people of the tenant,
who may read telemetry anyway.

Requests are small JSON objects, checked key by key (an unknown key or a wrong type is an
error that names it); answers are bounded in points and bytes; each tenant and each
person has a few requests in flight at most, so a loop in one browser costs its own
answers, not the bridge's revocations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from cairn_common.json_body import BodyError, parse_object
from cairn_common.server_messages import server_header
from pb_hooks_bridge import metrics
from pb_hooks_bridge.device_ids import CODE
from pb_hooks_bridge.presence import QUEUE
from pb_hooks_bridge.streams import ALERTS, TELEMETRY

log = logging.getLogger(__name__)

SUBJECT = "cairn.history.*"
KINDS = ("telemetry", "latest", "alerts")
PERSON_REPLY = "_INBOX_person_"
MAX_REQUEST_BYTES = 1024
SERIES = ("system", "service")  # telemetry subjects with a history worth charting
LATEST = (*SERIES, "inventory")
MIN_SINCE, MAX_SINCE = 60, 7 * 86400  # seconds back
DEFAULT_SINCE = {"telemetry": 3600, "alerts": 86400}
MAX_POINTS, DEFAULT_POINTS = 500, 120
MAX_ALERTS, DEFAULT_ALERTS = 500, 100
MAX_ANSWER_BYTES = 768 * 1024  # below nats-server's default max_payload (1 MiB)
PER_TENANT, PER_PERSON = 8, 2  # requests answered at once
GET_TIMEOUT = 5.0  # one direct get
GETS_IN_FLIGHT = 32  # direct gets of one answer asked at once
ANSWER_DEADLINE = 20.0  # one whole answer

FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "telemetry": {"device": (str,), "subject": (str,), "since": (int,), "points": (int,)},
    "latest": {"device": (str,), "subject": (str,)},
    "alerts": {"since": (int,), "limit": (int,)},
}


class Refused(Exception):
    """A request answered with an error in words."""


@dataclass(frozen=True)
class Stored:
    seq: int
    time: datetime
    subject: str
    data: bytes

    def entry(self, with_subject: bool = False) -> dict[str, Any] | None:
        """{time, data[, subject]}; None for a document that is not a JSON object (a
        device may publish anything on its own subjects)."""
        try:
            doc = json.loads(self.data)
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        out: dict[str, Any] = {"time": _iso(self.time), "data": doc}
        if with_subject:
            out["subject"] = self.subject
        return out


class History:
    def __init__(self) -> None:
        self.per_tenant: dict[str, int] = {}
        self.per_person: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def watch(self, tenant_id: str, nc: Any) -> None:
        """Subscribe to one tenant's history requests (for each new tenant link)."""

        async def on_request(msg: Msg) -> None:
            reply = msg.reply or ""
            # only a person's inbox: any other reply subject would have the bridge
            # (which may publish anywhere in the tenant) publish there for the asker
            if not reply.startswith(PERSON_REPLY) or "." not in reply \
                    or server_header(msg.headers):
                metrics.HISTORY_REQUESTS.labels("?", "ignored").inc()
                return
            kind = msg.subject.rsplit(".", 1)[-1]
            kind = kind if kind in KINDS else "?"
            person = reply.split(".", 1)[0]
            if self.per_tenant.get(tenant_id, 0) >= PER_TENANT \
                    or self.per_person.get(person, 0) >= PER_PERSON:
                metrics.HISTORY_REQUESTS.labels(kind, "limited").inc()
                await _reply(nc, reply, {"status": "error", "error":
                             "too many history requests in flight; ask again shortly"})
                return
            self._start(tenant_id, person, kind, nc, msg)

        await nc.subscribe(SUBJECT, queue=QUEUE, cb=on_request)

    def _start(self, tenant_id: str, person: str, kind: str, nc: Any, msg: Msg) -> None:
        self.per_tenant[tenant_id] = self.per_tenant.get(tenant_id, 0) + 1
        self.per_person[person] = self.per_person.get(person, 0) + 1
        task = asyncio.create_task(self.answer(nc, kind, msg), name=f"history:{kind}")
        self.tasks.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            for counts, key in ((self.per_tenant, tenant_id), (self.per_person, person)):
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]

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
        raise Refused(f"unknown history request (known: cairn.history.{{{','.join(KINDS)}}})")
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
    """At most `points` documents spread over the window: the first document at or after
    the start of each step (a sparse series comes back whole, a dense one thinned evenly).
    The steps are asked at once, GETS_IN_FLIGHT at a time; steps that found the same
    document (a sparse series) count it once."""
    code, subject, since, points = (request["device"], request["subject"],
                                    request["since"], request["points"])
    filter_subject = f"agents.{code}.telemetry.{subject}"
    start = time.time() - since
    step = since / points
    gate = asyncio.Semaphore(GETS_IN_FLIGHT)

    async def first_from(at: float) -> Stored | None:
        async with gate:
            return await _direct_get(nc, TELEMETRY, {"start_time": _iso_ts(at),
                                                     "next_by_subj": filter_subject})

    found = await asyncio.gather(*(first_from(start + i * step) for i in range(points)))
    unique = sorted({got.seq: got for got in found if got is not None}.values(),
                    key=lambda got: got.seq)
    entries, size, truncated = [], 0, False
    for got in unique:
        entry = got.entry()
        if entry is None:
            continue
        size += len(got.data) + 64
        if size > MAX_ANSWER_BYTES:
            truncated = True
            break
        entries.append(entry)
    return {"status": "ok", "device": code, "subject": subject, "since": since,
            "messages": entries, "truncated": truncated}


async def _latest(nc: Any, request: dict[str, Any]) -> dict[str, Any]:
    code, subject = request["device"], request["subject"]
    got = await _direct_get(nc, TELEMETRY, {"last_by_subj": f"agents.{code}.telemetry.{subject}"})
    return {"status": "ok", "device": code, "subject": subject,
            "message": got.entry() if got is not None else None}


async def _alerts(nc: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The newest `limit` alerts of the last `since` seconds, oldest first."""
    since, limit = request["since"], request["limit"]
    info = await _stream_state(nc, ALERTS)
    first, last = int(info.get("first_seq") or 0), int(info.get("last_seq") or 0)
    cutoff = time.time() - since
    found: list[dict[str, Any]] = []
    size, seq = 0, last
    while seq >= max(first, 1) and len(found) < limit:
        got = await _direct_get(nc, ALERTS, {"seq": seq})
        seq -= 1
        if got is None:
            continue  # removed by age or limits meanwhile
        if got.time.timestamp() < cutoff:
            break
        entry = got.entry(with_subject=True)
        if entry is None:
            continue
        size += len(got.data) + 96
        if size > MAX_ANSWER_BYTES:
            break
        found.append(entry)
    found.reverse()
    return {"status": "ok", "since": since, "messages": found}


_ANSWERS = {"telemetry": _telemetry, "latest": _latest, "alerts": _alerts}


async def _direct_get(nc: Any, stream: str, request: dict[str, Any]) -> Stored | None:
    msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(),
                           timeout=GET_TIMEOUT)
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise RuntimeError(f"direct get on {stream}: status {status} "
                           f"{headers.get('Description', '')}".strip())
    return Stored(seq=int(headers.get("Nats-Sequence", 0)),
                  time=_parse_time(headers.get("Nats-Time-Stamp", "")),
                  subject=headers.get("Nats-Subject", ""), data=msg.data)


async def _stream_state(nc: Any, stream: str) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=GET_TIMEOUT)
    info = json.loads(msg.data)
    if "error" in info:
        raise RuntimeError(f"stream info {stream}: {info['error']}")
    return info.get("state") or {}


async def _reply(nc: Any, reply: str, body: dict[str, Any]) -> None:
    body["timestamp"] = _iso(datetime.now(UTC))
    try:
        await nc.publish(reply, json.dumps(body, separators=(",", ":")).encode())
    except Exception as exc:  # the page asks again
        log.info("history answer not sent", extra={"error": repr(exc)})


def _parse_time(stamp: str) -> datetime:
    """nats-server's nanosecond RFC 3339 stamp, to microseconds."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if dot else head
                                  ).replace(tzinfo=UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_ts(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")
