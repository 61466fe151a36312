"""A tenant's durable pull consumer on TELEMETRY, supervised: nothing ends it but stop.

Before, one unexpected exception in a batch ended the tenant's consumer task for good
while the process looked healthy (core rules kept firing, telemetry rules went silent).
Now every failure — making the pull subscription, a fetch, handling a batch — is logged
(with the tenant), counted (`cairn_router_consumer_errors_total{stage}`) and retried after
a backoff (BACKOFF_FIRST doubling to BACKOFF_MAX, back to the start after a good round).
Messages of a failed batch that nobody is acting on are handed back (nak) at once rather
than after the ack wait. A failing single message is the runtime's business
(`TenantRouter._failed`): it is handed back with a delay of its own, the rest of its batch
goes on.

The connection is read from `runtime.nc` each time the subscription is (re)made, and a
changed `runtime.nc` (the connection object swapped at runtime) makes the loop re-create
it on the new one, and move the core subscriptions too (`TenantRouter.rebind`, which the
code swapping the connection may also call itself, at once). After subscribing, the
consumer's own ack wait is read back (a durable made earlier keeps the ack wait it was
made with): it sets how often a message in progress is kept alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from rule_router import metrics
from rule_router.ruleset import TELEMETRY

if TYPE_CHECKING:
    from rule_router.tenant import TenantRouter

log = logging.getLogger(__name__)

STREAM = "TELEMETRY"
FETCH = 100
BACKOFF_FIRST = 0.5  # seconds after a first failure ...
BACKOFF_MAX = 5.0  # ... doubling up to this (a NATS restart is back within seconds)


class Consumer:
    """The supervised pull loop of one TenantRouter (`run` is its task)."""

    def __init__(self, runtime: TenantRouter) -> None:
        self.runtime = runtime
        self.sub: Any = None
        self.bound: Any = None  # the connection `sub` was made on
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Pull, hand to the runtime, repeat; on any failure log, count, back off, retry."""
        delay = BACKOFF_FIRST
        while not self.stopping.is_set():
            stage = "subscribe"
            msgs: list[Any] = []
            try:
                if self.runtime.core.made_on is not self.runtime.nc:  # connection swapped
                    await self.runtime.rebind()
                if self.sub is None or self.bound is not self.runtime.nc:
                    await self._subscribe()
                stage = "fetch"
                try:
                    msgs = await self.sub.fetch(FETCH, timeout=1)
                except TimeoutError:  # nothing new (nats-py raises its own or asyncio's)
                    delay = BACKOFF_FIRST
                    continue
                stage = "batch"
                await self.runtime._handle_batch(msgs)
                delay = BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.CONSUMER_ERRORS.labels(stage).inc()
                self._report(stage, exc, delay)
                if stage == "batch":
                    await self.runtime._hand_back(msgs)
                else:  # stream not there yet, server restarting, connection gone: re-make
                    self.sub = None
                await self._pause(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        await self._unsubscribe()

    def stop(self) -> None:
        """End after the batch in hand (a fetch waits at most 1 s; a backoff is cut short)."""
        self.stopping.set()

    async def _subscribe(self) -> None:
        await self._unsubscribe()
        nc = self.runtime.nc
        if nc is None:
            raise nats.errors.ConnectionClosedError
        js = nc.jetstream(timeout=10)
        runtime = self.runtime
        self.sub = await js.pull_subscribe(
            TELEMETRY, durable=runtime.user, stream=STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                  deliver_policy=DeliverPolicy.NEW,
                                  ack_wait=runtime.ack_wait, max_ack_pending=10_000))
        self.bound = nc
        try:
            info = await self.sub.consumer_info()
            if info.config.ack_wait:
                runtime.live_ack_wait = float(info.config.ack_wait)
        except (nats.errors.Error, OSError) as exc:  # keep the configured one
            log.info("consumer ack wait not read", extra={"tenant": runtime.slug,
                                                          "error": str(exc)})

    async def _unsubscribe(self) -> None:
        sub, self.sub, self.bound = self.sub, None, None
        if sub is not None:
            with contextlib.suppress(Exception):  # its connection may be gone already
                await asyncio.wait_for(sub.unsubscribe(), 1)

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)

    def _report(self, stage: str, exc: Exception, delay: float) -> None:
        extra = {"tenant": self.runtime.slug, "stage": stage, "error": str(exc) or repr(exc),
                 "retry_in": delay}
        if stage == "batch":  # a bug, not weather: with the traceback
            log.error("telemetry batch failed; consumer carries on", extra=extra,
                      exc_info=exc)
        else:
            log.warning("telemetry consumer not ready", extra=extra)
