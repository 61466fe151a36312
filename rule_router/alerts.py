"""Alerts are stored, not just sent: publishes under `alerts.` go to the tenant's ALERTS
stream (made by the bridge, subjects `alerts.>`) and wait for its PubAck.

A core publish with nobody listening is lost; a JetStream publish is either stored (the
PubAck says so) or fails, and a failure is handled like any failed publish (the alert is
dead-lettered; a dead letter that fails hands the message back). Each publish made for a
JetStream message carries a `Nats-Msg-Id` derived from that message's stream sequence,
the rule and the action index (`msg_id`): when an ack is lost and the message comes back
after the router's own record of it (`ledger.py`) is gone, the stream drops the second
copy inside its duplicate window.

Routers must keep working next to a bridge without ALERTS, which the router cannot ask
about directly (its role may read `$JS.API.INFO` but not `$JS.API.STREAM.INFO.ALERTS`).
So the publisher keeps a per-tenant belief about the stream:

- PRESENT (a PubAck within RECHECK seconds): JetStream publish, PUBACK_TIMEOUT; a timeout
  or an error is a failed publish. "No responders" means nothing listens at all: no
  stream, so a core publish.
- ABSENT (until a recheck RECHECK seconds later): core publish, counted
  (`cairn_router_alerts_core_fallback_total`), a warning at most once a minute.
- otherwise (start, recheck): the account's stream count (`$JS.API.INFO`, allowed) —
  TELEMETRY alone means ABSENT. Else a probe: a JetStream publish with PROBE_TIMEOUT.
  A PubAck means PRESENT. No answer while something listens on the subject (a viewer, a
  rule's own subscription) means no stream took it: the request itself already reached
  those listeners as a core message, so it counts as a fallback publish (not repeated).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import nats
from nats.js.errors import NoStreamResponseError

from rule_router import metrics
from rule_router.throttle import Throttle

log = logging.getLogger(__name__)

ALERTS_STREAM = "ALERTS"
ALERTS_PREFIX = "alerts."
MSG_ID = "Nats-Msg-Id"
PUBACK_TIMEOUT = 5.0  # seconds for a PubAck once the stream is known
PROBE_TIMEOUT = 2.0  # ... while it is not (a listener without a stream never answers)
RECHECK = 60.0  # seconds a belief about the stream holds without fresh evidence
WARN_EVERY = 60.0

PRESENT, ABSENT, PROBE = "present", "absent", "probe"


def msg_id(stream: str, seq: int, rule_id: str, index: int, kind: str = "a") -> str:
    """A de-duplication id for what one JetStream message causes: the same message
    (however often delivered) and action always give the same id. The rule id is a row
    id or a file path (`<source>#<n>`), so it is hashed to a short token."""
    rule = hashlib.blake2b(rule_id.encode(), digest_size=8).hexdigest()
    return f"{stream}:{seq}:{rule}:{index}:{kind}"


class AlertPublisher:
    """`publish(subject, payload, headers=...)` for one tenant runtime, duck-typed like a
    nats-py client (what `actions.publish.run` calls). `connection` gives the runtime's
    current client at every call: the connection object may be swapped at runtime."""

    def __init__(self, slug: str, connection: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slug = slug
        self.connection = connection
        self.clock = clock
        self.belief = PROBE
        self._until = 0.0  # PRESENT or ABSENT holds until then
        self._checking = asyncio.Lock()
        self._reports = Throttle(clock)
        self._js: Any = None
        self._js_of: Any = None

    async def publish(self, subject: str, payload: bytes,
                      headers: Mapping[str, str] | None = None) -> None:
        nc = self.connection()
        if nc is None:
            raise nats.errors.ConnectionClosedError
        hdrs = dict(headers) if headers else None
        if not subject.startswith(ALERTS_PREFIX):
            await nc.publish(subject, payload, headers=hdrs)
            return
        mode = await self._mode(nc)
        if mode == ABSENT:
            await self._core(nc, subject, payload, hdrs, "no ALERTS stream")
            return
        timeout = PUBACK_TIMEOUT if mode == PRESENT else PROBE_TIMEOUT
        try:
            await self._jetstream(nc).publish(subject, payload, timeout=timeout, headers=hdrs)
        except NoStreamResponseError:  # nothing listens on the subject: no stream
            self._believe(ABSENT)
            await self._core(nc, subject, payload, hdrs, "no responders")
            return
        except nats.js.errors.APIError:
            self._believe(PRESENT)  # a stream answered: it exists, and refused this one
            raise
        except nats.errors.TimeoutError:
            if mode == PRESENT:
                raise  # a stored-alert failure: dead letter / hand back
            self._believe(ABSENT)  # heard by listeners (a core message), stored by none
            self._fallback(subject, "no PubAck from a stream")
            return
        self._believe(PRESENT)

    async def _mode(self, nc: Any) -> str:
        if self.belief != PROBE and self.clock() < self._until:
            return self.belief
        async with self._checking:  # one account lookup at a time
            if self.belief != PROBE and self.clock() < self._until:
                return self.belief
            try:
                info = await self._jetstream(nc).account_info()
            except (nats.errors.Error, OSError):
                return PROBE  # cannot tell: a probe will
            if info.streams <= 1:  # TELEMETRY only
                self._believe(ABSENT)
                return ABSENT
            self.belief = PROBE
            return PROBE

    def _believe(self, belief: str) -> None:
        self.belief = belief
        self._until = self.clock() + RECHECK

    def _jetstream(self, nc: Any) -> Any:
        if self._js_of is not nc:
            self._js, self._js_of = nc.jetstream(timeout=PUBACK_TIMEOUT), nc
        return self._js

    async def _core(self, nc: Any, subject: str, payload: bytes,
                    headers: dict[str, str] | None, why: str) -> None:
        await nc.publish(subject, payload, headers=headers)
        self._fallback(subject, why)

    def _fallback(self, subject: str, why: str) -> None:
        metrics.ALERTS_CORE_FALLBACK.inc()
        if self._reports.allow("fallback", WARN_EVERY):
            log.warning("alerts published as core messages (lost when nobody listens): the "
                        f"tenant has no {ALERTS_STREAM} stream",
                        extra={"tenant": self.slug, "subject": subject, "error": why})
