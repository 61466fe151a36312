"""The bridge service: wiring, start and stop.

Start: bootstrap check -> PocketBase superuser login -> SYS connection to NATS ->
subscribe to realtime -> reconcile (identities, then queued commands) -> follow events.
Each later realtime reconnect catches up incrementally (rows changed since the newest
version seen, reconcile.py); the periodic pass and a NATS reconnect stay full passes.
Service users are renewed on their own schedule (renewal.py), in a supervised task.
Stop (SIGTERM/SIGINT): stop following, finish in-flight handlers (bounded), flush audit
rows, close tenant links, drain NATS, close PocketBase.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.aio.client import Client as NATS
from prometheus_client import start_http_server
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from cairn_common import audit_key
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.tasks import cancel_and_wait
from pb_hooks_bridge import background
from pb_hooks_bridge.accounts import AccountStore
from pb_hooks_bridge.audit import AuditWriter
from pb_hooks_bridge.bootstrap import bootstrap, load_operator
from pb_hooks_bridge.cluster_watch import ClusterWatch
from pb_hooks_bridge.config import BridgeConfig
from pb_hooks_bridge.conn_limits import ConnLimits
from pb_hooks_bridge.device_ids import DeviceIds
from pb_hooks_bridge.device_requests import DeviceRequests
from pb_hooks_bridge.dispatch import CommandDispatcher
from pb_hooks_bridge.errors import BridgeError
from pb_hooks_bridge.events import EventRouter, follow
from pb_hooks_bridge.freshness import Freshness
from pb_hooks_bridge.history import History
from pb_hooks_bridge.identities import BRIDGE_USER, Identities
from pb_hooks_bridge.kicker import Kicker
from pb_hooks_bridge.lanes import COMMANDS, IDENTITY, REQUESTS, ROLLOUT, Lanes, Pool
from pb_hooks_bridge.leader import RECONCILE, Leadership
from pb_hooks_bridge.links import TenantLinks
from pb_hooks_bridge.people import People
from pb_hooks_bridge.presence import Presence
from pb_hooks_bridge.pusher import Pusher
from pb_hooks_bridge.reconcile import Reconciler, Summary
from pb_hooks_bridge.renewal import Renewer
from pb_hooks_bridge.roles import RoleBook
from pb_hooks_bridge.sidecars import SidecarBook
from pb_hooks_bridge.sys_link import sys_link
from pb_hooks_bridge.tenants import Tenants

log = logging.getLogger(__name__)

PERIODIC_RECONCILE = 600.0  # seconds; also renews service users and prunes revocations
SWEEP = 30.0  # seconds between command-expiry / presence sweeps
_METRICS_SERVED: set[int] = set()
DEVICE_REQUESTS_IN_FLIGHT = 32  # renewals answered at once (device_requests.py)
ROLLOUT_IN_FLIGHT = 2  # tenants a fanned-out change works on at once (lanes.py); measured:
# as fast as 64 here (PocketBase-bound), and a new tenant waits half as long meanwhile


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
        self._full_pass_done = False  # the first realtime connect always runs a full pass
        self.leadership = Leadership(config.nats_urls, config.nats_replicas)
        self.leadership.on_lost = self._on_lease_lost
        self.leading = False
        self.lost_lease = False  # set when the lease went: the process stands by again

    async def start(self, standby: bool = True) -> None:
        """Everything, once this bridge leads (with `standby=False`: only if the lease is
        free now; else `leading` stays False)."""
        cfg = self.config
        result = bootstrap(cfg.layout, make_control=False)  # idempotent; never makes keys a
        # running bridge should have been given (the control account: `cairn-bridge bootstrap`)
        operator = load_operator(cfg.layout)
        self.nc = await self._connect_sys()
        # one bridge leads, others wait here (leader.py); only the leader does anything
        if cfg.metrics_port and cfg.metrics_port not in _METRICS_SERVED:
            start_http_server(cfg.metrics_port, addr="127.0.0.1")  # a standby shows too
            _METRICS_SERVED.add(cfg.metrics_port)  # (once per process: a lost lease restarts)
        if not await self.leadership.stand(self.nc, operator, cfg.layout, self.stopping,
                                           wait=standby):
            return
        self.pb.audit_key = audit_key.read(cfg.layout) or ""
        self.pb.read_audit_key = lambda: audit_key.read(cfg.layout)
        if not self.pb.audit_key:  # PocketBase would refuse every audit row
            raise BridgeError(f"no audit key in {cfg.layout.audit_key}: the launcher makes "
                              "it when it starts PocketBase; a bridge on another host needs "
                              "a copy of the control plane's (mode 0600)")
        self.leading = True
        self.started_at = time.time()  # rows "sent" before this are the old leader's
        await self._login()
        await self._enable_batch_api()
        self.audit = AuditWriter(self.pb)
        self.audit.start()
        self.roles = RoleBook()
        self.accounts = AccountStore(self.pb, replicas=cfg.nats_replicas)
        self.pusher = Pusher(self.nc, self.pb, operator, result.system_account,
                             window=cfg.push_window)
        self.pusher.guard = self.leadership.lease.check  # a paused ex-leader never pushes
        await self._start_kicker()
        self.cluster = ClusterWatch(self.pusher, self.accounts)  # re-push to returning nodes
        self.links = TenantLinks(cfg.nats_url)
        self.freshness = Freshness()
        self.identities = Identities(self.pb, self.pusher, self.roles, self.audit,
                                     cfg.user_jwt_ttl, SidecarBook(), self.freshness)
        # identity work never shares slots with command requests (which wait for replies)
        self.lanes = Lanes({IDENTITY: Pool(cfg.concurrency),
                            COMMANDS: Pool(cfg.commands_in_flight, cfg.commands_per_tenant),
                            REQUESTS: Pool(DEVICE_REQUESTS_IN_FLIGHT),
                            ROLLOUT: Pool(ROLLOUT_IN_FLIGHT)})
        self.tenants = Tenants(self.pb, self.accounts, self.pusher, self.identities,
                               self.links, self.audit, cfg.telemetry_max_age, self.lanes)
        self.commands = CommandDispatcher(self.pb, self.tenants, self.audit, self.lanes)
        self.device_ids = DeviceIds(self.pb)
        self.presence = Presence(self.pb, self.commands, self.device_ids)
        self.device_requests = DeviceRequests(self.pb, self.identities, self.lanes,
                                              self.links, self.device_ids,
                                              self.tenants.account_for)
        self.links.on_connect.append(self.presence.watch)
        self.links.on_connect.append(self.device_requests.watch)
        self.history = History()  # people's charts and alert lists (cairn.history.*)
        self.links.on_connect.append(self.history.watch)
        self.router = EventRouter(self.pb, self.tenants, self.identities, self.roles,
                                  self.lanes, self.commands, self.presence,
                                  self.device_requests,
                                  People(self.pb, self.identities, cfg.person_jwt_ttl))
        self.reconciler = Reconciler(self.pb, self.accounts, self.pusher, self.tenants,
                                     self.identities, self.roles, self.router,
                                     # revocations and the ledger must outlive every JWT
                                     max(cfg.user_jwt_ttl, cfg.person_jwt_ttl))
        if self.leadership.control is not None:
            self.reconciler.own_accounts.add(self.leadership.control.public_key)
        self.renewer = Renewer(cfg.user_jwt_ttl, self.renew_service_user)
        self.conn_limits = ConnLimits(self.pb, self.accounts, lambda: self.nc)
        self.identities.watch_expiry = self.renewer.watch
        if hasattr(self.links, "refresh"):  # links ask when a renewed JWT is late
            self.links.refresh = self.refresh_bridge_user

    async def reconcile(self) -> Summary:
        """Identities first, then commands: expire, give up on orphaned `sent` rows, and
        try every queued one once (offline devices keep theirs until they show up)."""
        summary = await self.reconciler.run()
        if not self._commands_recovered:
            # rows a previous run sent and never heard back about: outcome unknown
            await self.commands.give_up_on_sent(before=self.started_at)
            self._commands_recovered = True
        await self.commands.sweep()
        await self._submit_queued('status = "queued" || status = ""')
        self._full_pass_done = True
        return summary

    async def catch_up(self) -> Summary:
        """After a realtime reconnect: rows changed since the newest version seen, and the
        commands created meanwhile."""
        since = self.freshness.watermark("commands", self.reconciler.full_listed_at,
                                         self.reconciler.margin)
        summary = await self.reconciler.catch_up()
        await self._submit_queued(f'(status = "queued" || status = "") && updated >= "{since}"')
        return summary

    async def on_realtime_connect(self) -> Summary:
        """A full pass on the first connect (until one succeeded), a catch-up after."""
        if not self._full_pass_done:
            return await self.reconcile()
        return await self.catch_up()

    async def _submit_queued(self, filter: str) -> None:
        queued = await self.pb.list("commands", filter=filter, sort="created",
                                    fields="id,device,tenant")
        for row in queued:
            self.commands.submit(row["id"], row["device"], row.get("tenant", ""))

    async def renew_service_user(self, row_id: str, tenant_id: str) -> str:
        """Renew one service user now, in its lane, from a copy read there."""
        account = self.accounts.get(tenant_id)
        if account is None:
            return "gone"
        return await self.lanes.call(f"nats_users:{row_id}",
                                     lambda: self.tenants.sync_user_current(account, row_id))

    async def refresh_bridge_user(self, tenant_id: str) -> None:
        """A tenant link waited too long for a renewed JWT: look at its row again."""
        row = await self.pb.first("nats_users",
                                  f'tenant = "{tenant_id}" && name = "{BRIDGE_USER}"')
        if row is not None:
            await self.renew_service_user(row["id"], tenant_id)

    async def run(self) -> None:
        """Follow events until stop() is called (or the leader lease is lost)."""
        if not self.leading:
            return
        self.tasks = [
            background.start("follow", lambda: follow(self.pb, self.router,
                                                      self.on_realtime_connect, self.stopping),
                             self.stopping),
            background.start("reconcile-loop", self._reconcile_loop, self.stopping),
            background.start("sweep-loop", self._sweep_loop, self.stopping),
            background.start("service-renewal", self.renewer.run, self.stopping),
            background.start("presence", self.presence.run, self.stopping),
            background.start("conn-limits", self.conn_limits.run, self.stopping),
            background.start("cluster-watch", self.cluster.run, self.stopping),
        ]
        await self.leadership.serve(RECONCILE, self._reconcile_text)
        await self.stopping.wait()

    async def _reconcile_text(self) -> str:
        return (await self.reconcile()).line()

    def _on_lease_lost(self) -> None:
        self.lost_lease = True
        self.stopping.set()

    async def stop(self) -> None:
        self.stopping.set()
        await cancel_and_wait(self.tasks)
        if hasattr(self, "lanes"):  # an ex-leader's work is cut short, not finished
            await self.lanes.drain(grace=0.0 if self.lost_lease else 5.0)
        if hasattr(self, "audit"):
            await self.audit.stop()
        if hasattr(self, "history"):
            await self.history.stop()
        if hasattr(self, "links"):
            await self.links.close_all()
        await self.leadership.close(release=not self.lost_lease)  # a standby takes over
        if hasattr(self, "pusher"):
            await self.pusher.close()
        for link in getattr(self, "kick_links", []):
            await link.stop(grace=0.1)
        if hasattr(self, "sys_link"):
            await self.sys_link.stop()
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

    async def _start_kicker(self) -> None:
        """SYS connections for kicking revoked connections (kicker.py), one to each
        server. Not reaching them within 10 s only costs revocation latency, so start-up
        goes on; the links keep trying."""

        async def on_connect(nc: NATS) -> None:
            return None

        urls = self.config.nats_urls
        self.kick_links = [sys_link(self.config, on_connect, None, f"kick-{i + 1}", (url,))
                           for i, url in enumerate(urls)]
        self.pusher.kicker = Kicker([lambda link=link: link.nc for link in self.kick_links],
                                    self.leadership.lease.check)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(
                *(link.start() for link in self.kick_links))), 10)
        except TimeoutError:
            log.warning("not every kick connection is up yet; revocations on those servers "
                        "wait for the server's own walk until it is")

    async def _connect_sys(self) -> NATS:
        """The SYS link (account pushes), supervised like every other connection; a
        reconnect or a reopen asks for a full pass (the server may have restarted)."""

        async def on_connect(nc: NATS) -> None:
            self.nc = nc
            if hasattr(self, "pusher"):
                self.pusher.nc = nc
            if self.sys_link.opened:  # not the first connection
                self.reconcile_wanted.set()

        self.sys_link = sys_link(self.config, on_connect, self.reconcile_wanted.set)
        try:
            await asyncio.wait_for(asyncio.shield(self.sys_link.start()), 60)
        except TimeoutError:
            await self.sys_link.stop(grace=0.1)
            raise BridgeError(f"NATS at {self.config.nats_url} not reachable within 60 s "
                              "(SYS user)") from None
        assert self.nc is not None
        return self.nc
