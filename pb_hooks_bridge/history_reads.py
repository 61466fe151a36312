"""Reading a tenant's TELEMETRY and ALERTS for history answers (history.py), with direct
gets only (any replica answers; no consumer is made).

Stored documents are whatever a device or a rule published, so nothing in them is
trusted: a document over MAX_DOC_BYTES is skipped unread, one that is not strict JSON
(NaN, Infinity, 1e999, nesting deeper than Python parses) is shown as nothing, every
entry is measured as it will be sent, and the bytes fetched and the direct gets made per
answer are bounded, so no document can make an answer too large to send or slow to make.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pb_hooks_bridge.streams import ALERTS, TELEMETRY

MAX_DOC_BYTES = 128 * 1024  # larger stored documents are skipped unread
MAX_ANSWER_BYTES = 768 * 1024  # below nats-server's default max_payload (1 MiB)
MAX_FETCHED_BYTES = 4 * 1024 * 1024  # read from the stream for one answer
GET_TIMEOUT = 5.0  # one direct get
GETS_IN_FLIGHT = 32  # direct gets of one answer asked at once
EXTRA_ALERT_GETS = 100  # gets beyond `limit` an alerts walk may spend on gaps and skips


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def strict_json(data: bytes) -> Any:
    """The document, or ValueError: strict JSON only, so that the answer is JSON a browser
    reads (Python alone would accept NaN and turn 1e999 into infinity)."""
    if len(data) > MAX_DOC_BYTES:
        raise ValueError("too large")
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def encoded(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Stored:
    seq: int
    time: datetime
    subject: str
    data: bytes

    def entry(self, objects_only: bool, with_subject: bool = False) -> dict[str, Any] | None:
        """{time, data[, subject]}; None for what cannot be shown. Telemetry must be a JSON
        object; an alert may be any JSON value, or text (a rule's string payload)."""
        try:
            doc = strict_json(self.data)
        except ValueError:
            if objects_only or len(self.data) > MAX_DOC_BYTES:
                return None
            doc = {"text": self.data.decode("utf-8", errors="replace")}
        if objects_only and not isinstance(doc, dict):
            return None
        out: dict[str, Any] = {"time": iso(self.time), "data": doc}
        if with_subject:
            out["subject"] = self.subject
        return out


class Budget:
    """Bytes of one answer, counted as they will be sent."""

    def __init__(self) -> None:
        self.answer = 0
        self.fetched = 0

    def fits(self, entry: dict[str, Any]) -> bool:
        size = len(encoded(entry).encode()) + 1
        if self.answer + size > MAX_ANSWER_BYTES:
            return False
        self.answer += size
        return True


async def telemetry_series(nc: Any, subject: str, since: int, points: int
                           ) -> tuple[list[dict[str, Any]], bool]:
    """At most `points` documents spread over the window: the first document at or after
    the start of each step (a sparse series comes back whole, a dense one thinned evenly).
    Steps are asked GETS_IN_FLIGHT at a time; steps that found the same document (a sparse
    series) count it once. -> (entries oldest first, truncated)."""
    start = time.time() - since
    step = since / points
    budget, seen, entries = Budget(), set(), []

    async def first_from(at: float) -> Stored | None:
        return await direct_get(nc, TELEMETRY, {"start_time": iso_ts(at),
                                                "next_by_subj": subject})

    for chunk in range(0, points, GETS_IN_FLIGHT):
        found = await asyncio.gather(*(first_from(start + i * step) for i in
                                       range(chunk, min(points, chunk + GETS_IN_FLIGHT))))
        for got in sorted((g for g in found if g is not None), key=lambda g: g.seq):
            if got.seq in seen or (entries and got.seq < entries[-1][0]):
                continue  # a step that found a document already taken
            seen.add(got.seq)
            budget.fetched += len(got.data)
            entry = got.entry(objects_only=True)
            if entry is None:
                continue
            if not budget.fits(entry):
                return [e for _, e in entries], True
            entries.append((got.seq, entry))
        if budget.fetched > MAX_FETCHED_BYTES:
            return [e for _, e in entries], True
        if all(g is None for g in found):
            break  # nothing at or after these steps: nothing after them either
    return [e for _, e in entries], False


async def latest_document(nc: Any, subject: str) -> tuple[dict[str, Any] | None, bool]:
    """The subject's last document -> (entry or None, too large to send)."""
    got = await direct_get(nc, TELEMETRY, {"last_by_subj": subject})
    if got is None:
        return None, False
    entry = got.entry(objects_only=True)
    if entry is None:
        return None, len(got.data) > MAX_DOC_BYTES
    return (entry, False) if Budget().fits(entry) else (None, True)


async def recent_alerts(nc: Any, since: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The newest `limit` alerts of the last `since` seconds, oldest first; at most
    limit + EXTRA_ALERT_GETS direct gets. -> (entries, truncated)."""
    state = await stream_state(nc, ALERTS)
    first, seq = int(state.get("first_seq") or 0), int(state.get("last_seq") or 0)
    cutoff = time.time() - since
    budget, found, gets = Budget(), [], 0
    while seq >= max(first, 1) and len(found) < limit:
        if gets >= limit + EXTRA_ALERT_GETS:
            return found[::-1], True
        gets += 1
        got = await direct_get(nc, ALERTS, {"seq": seq})
        seq -= 1
        if got is None:
            continue  # removed by age or limits meanwhile
        if got.time.timestamp() < cutoff:
            break
        entry = got.entry(objects_only=False, with_subject=True)
        if entry is None:
            continue
        if not budget.fits(entry):
            return found[::-1], True
        found.append(entry)
    return found[::-1], False


async def direct_get(nc: Any, stream: str, request: dict[str, Any]) -> Stored | None:
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
                  time=parse_time(headers.get("Nats-Time-Stamp", "")),
                  subject=headers.get("Nats-Subject", ""), data=msg.data)


async def stream_state(nc: Any, stream: str) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=GET_TIMEOUT)
    info = json.loads(msg.data)
    if "error" in info:
        raise RuntimeError(f"stream info {stream}: {info['error']}")
    return info.get("state") or {}


def parse_time(stamp: str) -> datetime:
    """nats-server's nanosecond RFC 3339 stamp, to microseconds."""
    head, dot, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if dot else head
                                  ).replace(tzinfo=UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ts(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")
