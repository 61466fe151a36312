"""What `python -m bench fleet-chaos` watches while a fault lasts: the agents' connections
(`Sampler`, the nodes' /connz every 0.5 s) and routing (`RouteProbe`: a probe message
every 0.5 s that a rule turns into an alert, through either router).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any

import nats
from nats.aio.client import Client as NATS

from bench.fleet_chaos_rig import Monitor, within

PROBE_SUBJECT = "agents.chaos-probe.telemetry.chaos"


class Sampler:
    """The agents' connections as the nodes' /connz lists them, every `every` s."""

    def __init__(self, monitor: Monitor, account: str, every: float = 0.5) -> None:
        self.monitor, self.account, self.every = monitor, account, every
        self.samples: list[tuple[float, float, int]] = []  # asked, answered, count
        self.fresh = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="chaos-sampler")

    async def _run(self) -> None:
        while True:
            asked = time.monotonic()
            count = len(await self.monitor.agents(self.account))
            self.samples.append((asked, time.monotonic(), count))
            self.fresh.set()
            await asyncio.sleep(self.every)

    async def until(self, ok: Any, since: float, timeout: float) -> float:
        """When the first sample asked for from `since` on with `ok(count)` was answered."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for asked, answered, count in self.samples[seen:]:
                if asked >= since and ok(count):
                    return answered
            seen = len(self.samples)
            self.fresh.clear()
            await asyncio.wait_for(self.fresh.wait(), max(0.0, deadline - time.monotonic()))

    def dip(self, since: float, end: float, full: int) -> dict[str, Any]:
        """The lowest count from `since` to `end`, and when it was `full` again for good (0
        when no sample saw fewer: every agent was back within one sampling period)."""
        window = [(a, t, c) for a, t, c in self.samples if since <= a <= end]
        short = [a for a, _, c in window if c < full]
        back = [t for a, t, c in window if c >= full and short and a > short[-1]]
        return {"agents_lowest": min((c for _, _, c in window), default=None),
                "connected_again_s": round(back[0] - since, 2) if back else
                0.0 if not short else None}


class RouteProbe:
    """RULE's probe: one message every `every` s into TELEMETRY, its alert counted."""

    def __init__(self, nc: NATS, every: float = 0.5) -> None:
        self.nc, self.every = nc, every
        self.sent: dict[int, float] = {}  # n -> when its publish was acknowledged
        self.seen: dict[int, float] = {}  # n -> when its alert arrived
        self.failed = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def alert(msg: Any) -> None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.seen.setdefault(int(json.loads(msg.data)["n"]), time.monotonic())

        await self.nc.subscribe("alerts.chaos", cb=alert)
        await self.nc.flush()
        self.task = asyncio.create_task(self._publish(), name="chaos-route-probe")

    async def _publish(self) -> None:
        js, run, n = self.nc.jetstream(timeout=5), secrets.token_hex(3), 0
        while True:
            try:
                await js.publish(PROBE_SUBJECT, json.dumps({"n": n}).encode(),
                                 headers={"Nats-Msg-Id": f"chaos-{run}-{n}"})
                self.sent[n] = time.monotonic()
            except (nats.errors.Error, TimeoutError, OSError):
                self.failed += 1
            n += 1
            await asyncio.sleep(self.every)

    async def routed(self, since: float, timeout: float) -> dict[str, Any]:
        """Probes acknowledged from `since` until now, and how many came back as alerts
        (waiting up to `timeout` for the last: a killed router's are redelivered after the
        consumer's ack wait)."""
        wanted = [n for n, t in list(self.sent.items()) if t >= since]

        async def complete() -> bool:
            return all(n in self.seen for n in wanted)
        with contextlib.suppress(TimeoutError):
            await within(complete, timeout, "every probe routed")
        missing = sum(n not in self.seen for n in wanted)
        back = [self.seen[n] for n, t in self.sent.items() if t >= since and n in self.seen]
        return {"published": len(wanted), "missing": missing,
                "first_alert_s": round(min(back) - since, 2) if back else None}
