"""The act -> ack half of a tenant runtime (`tenant.TenantRouter` mixes it in): run a
firing's actions, record what completed (`ledger.py`), then answer the JetStream delivery.

Each action of a JetStream message is keyed `(rule id, action index)` and goes into the
message's `done` set when it succeeded, was dead-lettered, or was dropped by a fan-out
bound; a redelivery skips what is in it. All done: the message is acked (and recorded as
complete). Anything not done: recorded as partial and handed back (nak) with a delay
growing with its deliveries (`retry_delay`), so a dead letter NATS keeps refusing does not
spin. A cancelled run (a stop) is handed back at once, for the next router. A dead letter
refused for its size (`too_large`) would be refused forever: counted, logged and taken as
done (the message is acked).

Publishes go through the tenant's `AlertPublisher` (JetStream with PubAck for `alerts.`,
`alerts.py`) with a `Nats-Msg-Id` per (stream sequence, rule, action); a dead letter gets
one of its own. A webhook gets `progress`: the delivery's `in_progress`, so a slow webhook
is not delivered again while it runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import nats
from nats.aio.msg import Msg
from prometheus_client import Counter

from rule_router import metrics
from rule_router.actions import ACTIONS, DEADLETTER_SUBJECT, deadletter_payload
from rule_router.alerts import MSG_ID, AlertPublisher, msg_id
from rule_router.consumer import STREAM
from rule_router.errors import ActionError
from rule_router.fanout import Allowance, received_budget, stamp
from rule_router.guards import Guards
from rule_router.hops import hops
from rule_router.ledger import Key, Ledger, Partial, delivery
from rule_router.model import Firing, PublishOut, WebhookOut

log = logging.getLogger(__name__)

IDEMPOTENCY = "Idempotency-Key"  # on webhook calls of JetStream messages

DEADLETTERS_TOO_LARGE = Counter(
    "cairn_router_deadletters_too_large_total",
    "Dead letters refused for their size (max_payload, the stream's max_msg_size): dropped "
    "and the message acked, since a retry would be refused the same way")
RETRY_DELAY = 5.0  # seconds before a handed-back message returns, doubling per delivery
RETRY_MAX = 60.0


def retry_delay(delivered: int) -> float:
    """The nak delay of a message handed back after its `delivered`-th delivery."""
    return min(RETRY_MAX, RETRY_DELAY * 2 ** max(0, min(delivered - 1, 16)))


class Acting:
    """What the act -> ack path needs of its runtime; TenantRouter sets all of it."""

    slug: str
    guards: Guards
    ledger: Ledger
    publisher: AlertPublisher
    http: httpx.AsyncClient | None
    live_ack_wait: float

    async def _ack(self, msg: Msg) -> None:
        """Every ack of the JetStream path goes through here (tests drop one)."""
        await msg.ack()

    async def finish(self, msg: Msg, path: str, firings: list[Firing],
                     redo: Partial | None = None) -> None:
        """Act, then ack (JetStream); a run that failed, raised or was cancelled records
        what completed and hands the message back."""
        seen = delivery(msg.reply) if path == "jetstream" else None
        done: set[Key] = set(redo.done) if redo is not None else set()
        ok, delay = False, None  # cancelled (a stop): handed back at once
        try:
            allowance = Allowance.split(received_budget(msg.headers),
                                        sum(len(f.actions) for f in firings))
            ok = True
            for firing in firings:
                if redo is None:
                    metrics.MATCHES.inc()
                ok = await self._act(firing, msg, path, allowance, seen, done) and ok
            delay = retry_delay(seen[1] if seen else 1)
        except Exception:
            ok, delay = False, retry_delay(seen[1] if seen else 1)
            raise
        finally:
            if path == "jetstream":
                await self._settle(msg, seen, ok, firings, done, delay)

    async def _settle(self, msg: Msg, seen: tuple[int, int] | None, ok: bool,
                      firings: list[Firing], done: set[Key], delay: float | None) -> None:
        """Record, then answer this delivery and any that joined it. The record comes
        first: a redelivery racing the ack must find it."""
        if seen is None:
            msgs = [msg]
        else:
            msgs = [msg, *self.ledger.end(seen[0])]
            if ok:
                self.ledger.complete(seen[0])
            else:
                self.ledger.partial(seen[0], {f.rule.id for f in firings}, done)
        if not ok:
            await nak_all(msgs, delay)
            return
        for one in msgs:
            try:
                await self._ack(one)
            except Exception as exc:  # connection gone: it comes back, and is skipped
                log.warning("ack not sent; the message will come back (its actions will "
                            "not run again)", extra={"tenant": self.slug, "error": str(exc)})
                return

    async def _act(self, firing: Firing, msg: Msg, path: str, allowance: Allowance,
                   seen: tuple[int, int] | None, done: set[Key]) -> bool:
        """Run every action not in `done`, adding each one that succeeded, was
        dead-lettered or was dropped by a fan-out bound; True when all of them did."""
        original = msg.data
        hop = hops(msg.headers) + 1
        ok = True
        for out in firing.actions:
            key = (firing.rule.id, out.index)
            if key in done:
                metrics.ACTIONS_SKIPPED.inc()
                continue
            if isinstance(out, PublishOut):
                action_ok = await self._publish(firing, out, original, hop, allowance, seen)
            else:
                action_ok = await self._webhook(firing, out, msg, path, original, hop,
                                                allowance, seen)
            if action_ok:
                done.add(key)
            ok = ok and action_ok
        return ok

    async def _publish(self, firing: Firing, out: PublishOut, original: bytes, hop: int,
                       allowance: Allowance, seen: tuple[int, int] | None) -> bool:
        if not self.guards.may_publish(firing, allowance):
            return True
        headers = stamp(out.headers, hop, allowance.child)
        if seen is not None:  # the stream drops a second copy of the same action's alert
            headers = {k: v for k, v in headers.items() if k.lower() != MSG_ID.lower()}
            headers[MSG_ID] = msg_id(STREAM, seen[0], firing.rule.id, out.index)
        out = replace(out, headers=headers)
        try:
            await ACTIONS["publish"](out, self.publisher)
            metrics.ACTIONS.labels("publish", "ok").inc()
            return True
        except ActionError as exc:
            metrics.ACTIONS.labels("publish", "failed").inc()
            return await self._deadletter(firing, out, exc, original, hop, allowance, seen)

    async def _webhook(self, firing: Firing, out: WebhookOut, msg: Msg, path: str,
                       original: bytes, hop: int, allowance: Allowance,
                       seen: tuple[int, int] | None) -> bool:
        progress = self._progress(msg) if path == "jetstream" else None
        if seen is not None and not any(k.lower() == IDEMPOTENCY.lower() for k in out.headers):
            # the same key for every call of this action for this message, by any router
            # (a redelivery after a router died): receivers can drop repeats
            key = msg_id(STREAM, seen[0], firing.rule.id, out.index, "w")
            out = dataclasses.replace(out, headers={**out.headers, IDEMPOTENCY: key})
        result = await ACTIONS["webhook"](out, self.http, progress=progress,
                                          every=max(0.05, self.live_ack_wait / 3))
        metrics.WEBHOOK_RETRIES.inc(max(0, result.attempts - 1))
        metrics.ACTIONS.labels("webhook", "ok" if result.ok else "failed").inc()
        if result.ok:
            return True
        return await self._deadletter(firing, out, result, original, hop, allowance, seen)

    def _progress(self, msg: Msg) -> Callable[[], Any]:
        """The delivery's keep-alive for a webhook (`actions.webhook`'s `progress`)."""
        async def touch() -> None:
            try:
                await msg.in_progress()
            except Exception:  # connection gone: the ack fails too; the ledger covers it
                return
        return touch

    async def _deadletter(self, firing: Firing, out: Any, error: Any, original: bytes,
                          hop: int, allowance: Allowance,
                          seen: tuple[int, int] | None = None) -> bool:
        if not self.guards.may_publish(firing, allowance):
            return True  # dropped like any publish past a fan-out bound (see above)
        headers = stamp(None, hop, allowance.child)
        if seen is not None:
            headers[MSG_ID] = msg_id(STREAM, seen[0], firing.rule.id, out.index, "dead")
        try:
            await self.publisher.publish(DEADLETTER_SUBJECT,
                                         deadletter_payload(firing, out, error, original),
                                         headers=headers)
            metrics.DEADLETTERS.inc()
            return True
        except (nats.errors.Error, OSError) as exc:
            if too_large(exc):  # refused for its size: it always will be, never a nak loop
                DEADLETTERS_TOO_LARGE.inc()
                log.error("dead letter refused for its size; dropped, the message is acked",
                          extra={"tenant": self.slug, "rule": firing.rule.name,
                                 "error": str(exc) or repr(exc)})
                return True
            log.error("dead letter could not be published; the message will come back",
                      extra={"tenant": self.slug, "rule": firing.rule.name, "error": str(exc)})
            return False


def too_large(exc: BaseException) -> bool:
    """A publish refused for its size: over the connection's max_payload (nats-py checks
    before sending) or over the stream's max_msg_size (the PubAck's error)."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return True
    if getattr(exc, "err_code", None) == 10054:  # JSStreamMessageExceedsMaximumErr
        return True
    text = str(exc).lower()
    return "maximum payload" in text or "message size exceeds" in text


async def nak_all(msgs: list[Msg], delay: float | None = None) -> None:
    """Hand back every delivery not answered yet (`delay` None: at once)."""
    for msg in msgs:
        if msg.is_acked:
            continue
        try:
            await msg.nak(delay=delay)
        except Exception:  # connection already gone: the ack wait brings them back
            return
