"""One tenant's runtime: a connection in its account (the `cairn-router` service user), a
durable JetStream consumer on TELEMETRY, core subscriptions for other rule subjects, and
the evaluate -> act -> ack path.

A JetStream message is acknowledged only after every action succeeded or was dead-lettered
(at-least-once across restarts); a message whose actions could not run is not acked and
comes back after the ack wait.

The connection uses the service user's own inbox prefix (`service_inbox`): its replies
never travel under the shared `_INBOX.>`, which its permissions do not cover. Everything it
publishes carries a hop count (`hops.py`); a message at the limit is never evaluated
(counted, logged and reported to the rule's source by `guards.py`).

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
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cairn_common.natsauth import connect_options, service_inbox
from cairn_common.tasks import cancel_and_wait
from rule_router import metrics
from rule_router.actions import ACTIONS, DEADLETTER_SUBJECT, deadletter_payload
from rule_router.actions.egress import guarded_client
from rule_router.addresses import EgressPolicy
from rule_router.environment import RuleEnv
from rule_router.errors import ActionError, RegexTimeout
from rule_router.evaluate import evaluate_many
from rule_router.fanout import Allowance, received_budget, stamp
from rule_router.guards import Guards, Warn
from rule_router.hops import MAX_HOPS, hops
from rule_router.model import Firing, PublishOut, Rule
from rule_router.replies import server_answer
from rule_router.ruleset import TELEMETRY, RuleSet
from rule_router.subjects import subject_matches
from rule_router.throttle import Throttle

log = logging.getLogger(__name__)

_EVALUATED = {p: metrics.EVALUATED.labels(p) for p in ("core", "jetstream")}  # hot path
STREAM = "TELEMETRY"
ACK_WAIT = 30.0  # seconds; a webhook in progress extends it (in_progress) per attempt
FETCH = 100
CONCURRENCY = 64
LATENCY_SAMPLE = 8  # time one evaluation in this many for the latency histogram
STRIKES = 3  # regex time-outs before a rule's source (row or file) is suspended
SERVICE_USER = "cairn-router"  # the router's NATS user name in every tenant account

Suspend = Callable[[Rule, str], None]


class TenantRouter:
    """`http` None (the service): a webhook client of its own, with this tenant's egress
    policy, made at start and closed at stop; a given client (tests) is the caller's."""

    def __init__(self, slug: str, nats_url: str, creds: Callable[[], tuple[str, str]],
                 http: httpx.AsyncClient | None, on_suspend: Suspend | None = None, *,
                 user: str = SERVICE_USER, on_warn: Warn | None = None) -> None:
        self.slug = slug
        self.user = user
        self.on_suspend = on_suspend
        self.on_warn = on_warn
        self.env = RuleEnv.from_environ(tenant=slug)  # bare and `slug:` entries
        self.guards = Guards(slug, on_warn)  # hop limit, server replies, fan-out bounds
        self.strikes: dict[str, int] = {}  # rule source -> regex time-outs
        self.nats_url = nats_url
        self.creds = creds
        self.http = http
        self._owns_http = False
        self.ruleset = RuleSet()
        self.throttle = Throttle()
        self.nc: NATS | None = None
        self.core_subs: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.limit = asyncio.Semaphore(CONCURRENCY)
        self.inflight: set[asyncio.Task[Any]] = set()
        self._subscribing = asyncio.Lock()
        self._count = 0
        self._closing = False

    async def start(self) -> None:
        if self.http is None:
            self.http = guarded_client(EgressPolicy.from_environ(tenant=self.slug))
            self._owns_http = True

        async def on_error(exc: Exception) -> None:
            log.warning("tenant link error", extra={"tenant": self.slug, "error": str(exc)})

        self.nc = await nats.connect(
            self.nats_url, name=f"{self.user}/{self.slug}", max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, connect_timeout=5, error_cb=on_error,
            inbox_prefix=service_inbox(self.user), **connect_options(self.creds))
        await self._resubscribe()
        self.tasks.append(asyncio.create_task(self._consume(), name=f"consume:{self.slug}"))

    def swap(self, ruleset: RuleSet) -> None:
        """Atomic: in-flight evaluations keep the set they started with."""
        self.ruleset = ruleset
        self.strikes.clear()
        if self.nc is not None:
            task = asyncio.create_task(self._resubscribe())
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def stop(self, grace: float = 2.0) -> None:
        # The consume loop ends on its own after the batch in hand (a fetch waits at most
        # 1 s): messages already delivered get handled and acked, not left to come back
        # after the ack wait. Only a loop stuck longer than `grace` is cancelled.
        self._closing = True
        _, stuck = await asyncio.wait(self.tasks, timeout=grace) if self.tasks else ((), ())
        await cancel_and_wait(stuck)
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=grace)
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), grace)
            except (TimeoutError, nats.errors.Error):
                await self.nc.close()
        if self._owns_http and self.http is not None:
            await self.http.aclose()

    # -- intake -----------------------------------------------------------------------

    async def _resubscribe(self) -> None:
        async with self._subscribing:  # swaps can come in bursts; one diff at a time
            await self._resubscribe_locked()

    async def _resubscribe_locked(self) -> None:
        assert self.nc is not None
        wanted = self.ruleset.core_filters()
        for subject in set(self.core_subs) - wanted:
            await self.core_subs.pop(subject).unsubscribe()
        for subject in wanted - set(self.core_subs):
            self.core_subs[subject] = await self.nc.subscribe(subject, cb=self._on_core)

    async def _on_core(self, msg: Msg) -> None:
        if subject_matches(TELEMETRY, msg.subject):
            return  # telemetry comes through the durable consumer (and is acked there)
        await self._spawn(msg, "core")

    async def _consume(self) -> None:
        """Pull from the durable consumer forever; survives stream/server hiccups."""
        assert self.nc is not None
        js = self.nc.jetstream(timeout=10)
        sub = None
        while not self._closing:
            try:
                if sub is None:
                    sub = await js.pull_subscribe(
                        TELEMETRY, durable=self.user, stream=STREAM,
                        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                              deliver_policy=DeliverPolicy.NEW,
                                              ack_wait=ACK_WAIT, max_ack_pending=10_000))
                msgs = await sub.fetch(FETCH, timeout=1)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # stream not there yet, server restarting, ...
                log.warning("telemetry consumer not ready", extra={"tenant": self.slug,
                                                                   "error": str(exc)})
                sub = None
                await asyncio.sleep(1)
                continue
            await self._handle_batch(msgs)

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        """Evaluate inline, in order (cheap); only webhooks, which may retry for seconds,
        get their own task so they never hold up the stream."""
        done = 0
        try:
            for msg in msgs:
                firings = self.evaluate(msg)
                done += 1
                if not firings:
                    await msg.ack()
                elif any(not isinstance(o, PublishOut) for f in firings for o in f.actions):
                    await self._spawn_finish(msg, firings)
                else:
                    await self.finish(msg, "jetstream", firings)
        except asyncio.CancelledError:
            await _nak_all(msgs[done:])  # hand them back now, not after the ack wait
            raise
        finally:
            _EVALUATED["jetstream"].inc(done)  # one counter update per batch

    async def _spawn_finish(self, msg: Msg, firings: list[Firing]) -> None:
        await self._bounded(self.finish(msg, "jetstream", firings))

    async def _spawn(self, msg: Msg, path: str) -> None:
        await self._bounded(self.handle(msg, path))

    async def _bounded(self, work: Any) -> None:
        """At most CONCURRENCY messages in flight per tenant (backpressure on intake)."""
        await self.limit.acquire()
        task = asyncio.create_task(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        task.add_done_callback(lambda _: self.limit.release())

    # -- evaluate and act ---------------------------------------------------------------

    async def handle(self, msg: Msg, path: str) -> None:
        _EVALUATED[path].inc()
        await self.finish(msg, path, self.evaluate(msg))

    def evaluate(self, msg: Msg) -> list[Firing]:
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
        firings, errors = evaluate_many(rules, msg.subject, msg.data, env=self.env,
                                        throttle=self.throttle, indexed=True)
        if timed:
            metrics.EVAL_SECONDS.observe(time.perf_counter() - started)
        for rule, exc in errors:
            metrics.RUNTIME_ERRORS.inc()
            if isinstance(exc, RegexTimeout):
                self._strike(rule, exc)
                continue
            log.warning("rule could not render its actions",
                        extra={"tenant": self.slug, "rule": rule.name, "error": str(exc)})
        return firings

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

    async def finish(self, msg: Msg, path: str, firings: list[Firing]) -> None:
        """Act, then ack (JetStream); a cancelled or failed run hands the message back."""
        try:
            done = True
            allowance = Allowance.split(received_budget(msg.headers),
                                        sum(len(f.actions) for f in firings))
            for firing in firings:
                metrics.MATCHES.inc()
                done = await self._act(firing, msg, path, allowance) and done
            if path == "jetstream":
                if done:
                    await msg.ack()
                else:
                    await msg.nak(delay=5)
        except asyncio.CancelledError:
            if path == "jetstream":
                await _nak_all([msg])
            raise

    async def _act(self, firing: Firing, msg: Msg, path: str, allowance: Allowance) -> bool:
        """Run every action; True when each one succeeded, was dead-lettered or was
        dropped by a fan-out bound."""
        original = msg.data
        hop = hops(msg.headers) + 1
        ok = True
        for out in firing.actions:
            if isinstance(out, PublishOut):
                if not self.guards.may_publish(firing, allowance):
                    continue
                out = replace(out, headers=stamp(out.headers, hop, allowance.child))
                try:
                    await ACTIONS["publish"](out, self.nc)
                    metrics.ACTIONS.labels("publish", "ok").inc()
                except ActionError as exc:
                    metrics.ACTIONS.labels("publish", "failed").inc()
                    ok = await self._deadletter(firing, out, exc, original, hop,
                                                allowance) and ok
                continue
            if path == "jetstream":
                await msg.in_progress()  # a webhook with retries may outlast the ack wait
            result = await ACTIONS["webhook"](out, self.http)
            metrics.WEBHOOK_RETRIES.inc(max(0, result.attempts - 1))
            metrics.ACTIONS.labels("webhook", "ok" if result.ok else "failed").inc()
            if not result.ok:
                ok = await self._deadletter(firing, out, result, original, hop,
                                            allowance) and ok
        return ok

    async def _deadletter(self, firing: Firing, out: Any, error: Any, original: bytes,
                          hop: int, allowance: Allowance) -> bool:
        if not self.guards.may_publish(firing, allowance):
            return True  # dropped like any publish past a fan-out bound (see above)
        try:
            assert self.nc is not None
            await self.nc.publish(DEADLETTER_SUBJECT,
                                  deadletter_payload(firing, out, error, original),
                                  headers=stamp(None, hop, allowance.child))
            metrics.DEADLETTERS.inc()
            return True
        except (nats.errors.Error, OSError) as exc:
            log.error("dead letter could not be published; the message will come back",
                      extra={"tenant": self.slug, "rule": firing.rule.name, "error": str(exc)})
            return False


async def _nak_all(msgs: list[Msg]) -> None:
    for msg in msgs:
        try:
            await msg.nak()
        except Exception:  # connection already gone: the ack wait brings them back
            return
