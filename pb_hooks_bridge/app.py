"""The bridge service: wiring, start and stop.

Start: bootstrap check -> PocketBase superuser login -> SYS connection to NATS ->
subscribe to realtime -> reconcile (identities, then queued commands) -> follow events.
Stop (SIGTERM/SIGINT): stop following, finish in-flight handlers (bounded), flush audit
rows, close tenant links, drain NATS, close PocketBase.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats
from nats.aio.client import Client as NATS
from prometheus_client import start_http_server
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.tasks import cancel_and_wait
from pb_hooks_bridge.accounts import AccountStore
from pb_hooks_bridge.audit import AuditWriter
from pb_hooks_bridge.bootstrap import bootstrap, load_operator
from pb_hooks_bridge.config import BridgeConfig
from pb_hooks_bridge.dispatch import CommandDispatcher
from pb_hooks_bridge.events import EventRouter, follow
from pb_hooks_bridge.identities import Identities
from pb_hooks_bridge.lanes import Lanes
from pb_hooks_bridge.links import TenantLinks
from pb_hooks_bridge.presence import Presence
from pb_hooks_bridge.pusher import Pusher
from pb_hooks_bridge.reconcile import Reconciler, Summary
from pb_hooks_bridge.roles import RoleBook
from pb_hooks_bridge.sidecars import SidecarBook
from pb_hooks_bridge.tenants import Tenants

log = logging.getLogger(__name__)

PERIODIC_RECONCILE = 600.0  # seconds; also renews service users and prunes revocations
SWEEP = 30.0  # seconds between command-expiry / presence sweeps


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.stopping = asyncio.Event()
        self.reconcile_wanted = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.nc: NATS | None = None
        self.pb = PocketBase(config.pb_url)
        self.started_at = time.time()
        self._commands_recovered = False

    async def start(self) -> None:
        cfg = self.config
        result = bootstrap(cfg.layout)  # idempotent; refuses to replace lost keys
        operator = load_operator(cfg.layout)
        await self._login()
        await self._enable_batch_api()
        self.nc = await self._connect_sys()
        self.audit = AuditWriter(self.pb)
        self.audit.start()
        self.roles = RoleBook()
        self.accounts = AccountStore(self.pb)
        self.pusher = Pusher(self.nc, self.pb, operator, result.system_account,
                             window=cfg.push_window)
        self.links = TenantLinks(cfg.nats_url)
        self.identities = Identities(self.pb, self.pusher, self.roles, self.audit,
                                     cfg.user_jwt_ttl, SidecarBook())
        self.tenants = Tenants(self.pb, self.accounts, self.pusher, self.identities,
                               self.links, self.audit, cfg.telemetry_max_age)
        self.lanes = Lanes(cfg.concurrency)
        self.commands = CommandDispatcher(self.pb, self.tenants, self.audit, self.lanes)
        self.presence = Presence(self.pb, self.commands)
        self.links.on_connect.append(self.presence.watch)
        self.router = EventRouter(self.pb, self.tenants, self.identities, self.roles,
                                  self.lanes, self.commands)
        self.reconciler = Reconciler(self.pb, self.accounts, self.pusher, self.tenants,
                                     self.identities, self.roles, self.router,
                                     cfg.user_jwt_ttl, cfg.concurrency)
        if cfg.metrics_port:
            start_http_server(cfg.metrics_port, addr="127.0.0.1")

    async def reconcile(self) -> Summary:
        """Identities first, then commands: expire, give up on orphaned `sent` rows, and
        try every queued one once (offline devices keep theirs until they show up)."""
        summary = await self.reconciler.run()
        if not self._commands_recovered:
            # rows a previous run sent and never heard back about: outcome unknown
            await self.commands.give_up_on_sent(before=self.started_at)
            self._commands_recovered = True
        await self.commands.sweep()
        queued = await self.pb.list("commands", filter='status = "queued" || status = ""',
                                    sort="created", fields="id,device")
        for row in queued:
            self.commands.submit(row["id"], row["device"])
        return summary

    async def run(self) -> None:
        """Follow events until stop() is called."""
        self.tasks = [
            asyncio.create_task(follow(self.pb, self.router, self.reconcile, self.stopping),
                                name="follow"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile-loop"),
            asyncio.create_task(self._sweep_loop(), name="sweep-loop"),
        ]
        await self.stopping.wait()

    async def stop(self) -> None:
        self.stopping.set()
        await cancel_and_wait(self.tasks)
        if hasattr(self, "lanes"):
            await self.lanes.drain(grace=5.0)
        if hasattr(self, "audit"):
            await self.audit.stop()
        if hasattr(self, "links"):
            await self.links.close_all()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()
        await self.pb.close()

    async def _reconcile_loop(self) -> None:
        """Reconcile after a NATS reconnect, and every PERIODIC_RECONCILE seconds."""
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.reconcile_wanted.wait(), PERIODIC_RECONCILE)
            except TimeoutError:
                pass
            self.reconcile_wanted.clear()
            try:
                await self.reconcile()
            except Exception as exc:  # keep the loop alive; the next trigger retries
                log.warning("reconciliation failed", extra={"error": str(exc)})

    async def _sweep_loop(self) -> None:
        """Expired commands and silent devices, every SWEEP seconds."""
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), SWEEP)
                return
            except TimeoutError:
                pass
            try:
                await self.commands.sweep()
                await self.presence.sweep()
            except Exception as exc:  # the next round retries
                log.warning("sweep failed", extra={"error": str(exc)})

    async def _login(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(PocketBaseError), stop=stop_after_delay(60),
            wait=wait_exponential(multiplier=0.2, max=5), reraise=True,
        ):
            with attempt:
                try:
                    await self.pb.auth_superuser(self.config.admin_email,
                                                 self.config.admin_password)
                except PocketBaseError as exc:
                    if exc.status in (400, 401, 403):
                        raise SystemExit(
                            f"PocketBase refused the superuser login for "
                            f"{self.config.admin_email}: {exc}") from exc
                    raise

    async def _enable_batch_api(self) -> None:
        """Audit rows go out in batches; PocketBase ships with the batch API off."""
        try:
            await self.pb.update_settings(
                {"batch": {"enabled": True, "maxRequests": 200, "timeout": 10}})
        except PocketBaseError as exc:
            log.warning("could not enable the batch API", extra={"error": str(exc)})

    async def _connect_sys(self) -> NATS:
        async def on_reconnect() -> None:
            log.info("NATS reconnected; reconciling")
            self.reconcile_wanted.set()

        async def on_error(exc: Exception) -> None:
            log.warning("NATS error", extra={"error": str(exc)})

        async def on_disconnect() -> None:
            log.warning("NATS disconnected")

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((OSError, nats.errors.Error)),
            stop=stop_after_delay(60), wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
        ):
            with attempt:
                return await nats.connect(
                    self.config.nats_url, name="cairn-bridge/sys",
                    user_credentials=str(self.config.layout.sys_user_creds),
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, ping_interval=5,
                    connect_timeout=5, reconnected_cb=on_reconnect, error_cb=on_error,
                    disconnected_cb=on_disconnect, allow_reconnect=True,
                )
        raise AssertionError("unreachable")
