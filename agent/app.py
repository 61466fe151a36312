"""The agent service: wiring, background tasks, start and stop.

Start: check creds -> connect (retry forever) -> subscribe to commands -> heartbeat,
telemetry, inventory and buffer-flush tasks, and the desired-config follower (which
restarts the others when intervals change, never itself). Desired config comes over NATS
from the bridge (agent/control.py): fetched after every connect, on the bridge's `config`
hint, and every DESIRED_CHECK as a safety net; no PocketBase login on any schedule. JWT
renewal belongs to the supervised link (agent/link.py), scheduled from the JWT's own
expiry, and also goes over NATS while the JWT is valid (agent/credentials.py).
Stop (SIGTERM/SIGINT): stop taking commands, let in-flight ones finish (bounded), cancel
the periodic tasks, flush buffered telemetry (bounded), drain the connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from nats.aio.client import Client as NATS

from agent import config as config_mod
from agent import desired
from agent.collectors import CollectError
from agent.collectors.inventory import collect_inventory
from agent.collectors.system import SystemCollector
from agent.config import AgentConfig
from agent.context import VERSION, Context
from agent.control import ControlClient, ControlError
from agent.credentials import DeviceCredentials, load_or_create_seed
from agent.dispatcher import Dispatcher, now_rfc3339
from agent.errors import AgentError, EnrollmentError
from agent.link import agent_link
from agent.services import service_status
from agent.telemetry import Telemetry, every
from cairn_common import creds, natsjwt, nkey
from cairn_common.creds import write_secret
from cairn_common.renewable import RenewError
from cairn_common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

COMMAND_QUEUE = "cairn-agent"  # overlapping connections of one agent share requests
DESIRED_CHECK = 1800.0  # seconds between safety-net fetches of the desired config
DESIRED_MIN_GAP = 1.0  # at most one fetch a second, however many hints arrive
DESIRED_RETRY_MAX = 60.0  # longest wait before asking again after no answer


class AgentApp:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.ctx = Context(config=config)
        self.dispatcher = Dispatcher(self.ctx)
        self.control = ControlClient(config.device.code)
        self.credentials = DeviceCredentials(config, self._secret, self.control)
        self.desired_wanted = asyncio.Event()
        self.link = agent_link(config, self.ctx.stats, self.credentials, self._on_connect,
                               on_reconnect=self.desired_wanted.set)
        self.control.link = self.link
        self.ctx.desired_changed = self.desired_wanted.set
        self.dispatcher.take = self.link.take
        self.telemetry = Telemetry(self.ctx, self.link)
        self.collector = SystemCollector(config.exporters)
        self.ctx.nats_status = self.link.status
        self.ctx.inventory = self.inventory
        self.ctx.rotate_creds = self.rotate_creds
        # periodic jobs: name -> (interval, task); a changed interval restarts only its job
        self.jobs: dict[str, tuple[float, asyncio.Task[Any]]] = {}
        self.last_run: dict[str, float] = {}  # name -> monotonic start of its last run
        self.desired_task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()
        self._rotation: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._repair_creds()
        await self.link.start()
        self._start_jobs()
        self.desired_task = asyncio.create_task(self._follow_desired(), name="desired-config")
        log.info("agent started", extra={"device": self.config.device.code,
                                         "version": VERSION})

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        return [task for _, task in self.jobs.values()]

    def _start_jobs(self) -> None:
        """Start the periodic jobs, or restart those whose interval changed. A restarted
        job keeps its phase (next run = last run + new interval): toggling desired
        intervals never makes a job run more often than its interval."""
        i = self.config.intervals
        jobs = [
            ("heartbeat", i.heartbeat, 0.0, self.telemetry.heartbeat),
            ("system", i.system, 2.0, self.publish_system),
            ("inventory", i.inventory, 1.0, self.publish_inventory),
            ("flush", 5.0, 5.0, self.telemetry.flush),
        ]
        if self.config.services.watch:
            jobs.append(("service", i.service, 3.0, self.publish_services))
        now = time.monotonic()
        for name, interval, delay, work in jobs:
            running = self.jobs.get(name)
            if running is not None and running[0] == interval and not running[1].done():
                continue
            if running is not None:
                running[1].cancel()
            if name in self.last_run:
                delay = max(0.0, self.last_run[name] + interval - now)
            task = asyncio.create_task(every(interval, delay, self._timed(name, work), name),
                                       name=name)
            self.jobs[name] = (interval, task)

    def _timed(self, name: str, work: Any) -> Any:
        async def run() -> None:
            self.last_run[name] = time.monotonic()
            await work()
        return run

    async def _follow_desired(self) -> None:
        """Fetch the desired config when asked (connect, hint) and every DESIRED_CHECK."""
        retry = DESIRED_MIN_GAP
        while True:
            try:
                await asyncio.wait_for(self.desired_wanted.wait(),
                                       DESIRED_CHECK * random.uniform(0.9, 1.1))
            except TimeoutError:
                pass
            self.desired_wanted.clear()
            try:
                fetched = await self.refresh_desired()
            except Exception:  # never fatal: the next hint or check tries again
                log.exception("desired config check failed")
                fetched = False
            retry = DESIRED_MIN_GAP if fetched else min(retry * 2, DESIRED_RETRY_MAX)
            if not fetched:  # not answered (bridge away, busy): ask again soon, not in 30 min
                self._retry_desired(retry)
            await asyncio.sleep(DESIRED_MIN_GAP)

    def _retry_desired(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, self.desired_wanted.set)

    async def refresh_desired(self, restart: bool = True) -> bool:
        """Apply intervals/exporters from our desired config; never fatal. False when the
        control plane did not answer (a refused config still counts as an answer)."""
        try:
            wanted = await self.control.desired_config()
        except ControlError as exc:
            log.warning("desired config not fetched", extra={"error": str(exc)})
            return False
        try:
            merged = desired.merge(self.config, wanted)
        except AgentError as exc:
            log.warning("desired config not applied", extra={"error": str(exc)})
            return True
        if merged == self.config:
            return True
        log.info("applying desired config from the control plane",
                 extra={"intervals": config_mod.to_dict(merged)["intervals"],
                        "exporters": list(merged.exporters)})
        self.config = self.ctx.config = merged
        self.collector = SystemCollector(merged.exporters)
        if restart:
            self._start_jobs()
        return True

    async def stop(self) -> None:
        grace = self.config.commands.timeout + 2
        await self.dispatcher.drain(grace)
        await cancel_and_wait([*self.tasks, self.desired_task, self._rotation])
        try:
            await asyncio.wait_for(self.telemetry.flush(), 3)
        except TimeoutError:
            log.warning("telemetry left unsent at stop",
                        extra={"buffered": len(self.telemetry.buffer)})
        await self.link.stop()
        log.info("agent stopped")

    async def _on_connect(self, nc: NATS) -> None:
        await self.dispatcher.subscribe(nc, queue=COMMAND_QUEUE)
        await nc.flush()
        await asyncio.sleep(0)
        await nc.flush()
        self.desired_wanted.set()  # a hint may have gone out while we were away

    # -- telemetry ------------------------------------------------------------------

    async def publish_system(self) -> None:
        stats = self.ctx.stats
        try:
            doc = await self.collector.collect()
        except CollectError as exc:
            stats.metrics_failures += 1
            await self.telemetry.publish("system", {"status": "error", "error": str(exc)})
            return
        stats.metrics_count += 1
        stats.last_metrics = now_rfc3339()
        await self.telemetry.publish("system", doc)

    async def publish_services(self) -> None:
        services = [{"name": name, "status": await service_status(name)}
                    for name in self.config.services.watch]
        await self.telemetry.publish("service", {"services": services})

    async def inventory(self) -> dict[str, Any]:
        return await collect_inventory(VERSION, self.config)

    async def publish_inventory(self) -> None:
        await self.telemetry.publish("inventory", await self.inventory())

    # -- credentials ----------------------------------------------------------------

    def _secret(self) -> str:
        path = self.config.server.secret_file
        if not path:
            raise EnrollmentError("server.secret_file is not set: cannot talk to PocketBase")
        return self.config.path(path).read_text().strip()

    async def _register(self, kp: Any) -> None:
        async with self.credentials.lock:
            await self.credentials.register(kp)

    async def _repair_creds(self) -> None:
        """After a crash mid-rotation the seed file may be newer than the creds file."""
        seed_path = self.config.path(self.config.nats.seed_file)
        creds_path = self.config.path(self.config.nats.creds_file)
        if not seed_path.exists():
            return
        kp = load_or_create_seed(seed_path)
        try:
            token, _ = creds.read(creds_path)
            if natsjwt.decode(token, verify=False).get("sub") == kp.public_key.decode():
                return
        except (OSError, creds.CredsError, natsjwt.JwtError):
            pass
        log.warning("creds file does not match the seed; registering the key again")
        await self._register(kp)

    async def rotate_creds(self) -> dict[str, Any]:
        """Answer now; rotate right after, so this reply and in-flight ones are not lost."""
        if self._rotation is not None and not self._rotation.done():
            raise AgentError("a rotation is already running")
        kp = nkey.create("user")
        self._rotation = asyncio.create_task(self._rotate(kp), name="rotate-creds")
        return {"new_public_key": kp.public_key.decode(),
                "message": "rotating: the agent registers the new key and reconnects"}

    async def _rotate(self, kp: Any) -> None:
        await asyncio.sleep(0.05)  # let the dispatcher send the rotate_creds reply first
        await self.dispatcher.drain(self.config.commands.timeout + 2)
        seed_path = self.config.path(self.config.nats.seed_file)
        old_seed = seed_path.read_text() if seed_path.exists() else ""
        try:
            # seed first: after a crash here, start-up repair registers this new key
            write_secret(seed_path, kp.seed.decode() + "\n")
            await self._register(kp)
            log.info("new key registered; reconnecting",
                     extra={"public_key": kp.public_key.decode()})
        except (AgentError, OSError, RenewError) as exc:
            log.error("rotation failed; keeping the current key", extra={"error": str(exc)})
            if old_seed:
                write_secret(seed_path, old_seed)
            return
        finally:
            self.dispatcher.accepting = True
        await self.link.replace("rotation")
