"""The router service: wiring, start and stop.

Start: sign in as the router's own `sidecars` record (never the superuser) and register
its public key -> realtime on rules, tenants, nats_users -> resync (tenants where the bridge
signed a JWT for our key get a TenantRouter; every rules row validated, status written
back) -> follow events. A tenant whose runtime did not start (NATS unreachable, or slower
than CONNECT_WAIT) is tried again by the `tenant-retry` task, RETRY_FIRST doubling to
RETRY_MAX, while it is active, signed for us and not routed (counted:
`cairn_router_tenant_start_failures_total`). A deleted tenant's credentials are dropped.
Stop (SIGTERM/SIGINT): stop following, let in-flight messages finish (bounded), drain each
tenant connection, close HTTP and PocketBase.

Tenant slugs are what allow entries are scoped by (`slug:NAME`, `slug:host`): rows are
validated with their tenant's slug, each TenantRouter renders and connects with its own,
and a tenant whose slug changes is revalidated and restarted under the new one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import Counter, start_http_server

from cairn_common import logs
from cairn_common.filemodes import NotPrivateError
from cairn_common.nats_urls import NatsUrlError, join_nats_urls, parse_nats_urls
from cairn_common.nkey import NkeyError
from cairn_common.pocketbase import PocketBase, PocketBaseError, RealtimeEvent, follow_realtime
from cairn_common.renewable import MemoryCredentials
from cairn_common.sidecar_login import SidecarLoginError
from cairn_common.tasks import cancel_and_wait
from rule_router import metrics
from rule_router.identity import IdentityFiles, RouterIdentity
from rule_router.model import Rule
from rule_router.ruleset import RuleSet
from rule_router.sources import DirRules, RowRules
from rule_router.tenant import TenantRouter

log = logging.getLogger(__name__)

TOPICS = ["rules/*", "tenants/*", "nats_users/*"]
DIR_POLL = 2.0
EVERY_TENANT = "*"
RETRY_FIRST = 5.0  # seconds before a tenant whose runtime did not start is tried again,
RETRY_MAX = 60.0  # doubling up to this, for as long as it is active, signed and not routed
START_FAILURES = Counter("cairn_router_tenant_start_failures_total",
                         "Tenant runtimes that did not start (NATS unreachable or slow), "
                         "tried again with backoff")


class Router:
    def __init__(self, pb_url: str, nats_url: str, identity: RouterIdentity,
                 rules_dir: Path | None = None, http: httpx.AsyncClient | None = None) -> None:
        self.pb = PocketBase(pb_url)
        self.nats_url = nats_url
        self.identity = identity
        # webhooks: None gives each tenant a client of its own with its own egress policy
        # (public addresses only, plus what CAIRN_ROUTER_WEBHOOK_ALLOW opens for it)
        self.http = http
        self.slugs: dict[str, str] = {}  # tenant id -> slug
        self.rows = RowRules(self.pb, self._changed, self._slug)
        self.files = DirRules(rules_dir) if rules_dir else None
        self.tenants: dict[str, TenantRouter] = {}
        # per tenant: our JWT there (from our nats_users row, renewed by the bridge) + seed
        self.creds: dict[str, MemoryCredentials] = {}
        self._gone: set[str] = set()  # deleted tenants (their rows' late events are ignored)
        self.stopping = asyncio.Event()
        # set once a full pass over PocketBase has finished: row events wait in the realtime
        # queue while a pass starts every tenant, so rows are validated only after it
        self.synced = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self._dirty: set[str] = set()
        self._handling = asyncio.Lock()
        self._swap_pending = False
        self._retry: dict[str, tuple[float, float]] = {}  # tenant id -> (due, last delay)
        self._retry_wake = asyncio.Event()

    async def start(self) -> None:
        await self.identity.sign_in(self.pb)
        if self.files is not None:
            self.files.reload()
        self.tasks = [asyncio.create_task(follow_realtime(
            self.pb, TOPICS, self._on_event, self.resync, self.stopping,
            on_state=lambda up: metrics.CONNECTED.set(1 if up else 0)), name="follow"),
            asyncio.create_task(self._retry_starts(), name="tenant-retry")]
        if self.files is not None:
            self.tasks.append(asyncio.create_task(self._watch_dir(), name="rules-dir"))

    async def stop(self) -> None:
        self.stopping.set()
        await cancel_and_wait(self.tasks)
        await asyncio.gather(*(r.stop() for r in self.tenants.values()),
                             return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        await self.pb.close()

    # -- resync and events ----------------------------------------------------------------

    async def resync(self) -> None:
        """Rules first: a tenant's consumer must never take a message before its rules
        are loaded (it would be acked without being evaluated). Slugs before rules: a row
        is validated with its tenant's."""
        tenants = {t["id"]: t for t in await self.pb.list("tenants")}
        self.slugs = {tenant_id: t.get("slug") or "" for tenant_id, t in tenants.items()}
        await self.rows.load_all()
        users = await self.pb.list("nats_users", filter=f'name = "{self.identity.name}"')
        for row in users:
            self._remember(row)
        for tenant_id in [t for t, r in self.tenants.items() if t not in tenants
                          or not tenants[t].get("active") or r.slug != self.slugs[t]]:
            await self.tenants.pop(tenant_id).stop()
        for tenant_id in [t for t in self.creds if t not in tenants]:  # deleted meanwhile
            self._forget(tenant_id)
        limit = asyncio.Semaphore(16)

        async def ensure(tenant: dict[str, Any]) -> None:
            async with limit:
                await self._ensure_tenant(tenant)

        began = asyncio.get_running_loop().time()
        await asyncio.gather(*(ensure(t) for t in tenants.values()))
        self._changed(EVERY_TENANT)
        self.synced.set()
        log.info("full pass done", extra={
            "tenants_routed": len(self.tenants), "tenants_waiting": len(self._retry),
            "starts_seconds": round(asyncio.get_running_loop().time() - began, 3)})

    def _on_event(self, event: RealtimeEvent) -> None:
        task = asyncio.create_task(self._handle(event))
        task.add_done_callback(_log_failure)

    async def _handle(self, event: RealtimeEvent) -> None:
        async with self._handling:  # one at a time, in order: a row's edits never reorder
            await self._handle_one(event)

    async def _handle_one(self, event: RealtimeEvent) -> None:
        record, deleted = event.record, event.action == "delete"
        if event.collection == "rules":
            await self.rows.apply(record, deleted=deleted)
        elif event.collection == "nats_users" and record.get("name") == self.identity.name:
            if not deleted:  # a deleted row has nothing newer (nor a tenant, perhaps)
                self._remember(record)
            if not deleted and record.get("tenant") not in self.tenants:
                tenant = await self.pb.get("tenants", record["tenant"])
                await self._ensure_tenant(tenant)
        elif event.collection == "tenants":
            renamed = self._learn_slug(record, deleted)
            if deleted or not record.get("active") or renamed:
                router = self.tenants.pop(record["id"], None)
                if router is not None:
                    await router.stop()
                self._retry.pop(record["id"], None)
            if deleted:
                self._forget(record["id"])
            if renamed:
                await self.rows.load_all()  # its rows, validated under the new slug
            if not deleted and record.get("active"):
                await self._ensure_tenant(record)

    def _learn_slug(self, tenant: dict[str, Any], deleted: bool) -> bool:
        """Keep the slug map current; True when a known tenant's slug changed."""
        if deleted:
            self.slugs.pop(tenant["id"], None)
            return False
        old, self.slugs[tenant["id"]] = self.slugs.get(tenant["id"]), tenant.get("slug") or ""
        return old is not None and old != self.slugs[tenant["id"]]

    async def _slug(self, tenant_id: str) -> str | None:
        """A tenant's slug for validating its rows; asked of PocketBase when a row comes
        before its tenant (None when that fails: bare allow entries only)."""
        if tenant_id not in self.slugs:
            try:
                tenant = await self.pb.get("tenants", tenant_id)
            except PocketBaseError:
                return None
            self.slugs[tenant_id] = tenant.get("slug") or ""
        return self.slugs[tenant_id] or None

    def _remember(self, row: dict[str, Any]) -> None:
        found = self.identity.creds_for(row)
        if found is None:  # not signed for our key yet: the row's update brings it
            return
        tenant_id = row["tenant"]
        if tenant_id in self._gone:  # a late event of a deleted tenant's row
            return
        held = self.creds.get(tenant_id)
        if held is None:
            held = self.creds[tenant_id] = MemoryCredentials(
                refresh=lambda: self._reread_creds(tenant_id))
        held.set(*found)  # an older JWT (a listing behind an event) is ignored

    async def _reread_creds(self, tenant_id: str) -> None:
        """A renewal waited too long for our row's event: read the row itself."""
        for row in await self.pb.list("nats_users", filter=f'name = "{self.identity.name}" '
                                                           f'&& tenant = "{tenant_id}"'):
            self._remember(row)

    def _forget(self, tenant_id: str) -> None:
        """A deleted tenant: no credentials, no retry left of it (ids are never reused, so
        its late row events are ignored for good)."""
        self._gone.add(tenant_id)
        self.creds.pop(tenant_id, None)
        self._retry.pop(tenant_id, None)

    async def _ensure_tenant(self, tenant: dict[str, Any]) -> None:
        tenant_id = tenant["id"]
        if tenant_id in self.tenants or not tenant.get("active") or tenant_id not in self.creds:
            return
        router = TenantRouter(tenant.get("slug", tenant_id), self.nats_url,
                              self.creds[tenant_id], self.http, self._suspend,
                              user=self.identity.name, on_warn=self._warn)
        router.ruleset = self._ruleset(tenant_id)  # before the first message is taken
        self.tenants[tenant_id] = router
        try:
            await router.start()
        except Exception as exc:  # NATS unreachable or slow: `_retry_starts` tries again
            if self.tenants.get(tenant_id) is router:
                del self.tenants[tenant_id]
            with contextlib.suppress(Exception):
                await router.stop(grace=0.1)  # its own webhook client, if made
            START_FAILURES.inc()
            log.warning("tenant not started; trying again", extra={
                "tenant": tenant.get("slug"), "error": str(exc) or repr(exc),
                "retry_in": self._schedule_retry(tenant_id)})
            return
        self._retry.pop(tenant_id, None)
        log.info("routing tenant", extra={"tenant": router.slug})

    # -- tenants that did not start ------------------------------------------------------

    def _schedule_retry(self, tenant_id: str) -> float:
        """The next attempt for a tenant that did not start: RETRY_FIRST, doubling."""
        last = self._retry.get(tenant_id, (0.0, 0.0))[1]
        delay = min(last * 2, RETRY_MAX) if last else RETRY_FIRST
        self._retry[tenant_id] = (asyncio.get_running_loop().time() + delay, delay)
        self._retry_wake.set()
        return delay

    async def _retry_starts(self) -> None:
        """Supervise the tenants whose start failed: a resync (the only other retry)
        comes with a realtime reconnect, which keepalive pings make rare."""
        loop = asyncio.get_running_loop()
        while True:
            self._retry_wake.clear()
            due = min((at for at, _ in self._retry.values()), default=None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_wake.wait(),
                                       None if due is None else max(0.0, due - loop.time()))
            now = loop.time()
            limit = asyncio.Semaphore(16)  # each attempt may wait CONNECT_WAIT
            await asyncio.gather(*(self._retry_start(t, limit) for t, (at, _)
                                   in list(self._retry.items()) if at <= now))

    async def _retry_start(self, tenant_id: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            try:
                await self._retry_one(tenant_id)
            except Exception as exc:  # PocketBase away: later, with the backoff
                log.warning("tenant start not retried; trying again later", extra={
                    "tenant": self.slugs.get(tenant_id), "error": str(exc) or repr(exc),
                    "retry_in": self._schedule_retry(tenant_id)})

    async def _retry_one(self, tenant_id: str) -> None:
        if tenant_id in self.tenants or tenant_id not in self.creds:
            self._retry.pop(tenant_id, None)
            return
        try:
            tenant = await self.pb.get("tenants", tenant_id)  # as it is now
        except PocketBaseError as exc:
            if exc.status != 404:
                raise
            self._forget(tenant_id)
            return
        if not tenant.get("active"):
            self._retry.pop(tenant_id, None)  # its reactivation's event starts it
            return
        await self._ensure_tenant(tenant)

    # -- rule sets ---------------------------------------------------------------------

    def _warn(self, rule: Rule, message: str) -> None:
        """A tenant runtime's warning about a rule (hop limit) to where the rule came from."""
        if self.files is not None and self.files.warn(rule.source, message):
            return
        task = asyncio.create_task(self.rows.warn(rule.source, message))
        self.tasks.append(task)
        task.add_done_callback(_log_failure)
        task.add_done_callback(self.tasks.remove)  # a loop warns again every minute

    def _suspend(self, rule: Rule, reason: str) -> None:
        if self.files is not None and self.files.suspend(rule.source, reason):
            self._changed(EVERY_TENANT)
            return
        task = asyncio.create_task(self.rows.suspend(rule.source, reason))
        self.tasks.append(task)
        task.add_done_callback(_log_failure)

    def _changed(self, tenant_id: str) -> None:
        """Coalesce: many row changes in one tick rebuild each tenant's set once."""
        self._dirty.add(tenant_id)
        if not self._swap_pending:
            self._swap_pending = True
            asyncio.get_running_loop().call_soon(self._swap)

    def _swap(self) -> None:
        self._swap_pending = False
        dirty, self._dirty = self._dirty, set()
        targets = self.tenants if EVERY_TENANT in dirty else {
            t: r for t, r in self.tenants.items() if t in dirty}
        for tenant_id, router in targets.items():
            router.swap(self._ruleset(tenant_id))
        metrics.RULES_LOADED.set(sum(len(r.ruleset.rules) for r in self.tenants.values()))

    def _ruleset(self, tenant_id: str) -> RuleSet:
        by_source = self.rows.rules_for(tenant_id)
        if self.files is not None:
            by_source.update(self.files.good)
        return RuleSet.build(by_source)

    async def _watch_dir(self) -> None:
        assert self.files is not None
        while True:
            await asyncio.sleep(DIR_POLL)
            if await asyncio.to_thread(self.files.reload):
                self._changed(EVERY_TENANT)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("event handling failed", exc_info=task.exception())


def main_run(args: argparse.Namespace) -> int:
    logs.setup("router", args.log_level)
    env = os.environ
    data_dir = Path(env.get("CAIRN_DATA_DIR") or "./data").resolve()
    try:
        identity = RouterIdentity(IdentityFiles.from_env(env, data_dir))
    except (SidecarLoginError, NotPrivateError, NkeyError) as exc:
        print(f"error: {exc}")
        return 1
    pb_url = env.get("CAIRN_PB_URL") or f"http://127.0.0.1:{env.get('CAIRN_PB_PORT', '8090')}"
    nats_url = (env.get("CAIRN_NATS_URL")
                or f"nats://127.0.0.1:{env.get('CAIRN_NATS_PORT', '4222')}")
    try:  # one URL or a comma-separated list (a cluster): checked once, here
        nats_url = join_nats_urls(parse_nats_urls(nats_url))
    except NatsUrlError as exc:
        print(f"error: {exc}")
        return 2
    rules_dir = Path(args.rules_dir) if args.rules_dir else None
    if rules_dir is not None and not rules_dir.is_dir():
        print(f"error: --rules-dir {rules_dir} is not a directory")
        return 2
    port = args.metrics_port or int(env.get("CAIRN_ROUTER_METRICS_PORT") or 0)
    if port:
        start_http_server(port, addr="127.0.0.1")
    try:
        asyncio.run(_serve(Router(pb_url, nats_url, identity, rules_dir)))
    except PocketBaseError as exc:
        print(f"error: {exc}")
        return 1
    return 0


async def _serve(router: Router) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, router.stopping.set)
    try:
        await router.start()
        await router.stopping.wait()
    finally:
        await router.stop()
