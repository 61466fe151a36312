"""Helpers for router tests against real servers: rules rows in PocketBase, subscribers
that keep what they see, and a tiny HTTP server on 127.0.0.1 that webhooks can be aimed
at (respx patches httpx's pool, so it cannot show what reaches a socket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from cairn_common.pocketbase import PocketBase
from rule_router.app import Router
from rule_router.identity import RouterIdentity
from tests.live import ROLLOUT_WAIT, account_ready, connect, eventually, new_tenant, uid


async def service_creds(admin: PocketBase, tenant: dict[str, Any],
                        name: str = "cairn-bridge") -> dict[str, Any]:
    return await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "{name}" && jwt != ""'),
        ROLLOUT_WAIT, f"{name}'s JWT in {tenant['slug']}")


async def start_router(pb_env: Any, nats_env: Any, admin: PocketBase,
                       tenants: list[dict[str, Any]], identity: RouterIdentity,
                       **kwargs: Any) -> Router:
    """A started Router (kwargs: Router's) once it follows every tenant in `tenants`."""
    for tenant in tenants:
        await service_creds(admin, tenant, identity.name)
    router = Router(pb_env.url, nats_env.url, identity, **kwargs)
    await router.start()
    for tenant in tenants:
        await eventually(lambda t=tenant: _routing(router, t["id"]), 30, "router follows")
    # its rows are validated once its first pass has started every tenant of the session
    await asyncio.wait_for(router.synced.wait(), ROLLOUT_WAIT)
    return router


@asynccontextmanager
async def routed_tenants(admin: PocketBase, pb_env: Any, nats_env: Any,
                         identity: RouterIdentity, count: int = 1, **fields: Any,
                         ) -> AsyncIterator[tuple[list[dict[str, Any]], list[Any], Router]]:
    """`count` fresh tenants (`fields`: more of their columns, e.g. limits), a router
    following them, and a `cairn-bridge` connection into each (to publish telemetry and
    watch alerts); all closed afterwards."""
    tenants = [await account_ready(admin, await new_tenant(admin, **fields))
               for _ in range(count)]
    router = await start_router(pb_env, nats_env, admin, tenants, identity)
    links = []
    try:
        for tenant in tenants:
            svc = await service_creds(admin, tenant)
            links.append(await connect(nats_env.url, svc["jwt"], svc["seed"]))
        yield tenants, links, router
    finally:
        for nc in links:
            await nc.close()
        await router.stop()


@asynccontextmanager
async def router_pair(admin: PocketBase, pb_env: Any, nats_env: Any, identity: RouterIdentity,
                      ) -> AsyncIterator[tuple[dict[str, Any], Any, list[Router]]]:
    """A fresh tenant followed by two routers of one identity (SPEC §12: they share its
    durable consumer and core queue groups), and a `cairn-bridge` connection into it. A
    router the test stopped itself (`stopped`) is not stopped again."""
    tenant = await account_ready(admin, await new_tenant(admin))
    routers: list[Router] = []
    nc = None
    try:
        for _ in range(2):
            routers.append(await start_router(pb_env, nats_env, admin, [tenant], identity))
        svc = await service_creds(admin, tenant)
        nc = await connect(nats_env.url, svc["jwt"], svc["seed"])
        yield tenant, nc, routers
    finally:
        if nc is not None:
            await nc.close()
        for router in routers:
            if not getattr(router, "stopped", False):
                await router.stop()


async def rules_loaded(routers: list[Router], tenant: dict[str, Any], subject: str,
                       count: int = 1) -> None:
    """Return once every router has `count` rules for `subject` in this tenant's set."""
    async def loaded() -> bool:
        for router in routers:
            runtime = router.tenants.get(tenant["id"])
            if runtime is None or len(runtime.ruleset.index.match(subject)) < count:
                return False
        return True
    await eventually(loaded, 10, f"{count} rules for {subject} on every router")


async def _routing(router: Router, tenant_id: str) -> bool:
    return tenant_id in router.tenants


async def listening(router: Router, tenant: dict[str, Any], subject: str) -> None:
    """Return once the router's tenant connection is subscribed to the rule filter
    `subject` at the server (a row turns valid a moment before its subscription exists)."""
    async def subscribed() -> bool:
        runtime = router.tenants.get(tenant["id"])
        return runtime is not None and subject in runtime.core_subs
    await eventually(subscribed, 10, f"router subscribed to {subject}")
    await router.tenants[tenant["id"]].nc.flush()  # the server has the SUB


async def add_rule(admin: PocketBase, tenant: dict[str, Any], text: str,
                   enabled: bool = True) -> dict[str, Any]:
    return await admin.create("rules", {"tenant": tenant["id"], "name": uid("rule"),
                                        "enabled": enabled, "yaml": text})


async def row_with_status(admin: PocketBase, row_id: str, status: str,
                          timeout: float = 20) -> dict[str, Any]:
    """(20 s: the router validates within a second here, but on a loaded 2-core CI box
    its start-up over every tenant of the session can take longer)"""
    async def check() -> dict[str, Any] | None:
        row = await admin.get("rules", row_id)
        return row if row["status"] == status else None
    return await eventually(check, timeout, f"rule {row_id} {status}")


async def collect(nc: Any, subject: str) -> list[Any]:
    """Messages (nats-py Msg, headers included) seen on `subject` from now on."""
    got: list[Any] = []

    async def cb(msg: Any) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    return got


async def at_least(bucket: list[Any], n: int) -> bool:
    return len(bucket) >= n


# ------------------------------------------------------------- JetStream, as the bridge

ALERTS = "ALERTS"


async def alerts_stream(nc: Any, wait: float = 3.0) -> Any:
    """The tenant's ALERTS stream info (`nc`: its `cairn-bridge` connection). A bridge
    that makes ALERTS does so right after the account: wait for it a moment; a bridge
    that does not gets one made here, like the bridge's own (alerts.>, bounded)."""
    js = nc.jetstream(timeout=5)
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await js.stream_info(ALERTS)
        except NotFoundError:
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.1)
    try:
        await js.add_stream(StreamConfig(
            name=ALERTS, subjects=["alerts.>"], storage=StorageType.FILE,
            max_bytes=8 * 1024 * 1024, max_msg_size=1024 * 1024, max_age=3600.0,
            discard=DiscardPolicy.OLD, duplicate_window=120.0, allow_direct=True))
    except BadRequestError:  # the bridge made it in the meantime
        pass
    return await js.stream_info(ALERTS)


async def no_alerts_stream(nc: Any) -> None:
    """Make sure the tenant has no ALERTS stream (what an older bridge leaves)."""
    js = nc.jetstream(timeout=5)
    try:
        await js.delete_stream(ALERTS)
    except NotFoundError:
        pass


async def stored_alerts(nc: Any, subject: str = "alerts.>") -> list[Any]:
    """Every message ALERTS holds on `subject` (an ordered consumer: reads, leaves none)."""
    js = nc.jetstream(timeout=5)
    info = await js.stream_info(ALERTS, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    if not total:
        return []
    sub = await js.subscribe(subject, stream=ALERTS, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    got = []
    try:
        while len(got) < total:
            got.append(await sub.next_msg(timeout=5))
    finally:
        await sub.unsubscribe()
    return got


async def telemetry_consumer(nc: Any, durable: str = "cairn-router") -> Any:
    """The router's durable consumer on TELEMETRY, as the server sees it."""
    return await nc.jetstream(timeout=5).consumer_info("TELEMETRY", durable)


def sample(metric: Any, *labels: str) -> float:
    """A prometheus counter's current value (of the child with `labels`, if any)."""
    child = metric.labels(*labels) if labels else metric
    return float(child._value.get())


# ------------------------------------------------------------------- a tiny HTTP server

Reply = Callable[["Request", asyncio.StreamWriter], Any]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpSink:
    """Records every request it gets; answers with `reply` (default: 200, empty)."""

    reply: Reply | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> HttpSink:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip()
                       for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            if self.reply is None:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            else:
                await self.reply(request, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def respond(status: int, body: bytes = b"", extra: str = "") -> Reply:
    async def reply(_request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}"
                     "connection: close\r\n\r\n".encode() + body)
    return reply


def hang(release: asyncio.Event) -> Reply:
    """Never answer (until `release` is set, at the end of the test)."""
    async def reply(_request: Request, _writer: asyncio.StreamWriter) -> None:
        await release.wait()
    return reply


def drip(release: asyncio.Event, every: float = 0.05) -> Reply:
    """Headers at once, then one byte of a long body per `every` seconds."""
    async def reply(_request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 X\r\ncontent-length: 100000\r\n\r\n")
        while not release.is_set():
            writer.write(b"x")
            await writer.drain()
            try:
                await asyncio.wait_for(release.wait(), every)
            except TimeoutError:
                continue
    return reply
