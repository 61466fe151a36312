"""One tenant's runtime: a connection in its account (the `cairn-router` service user), a
durable JetStream consumer on TELEMETRY (`consumer.py`, supervised: a failure is logged,
counted and retried, never the end of it), core subscriptions for other rule subjects,
and the evaluate -> act -> ack path.

A JetStream message is acknowledged only after every action succeeded or was dead-lettered
(at-least-once across restarts); a message whose actions could not run is handed back
(nak, with a delay growing with its deliveries) and comes back. What a message's actions
did is recorded by stream sequence (`ledger.py`): a redelivery after a lost ack runs
nothing again, one after a partial failure runs only the actions that had not completed.
While a webhook (and its retries) runs, the message is kept alive (`in_progress` before
every attempt, at every backoff and every third of the consumer's ack wait), so a slow
webhook is not delivered a second time.

Alerts (`alerts.`, dead letters included) are JetStream publishes into the tenant's
ALERTS stream, waiting for the PubAck, with a `Nats-Msg-Id` per (message, rule, action);
without that stream they fall back to core publishes (`alerts.py`).

Core subscriptions (`core_subs.py`) are in a queue group named after the router's
identity: the server hands each core message to one of them, so filters that overlap, two
connections of one router while one replaces the other, or two processes of the same
identity never evaluate it twice (the durable consumer is per identity in the same way).
A swap loses none: the new connection subscribes (and flushes) before the old one's subs
are drained.

The connection uses the service user's own inbox prefix (`service_inbox`): its replies
(PubAcks included) never travel under the shared `_INBOX.>`, which its permissions do not
cover. Everything it publishes carries a hop count (`hops.py`); a message at the limit is
never evaluated (counted, logged and reported to the rule's source by `guards.py`).

Fan-out (`fanout.py`): every publish (alert or dead letter) takes one unit of the received
message's output budget and one token of this tenant's bucket; without either it is
dropped (counted, logged, reported to the rule's row by `guards.py`). A dropped
publish counts as done for the ack, like the other things the router refuses on a rule's
behalf (a message at the hop limit, an action that cannot render, a webhook whose address
is refused and is dead-lettered): the message is acked, not handed back, because
redelivery would repeat the publishes that did go out and add load exactly while the
tenant is over its rate. At-least-once still holds for what the router itself fails at
(a dead letter NATS refused, a cancelled run): those messages come back.

Messages the server wrote as the answer to someone else's JetStream request
(`replies.py`) are counted and dropped before evaluation, on both paths (a JetStream
message is acked: it is not telemetry and never will be).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cairn_common.nats_urls import parse_nats_urls
from cairn_common.natsauth import service_inbox
from cairn_common.renewable import Renewable, as_renewable
from cairn_common.supervised import LinkSettings, SupervisedLink
from cairn_common.tasks import cancel_and_wait
from rule_router import metrics
from rule_router.acting import Acting, nak_all, retry_delay
from rule_router.actions.egress import guarded_client
from rule_router.addresses import EgressPolicy
from rule_router.alerts import AlertPublisher
from rule_router.consumer import Consumer
from rule_router.core_subs import CoreSubscriptions
from rule_router.environment import RuleEnv
from rule_router.errors import RegexTimeout
from rule_router.evaluate import evaluate_many
from rule_router.guards import Guards, Warn
from rule_router.hops import MAX_HOPS, hops
from rule_router.ledger import COMPLETE, Ledger, Partial, Replay, delivery
from rule_router.model import Firing, PublishOut, Rule
from rule_router.replies import server_answer
from rule_router.ruleset import TELEMETRY, RuleSet
from rule_router.shared_throttle import Pending, SharedThrottle
from rule_router.subjects import subject_matches

log = logging.getLogger(__name__)
# set in the task that handles a core message (`handle`); read by `evaluate`
_CORE: contextvars.ContextVar[bool] = contextvars.ContextVar("cairn_router_core", default=False)

_EVALUATED = {p: metrics.EVALUATED.labels(p) for p in ("core", "jetstream")}  # hot path
ACK_WAIT = 30.0  # seconds: the durable consumer's ack wait when this router makes it
CONCURRENCY = 64
LATENCY_SAMPLE = 8  # time one evaluation in this many for the latency histogram
STRIKES = 3  # regex time-outs before a rule's source (row or file) is suspended
SERVICE_USER = "cairn-router"  # the router's NATS user name in every tenant account
CONNECT_WAIT = 15.0  # seconds start() waits for the first connection

Suspend = Callable[[Rule, str], None]


class TenantRouter(Acting):
    """`http` None (the service): a webhook client of its own, with this tenant's egress
    policy, made at start and closed at stop; a given client (tests) is the caller's.
    `ack_wait` (default ACK_WAIT, read when the runtime is made) applies when this router
    creates its durable consumer; `live_ack_wait` is the one the consumer really has."""

    def __init__(self, slug: str, nats_url: str,
                 creds: Renewable | Callable[[], tuple[str, str]],
                 http: httpx.AsyncClient | None, on_suspend: Suspend | None = None, *,
                 user: str = SERVICE_USER, on_warn: Warn | None = None,
                 ack_wait: float | None = None) -> None:
        self.slug = slug
        self.user = user
        self.on_suspend = on_suspend
        self.on_warn = on_warn
        self.env = RuleEnv.from_environ(tenant=slug)  # bare and `slug:` entries
        self.guards = Guards(slug, on_warn)  # hop limit, server replies, fan-out bounds
        self.strikes: dict[str, int] = {}  # rule source -> regex time-outs
        self.nats_url = nats_url
        self.creds: Renewable = as_renewable(creds)
        self.link: SupervisedLink | None = None
        self.http = http
        self._owns_http = False
        self.ruleset = RuleSet()
        self.throttle = SharedThrottle(slug, user, lambda: self.nc)
        self.nc: NATS | None = None
        self.ack_wait = ACK_WAIT if ack_wait is None else ack_wait
        self.live_ack_wait = self.ack_wait
        self.core = CoreSubscriptions(user, self._on_core)  # queue group: the identity
        self.ledger = Ledger()
        self.publisher = AlertPublisher(slug, lambda: self.nc)
        self.consumer = Consumer(self)
        self.tasks: list[asyncio.Task[Any]] = []
        self.limit = asyncio.Semaphore(CONCURRENCY)
        self.inflight: set[asyncio.Task[Any]] = set()
        self._count = 0

    async def start(self) -> None:
        """Connect (bounded by CONNECT_WAIT: the caller retries at its next resync), make
        the core subscriptions and start the consumer. From then on the supervised link
        renews the connection ahead of its JWT's expiry and reopens it after any close;
        each new connection gets the subscriptions before the old one retires."""
        if self.http is None:
            self.http = guarded_client(EgressPolicy.from_environ(tenant=self.slug))
            self._owns_http = True
        settings = LinkSettings(
            name=f"{self.user}/{self.slug}", label="router-tenant",
            servers=parse_nats_urls(self.nats_url),
            inbox_prefix=service_inbox(self.user), ping_interval=10, reconnect_time_wait=0.5,
            backoff_max=10.0)
        self.link = SupervisedLink(settings, self.creds, self._on_link,
                                   on_retire=self._on_retire)
        try:
            await asyncio.wait_for(asyncio.shield(self.link.start()), CONNECT_WAIT)
        except TimeoutError:
            await self.link.stop(grace=0.1)
            raise nats.errors.NoServersError from None
        self.tasks.append(asyncio.create_task(self.consumer.run(),
                                              name=f"consume:{self.slug}"))

    async def _on_link(self, nc: NATS) -> None:
        """A new connection (first, renewed, reopened): it takes over the core
        subscriptions now and the pull subscription at the consumer's next round. When
        that fails the link closes `nc` and keeps the old one: so does this runtime."""
        previous, self.nc = self.nc, nc
        try:
            await self.rebind()
        except BaseException:
            if self.nc is nc:
                self.nc = previous
            raise

    async def _on_retire(self, old: NATS) -> None:
        """Before the old connection drains: let the consumer move off it and the work
        it delivered finish (its acks go out on it), bounded."""
        deadline = time.monotonic() + max(self.live_ack_wait, 3.0)
        while time.monotonic() < deadline and (
                self.consumer.bound is old or any(not t.done() for t in self.inflight)):
            await asyncio.sleep(0.1)

    def swap(self, ruleset: RuleSet) -> None:
        """Atomic: in-flight evaluations keep the set they started with."""
        self.ruleset = ruleset
        self.strikes.clear()
        if self.nc is not None:
            self._background(self._resubscribe(), "subscribe")

    async def stop(self, grace: float = 2.0) -> None:
        # The consume loop ends on its own after the batch in hand (a fetch waits at most
        # 1 s): messages already delivered get handled and acked, not left to come back
        # after the ack wait. Only a loop stuck longer than `grace` is cancelled.
        self.consumer.stop()
        _, stuck = await asyncio.wait(self.tasks, timeout=grace) if self.tasks else ((), ())
        await cancel_and_wait(stuck)
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=grace)
        if self.link is not None:
            await self.link.stop(grace)
        elif self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), grace)
            except (TimeoutError, nats.errors.Error):
                await self.nc.close()
        if self._owns_http and self.http is not None:
            await self.http.aclose()

    async def rebind(self) -> None:
        """Call after replacing `self.nc`: the core subscriptions move to the new
        connection now (the consume loop would notice within a fetch, about 1 s, and
        moves the pull subscription itself); publishes already use whatever `self.nc` is."""
        await self._resubscribe()

    # -- intake -----------------------------------------------------------------------

    async def _resubscribe(self) -> None:
        """Bring the core subscriptions in line with the rule set, on the current
        `self.nc` (all of them again when the connection object was swapped)."""
        await self.core.sync(lambda: self.nc, lambda: self.ruleset.core_filters())

    @property
    def core_subs(self) -> dict[str, Any]:
        return self.core.subs

    async def _on_core(self, msg: Msg) -> None:
        if subject_matches(TELEMETRY, msg.subject):
            return  # telemetry comes through the durable consumer (and is acked there)
        await self._spawn(msg, "core")

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        """Evaluate inline, in order (cheap); only webhooks, which may retry for seconds,
        get their own task so they never hold up the stream. A message that fails is
        handed back on its own (`_failed`); the rest of the batch goes on."""
        at = evaluated = 0
        try:
            for at, msg in enumerate(msgs):  # noqa: B007 - `at` is read after a cancel
                try:
                    evaluated += await self._take(msg)
                except Exception as exc:
                    await self._failed(msg, exc)
        except asyncio.CancelledError:
            await self._hand_back(msgs[at:])  # now, not after the ack wait
            raise
        finally:
            _EVALUATED["jetstream"].inc(evaluated)  # one counter update per batch

    async def _take(self, msg: Msg) -> bool:
        """Act on one delivery (or skip it, per the ledger); True when it was evaluated."""
        seen = delivery(msg.reply)
        seq, delivered = seen if seen is not None else (None, 1)
        redo: Partial | None = None
        if seq is not None and delivered > 1:
            if self.ledger.join(seq, msg):  # the first delivery is still being acted on
                metrics.REDELIVERIES.labels("joined").inc()
                return False
            redo = self.ledger.lookup(seq)
            if redo is COMPLETE:  # its ack was lost: nothing to run again
                metrics.REDELIVERIES.labels("skipped").inc()
                await self._ack(msg)
                return False
            if redo is not None:
                metrics.REDELIVERIES.labels("resumed").inc()
        firings = await self.decide(msg, redo)
        if not firings:
            await self._ack(msg)
            return True
        if seq is not None:
            self.ledger.begin(seq)  # from here on finish() settles it, whatever happens
        if all(isinstance(o, PublishOut) for f in firings for o in f.actions):
            await self.finish(msg, "jetstream", firings, redo)
            return True
        try:
            await self._bounded(lambda: self.finish(msg, "jetstream", firings, redo),
                                "action")
        except BaseException:  # never started: nobody else will settle it
            if seq is not None:
                self.ledger.end(seq)
            raise
        return True

    async def _failed(self, msg: Msg, exc: Exception) -> None:
        """A message whose handling raised: logged, counted, handed back with a delay."""
        metrics.CONSUMER_ERRORS.labels("message").inc()
        seen = delivery(msg.reply)
        log.error("telemetry message failed; handed back", exc_info=exc,
                  extra={"tenant": self.slug, "subject": msg.subject,
                         "error": str(exc) or repr(exc),
                         "delivered": seen[1] if seen else None})
        if not msg.is_acked and not self.ledger.claimed(seen[0] if seen else None):
            await nak_all([msg], retry_delay(seen[1] if seen else 1))

    async def _hand_back(self, msgs: list[Msg]) -> None:
        """Nak what nobody acts on (neither answered nor in flight)."""
        await nak_all([m for m in msgs if not m.is_acked
                        and not self.ledger.claimed((delivery(m.reply) or (None,))[0])])

    async def _spawn(self, msg: Msg, path: str) -> None:
        await self._bounded(lambda: self.handle(msg, path), "core")

    async def _bounded(self, work: Callable[[], Coroutine[Any, Any, Any]], stage: str) -> None:
        """At most CONCURRENCY messages in flight per tenant (backpressure on intake).
        `work` makes the coroutine once there is room (none is left un-awaited)."""
        await self.limit.acquire()
        try:
            task = self._background(work(), stage)
        except BaseException:
            self.limit.release()
            raise
        task.add_done_callback(lambda _: self.limit.release())

    def _background(self, work: Coroutine[Any, Any, Any], stage: str) -> asyncio.Task[Any]:
        """A task of this runtime: waited for at stop; a failure is logged and counted
        (`stage`), never lost with the task."""
        task = asyncio.create_task(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        task.add_done_callback(lambda done: self._task_done(done, stage))
        return task

    def _task_done(self, task: asyncio.Task[Any], stage: str) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        metrics.CONSUMER_ERRORS.labels(stage).inc()
        log.error("tenant task failed", exc_info=exc,
                  extra={"tenant": self.slug, "stage": stage, "error": str(exc) or repr(exc)})

    # -- evaluate and act ---------------------------------------------------------------

    async def handle(self, msg: Msg, path: str) -> None:
        _EVALUATED[path].inc()
        _CORE.set(True)  # this task's message: its reply subject is the publisher's
        await self.finish(msg, path, await self.decide(msg))

    async def decide(self, msg: Msg, redo: Partial | None = None) -> list[Firing]:
        """`evaluate`, then the throttled firings confirmed by the windows all routers
        share (`shared_throttle.py`); not for a resumed redelivery (its rules fired)."""
        firings = self.evaluate(msg, redo)
        if isinstance(firings, Pending):
            return await self.throttle.admit(firings.gate, firings)
        return firings

    def evaluate(self, msg: Msg, redo: Partial | None = None) -> list[Firing]:
        """The rules `msg` fires (a `Pending` when throttled ones await `decide`). `redo`:
        a redelivery some of whose actions ran; only the rules that fired then fire (again
        past their throttle window)."""
        ruleset = self.ruleset  # one consistent set for this message
        rules = ruleset.index.match(msg.subject)
        if not rules:
            return []  # nothing to evaluate: not even a JSON decode
        forged = server_answer(msg.headers, msg.data)
        if forged is not None:
            self.guards.server_reply(msg.subject, forged)
            return []
        if msg.headers and hops(msg.headers) >= MAX_HOPS:
            self.guards.at_hop_limit(rules, msg.subject)
            return []
        self._count += 1
        timed = self._count % LATENCY_SAMPLE == 0  # a sample keeps the histogram cheap
        started = time.perf_counter() if timed else 0.0
        # only a message of the durable consumer has a stream sequence; a core message's
        # reply subject is whatever its publisher wrote (a forged `$JS.ACK...` must not
        # pass for the redelivery of the message that opened a window)
        gate = self.throttle.gate(None if _CORE.get() else msg.reply) if redo is None else None
        throttle = gate if redo is None else Replay(redo.fired)
        firings, errors = evaluate_many(rules, msg.subject, msg.data, env=self.env,
                                        throttle=throttle, indexed=True)
        if timed:
            metrics.EVAL_SECONDS.observe(time.perf_counter() - started)
        for rule, exc in errors:
            metrics.RUNTIME_ERRORS.inc()
            if isinstance(exc, RegexTimeout):
                self._strike(rule, exc)
                continue
            log.warning("rule could not render its actions",
                        extra={"tenant": self.slug, "rule": rule.name, "error": str(exc)})
        return Pending(firings, gate) if gate is not None and gate.pending else firings

    def _strike(self, rule: Rule, exc: RegexTimeout) -> None:
        """A regex that keeps running out of time costs every tenant on this router up
        to REGEX_TIMEOUT per message: after STRIKES its rules are taken out."""
        count = self.strikes[rule.source] = self.strikes.get(rule.source, 0) + 1
        log.warning("rule's regular expression ran out of time; counted as no match",
                    extra={"tenant": self.slug, "rule": rule.name, "strikes": count,
                           "error": str(exc)})
        if count == STRIKES and self.on_suspend is not None:
            self.on_suspend(rule, f"suspended after {STRIKES} messages: rule {rule.name!r} "
                            f"(line {rule.line}): {exc}. Edit the rule (or disable and "
                            "enable it) to load it again.")


