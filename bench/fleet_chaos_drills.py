"""The processes `python -m bench fleet-chaos` kills (the stack's and the simulators'), and
its drills (a table, one function each): a fault is a context manager that injects it,
yields its own figures while the fault lasts, and undoes it (restart, SIGCONT) on the way
out, bounded, whatever happened.

The private stack is what `CAIRN_NATS_NODES=3 make run` runs, with a second bridge and a
second router: three nats-server nodes (cairn_stack/cluster.py), PocketBase, two
`cairn-bridge run` and two `rule_router run` processes (bench/bridges.py), each with its
own /metrics port. An existing stack (`--pb-url`) is the launcher's, which stops the whole
stack when PocketBase or a sidecar dies and never starts a node again: there, only the
drills that restart nothing of the launcher's run (node-stop with --stack-pid, simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.bridges import BridgeProcess
from bench.cluster import until
from bench.fleet_agents import LoadConfig
from bench.fleet_enroll import Enrolled
from bench.fleet_procs import Simulators
from cairn_common.filemodes import write_private
from cairn_common.layout import DataLayout
from cairn_common.nats_urls import join_nats_urls
from cairn_common.pocketbase import PocketBase
from cairn_stack.cluster import NatsNode, leaders, start_cluster, start_node
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import ManagedProcess, free_port
from cairn_stack.sidecars import ROUTER_NAME, router_login_file
from cairn_stack.sidecars import _start as start_sidecar
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.sidecar_logins import ensure_sidecar_login
from rule_router.identity import load_or_create_seed

SIM_PREFIX = "cairn-sim/"  # connection names of the simulated agents (bench/fleet_agents.py)
ROUTER_READY = "cairn_router_pocketbase_connected"


class RouterProcess(BridgeProcess):
    """A `rule_router run` child, started and awaited by the launcher's own helper (its own
    name, log and /metrics port), with BridgeProcess's metric helpers."""

    def __init__(self, port: int, proc: ManagedProcess) -> None:  # (the parent's starts one)
        self.port, self.proc = port, proc


async def start_router(name: str, layout: DataLayout, pb_url: str, nats_url: str,
                       timeout: float) -> RouterProcess:
    env = {"CAIRN_DATA_DIR": str(layout.root), "CAIRN_PB_URL": pb_url,
           "CAIRN_NATS_URL": nats_url,
           "CAIRN_ROUTER_LOGIN_FILE": str(router_login_file(layout)),
           "CAIRN_ROUTER_SEED_FILE": str(layout.secrets_dir / "router.nk")}
    port = free_port()
    return RouterProcess(port, await asyncio.to_thread(
        start_sidecar, name, "rule_router", port, ROUTER_READY, layout, env, timeout))


class Monitor:
    """What the nodes' monitoring ports say (every request bounded by `timeout`)."""

    def __init__(self, urls: tuple[str, ...], timeout: float = 3.0) -> None:
        self.urls = urls
        self.http = httpx.AsyncClient(timeout=timeout)
        self.names: dict[str, str] = {}  # monitoring URL -> server name

    async def _get(self, url: str, path: str) -> dict[str, Any] | None:
        try:
            resp = await self.http.get(url + path)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def _all(self, path: str) -> list[tuple[str, dict[str, Any] | None]]:
        bodies = await asyncio.gather(*(self._get(u, path) for u in self.urls))
        return list(zip(self.urls, bodies, strict=True))

    async def unhealthy(self) -> str:
        """'' when every node answers /healthz and they agree on one JetStream meta leader;
        else which do not."""
        down = [url for url, body in await self._all("/healthz") if body is None]
        if down:
            return f"not healthy: {', '.join(self.names.get(u, u) for u in down)}"
        jsz = await self._all("/jsz")
        found = {str(((b or {}).get("meta_cluster") or {}).get("leader") or "") for _, b in jsz}
        return "" if len(found) == 1 and "" not in found else f"meta leaders seen: {found}"

    async def healthy(self) -> bool:
        return not await self.unhealthy()

    async def server_names(self) -> None:
        for url, body in await self._all("/varz"):
            if body is not None:
                self.names[url] = str(body.get("server_name") or "")

    async def _agents(self, account: str) -> list[list[str]]:
        pages = await asyncio.gather(*(self._connz(u, account) for u in self.urls))
        return [[name for name in page if name.startswith(SIM_PREFIX)] for page in pages]

    async def agents(self, account: str) -> set[str]:
        """Names of the simulated agents' connections, over every node that answers."""
        return {name for page in await self._agents(account) for name in page}

    async def agents_by_node(self, account: str) -> dict[str, int]:
        return {self.names.get(url, url): len(page) for url, page in
                zip(self.urls, await self._agents(account), strict=True)}

    async def _connz(self, url: str, account: str, limit: int = 1024) -> list[str]:
        names: list[str] = []
        while True:
            body = await self._get(url, f"/connz?acc={account}&limit={limit}&"
                                   f"offset={len(names)}")
            page = [str(c.get("name", "")) for c in (body or {}).get("connections") or []]
            names += page
            if not page or len(names) >= int((body or {}).get("total") or 0):
                return names

    async def stream(self, account: str, stream: str) -> dict[str, Any] | None:
        """The stream as its leader reports it: leader, last_seq, replicas all current
        (None while no node that answers leads it)."""
        for url, body in await self._all(f"/jsz?acc={account}&streams=true"):
            for acc in (body or {}).get("account_details") or []:
                for s in acc.get("stream_detail") or [] if acc.get("id") == account else []:
                    cluster = s.get("cluster") or {}
                    if s.get("name") == stream and cluster.get("leader") == self.names.get(url):
                        return {"leader": cluster["leader"],
                                "last_seq": int((s.get("state") or {}).get("last_seq") or 0),
                                "current": all(r.get("current") for r in
                                               cluster.get("replicas") or [])}
        return None

    async def close(self) -> None:
        await self.http.aclose()


class Fleet:
    """The simulated agents, one Simulators (one process) per slice, so that one process can
    be killed -9 and started again with the same agents."""

    def __init__(self, enrolled: list[Enrolled], processes: int, load: LoadConfig) -> None:
        self.parts = [enrolled[i::processes] for i in range(max(1, processes))]
        self.load = load
        self.groups = [Simulators(p, 1, load) for p in self.parts]
        self.retired: list[dict[str, Any]] = []  # last counters of killed processes
        self.codes = [e.code for e in enrolled]

    @property
    def size(self) -> int:
        return len(self.codes)

    async def start(self, timeout: float) -> list[dict[str, Any]]:
        for group in self.groups:
            await group.start()
        return [await group.wait_connected(timeout) for group in self.groups]

    async def kill(self, index: int) -> int:
        group = self.groups[index]
        self.retired += await group.stats()
        child = group.children[0]
        child.proc.kill()
        await child.proc.wait()
        return child.agents

    async def restart(self, index: int, timeout: float) -> float:
        t0 = time.monotonic()
        await self.groups[index].stop()  # the dead one's reader and pipes
        self.groups[index] = group = Simulators(self.parts[index], 1, self.load)
        await group.start()
        await group.wait_connected(timeout)
        return time.monotonic() - t0

    async def totals(self) -> dict[str, int]:
        stats = [s for g in self.groups for s in await g.stats()] + self.retired
        return {k: sum(int(s.get(k) or 0) for s in stats)
                for k in ("telemetry", "telemetry_failed", "heartbeats", "disconnects")}

    async def stop(self) -> None:
        for group in self.groups:
            await group.stop()


@dataclass
class Rig:
    """The stack's processes, or (reuse) the pids of an existing stack's nodes."""

    nats_urls: tuple[str, ...]
    monitor: Monitor
    pb_url: str
    email: str
    password: str
    root: Path | None = None  # a private stack's directory
    specs: list[NatsNode] = field(default_factory=list)
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    pb: ManagedProcess | None = None
    bridges: list[BridgeProcess] = field(default_factory=list)
    routers: list[RouterProcess] = field(default_factory=list)
    foreign_nodes: list[int] = field(default_factory=list)  # pids (--stack-pid)
    paused: set[int] = field(default_factory=set)

    @property
    def private(self) -> bool:
        return self.root is not None

    @property
    def layout(self) -> DataLayout:
        assert self.root is not None
        return DataLayout(self.root)

    def sidecars(self) -> list[BridgeProcess]:
        return [*self.bridges, *self.routers]

    async def restart_node(self, name: str) -> float:
        spec = next(s for s in self.specs if s.name == name)
        t0 = time.monotonic()
        self.nodes[name] = await asyncio.to_thread(start_node, self.layout, spec, self.specs)
        return round(time.monotonic() - t0, 2)

    async def sidecars_unready(self) -> str:
        """'' when one bridge leads and follows PocketBase's events, the other stands by and
        every router follows PocketBase; else what each says (-1: not answering)."""
        async def value(proc: BridgeProcess, name: str) -> float:
            return await asyncio.to_thread(proc.value, name)
        leading = [await value(b, "cairn_bridge_leader") for b in self.bridges]
        following = [await value(b, "cairn_bridge_pocketbase_connected") for b in self.bridges]
        routers = [await value(r, ROUTER_READY) for r in self.routers]
        ok = sorted(leading) == [0.0, 1.0] and following[leading.index(1.0)] == 1 and all(
            v == 1 for v in routers)
        return "" if ok else ", ".join(
            [f"{b.proc.name}{'' if b.proc.running else ' (exited)'} leader={v:g} "
             f"pocketbase={f:g}" for b, v, f in zip(self.bridges, leading, following,
                                                     strict=True)]
            + [f"{r.proc.name}{'' if r.proc.running else ' (exited)'} pocketbase={v:g}"
               for r, v in zip(self.routers, routers, strict=True)])

    async def sidecars_ready(self) -> bool:
        return not await self.sidecars_unready()

    def pause(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.paused.add(pid)

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)

    def stop(self) -> None:
        for pid in list(self.paused):
            with contextlib.suppress(OSError):
                self.resume(pid)
        for proc in [*(s.proc for s in self.sidecars()), self.pb, *self.nodes.values()]:
            if proc is not None:
                proc.stop()


async def start_rig(timeout: float) -> Rig:
    """The private stack, every process up and the sidecars settled (one bridge leads)."""
    root = Path(tempfile.mkdtemp(prefix="cairn-chaos-"))
    layout = DataLayout(root)
    await asyncio.to_thread(bootstrap, layout)
    specs = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(),
                      layout.nats_dir / "nodes" / f"n{i + 1}") for i in range(3)]
    rig = Rig(tuple(s.url for s in specs), Monitor(tuple(s.monitor_url for s in specs)),
              "", "chaos@cairn.local", secrets.token_urlsafe(16), root, specs)
    try:
        procs = await asyncio.to_thread(start_cluster, layout, specs)
        rig.nodes = dict(zip([s.name for s in specs], procs, strict=True))
        await rig.monitor.server_names()
        await asyncio.to_thread(upsert_superuser, layout, rig.email, rig.password)
        port = free_port()
        rig.pb, rig.pb_url = await asyncio.to_thread(start_pocketbase, layout, port), \
            f"http://127.0.0.1:{port}"
        login = layout.secrets_dir / "chaos-login.json"
        write_private(login, json.dumps({"email": rig.email, "password": rig.password}))
        async with PocketBase(rig.pb_url) as pb:
            await pb.auth_superuser(rig.email, rig.password)
            await ensure_sidecar_login(pb, ROUTER_NAME, "router", router_login_file(layout))
        load_or_create_seed(layout.secrets_dir / "router.nk")  # once, before two routers
        urls = join_nats_urls(rig.nats_urls)
        rig.bridges = [BridgeProcess(f"bridge-{i}", layout, rig.pb_url, urls, login)
                       for i in (1, 2)]
        rig.routers = [await start_router(f"router-{i}", layout, rig.pb_url, urls, timeout)
                       for i in (1, 2)]
        await within(rig.sidecars_ready, timeout, "one bridge leading, routers following")
    except BaseException:
        rig.stop()
        raise
    return rig


async def within(check: Callable[[], Any], timeout: float, what: str) -> float:
    """bench/cluster.py's `until` (every 0.1 s), failing with TimeoutError naming `what`."""
    try:
        return await until(check, timeout, 0.1)
    except AssertionError:
        raise TimeoutError(f"{what}: not within {timeout:.0f} s") from None


@dataclass(frozen=True)
class Drill:
    name: str
    what: str
    fault: Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]
    pause: bool = False  # the fault lasts --stop-seconds (else --down)
    private_only: bool = True  # restarts a process only a private stack can


async def _busy_node(ctx: Any, spare_leaders: bool) -> tuple[str, int]:
    """The node with the most agents (they stay on the node they failed over to), and its
    agents: with `spare_leaders` among those leading neither JetStream's meta group nor
    TELEMETRY; a leader (a KV bucket's too) only on a tie otherwise."""
    meta, *kv = await asyncio.to_thread(leaders, ctx.rig.specs[0])
    load = await ctx.rig.monitor.agents_by_node(ctx.account)
    names = [s.name for s in ctx.rig.specs]
    pick = [n for n in names if not spare_leaders or n not in (meta, ctx.telemetry_leader)]
    name = max(pick or [n for n in names if n != meta], key=lambda n: (
        load.get(n, 0), n != meta, n != ctx.telemetry_leader, n not in kv))
    return name, load.get(name, 0)


@contextlib.asynccontextmanager
async def _node_down(ctx: Any, name: str, fig: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    ctx.rig.nodes[name].kill()
    try:
        yield fig
    finally:
        fig["restart_s"] = await ctx.rig.restart_node(name)


@contextlib.asynccontextmanager
async def node_kill(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    name, agents = await _busy_node(ctx, spare_leaders=True)
    async with _node_down(ctx, name, {"target": name, "target_agents": agents}) as fig:
        yield fig


@contextlib.asynccontextmanager
async def stream_leader_kill(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    name = ctx.telemetry_leader
    agents = (await ctx.rig.monitor.agents_by_node(ctx.account)).get(name, 0)
    async with _node_down(ctx, name, {"target": name, "target_agents": agents}) as fig:
        async def elected() -> bool:
            state = await ctx.rig.monitor.stream(ctx.account, "TELEMETRY")
            return bool(state and state["leader"] != name)
        elect = asyncio.create_task(within(elected, ctx.cfg.timeout, "a new TELEMETRY leader"))
        try:
            yield fig
        finally:
            fig["new_stream_leader_s"] = round(await elect, 2)


@contextlib.asynccontextmanager
async def node_stop(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    rig = ctx.rig
    fig: dict[str, Any] = {}
    if rig.private:
        name, fig["target_agents"] = await _busy_node(ctx, spare_leaders=False)
        proc = rig.nodes[name].proc
        assert proc is not None
        pid = proc.pid
    else:
        name, pid = f"pid {rig.foreign_nodes[-1]}", rig.foreign_nodes[-1]
    rig.pause(pid)
    fig["target"] = name
    try:
        yield fig
    finally:
        rig.resume(pid)
        fig["healthy_after_sigcont_s"] = round(await within(
            rig.monitor.healthy, ctx.cfg.timeout, "every node healthy after SIGCONT"), 2)


@contextlib.asynccontextmanager
async def pocketbase_kill(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    rig = ctx.rig
    rig.pb.kill()
    fig: dict[str, Any] = {"target": "pocketbase"}
    try:
        yield fig
    finally:
        t0 = time.monotonic()
        port = int(rig.pb_url.rsplit(":", 1)[1])
        rig.pb = await asyncio.to_thread(start_pocketbase, rig.layout, port)
        fig["restart_s"] = round(time.monotonic() - t0, 2)
        fig["sidecars_follow_again_s"] = round(await within(
            rig.sidecars_ready, ctx.cfg.timeout, "the sidecars following PocketBase again")
            + fig["restart_s"], 2)


@contextlib.asynccontextmanager
async def bridge_kill(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    values = [await asyncio.to_thread(b.value, "cairn_bridge_leader") for b in ctx.rig.bridges]
    leader = ctx.rig.bridges[values.index(1.0)]
    standby = next(b for b in ctx.rig.bridges if b is not leader)
    leader.proc.kill()
    fig: dict[str, Any] = {"target": leader.proc.name}
    takeover = asyncio.create_task(standby.until("cairn_bridge_leader", 1, ctx.cfg.timeout))
    try:
        yield fig
    finally:
        try:
            fig["takeover_s"] = round(await takeover, 2)
        finally:  # the killed one again, as the standby
            fig["restart_s"] = await _again(leader, "cairn_bridge_leader", 0, ctx.cfg.timeout)


@contextlib.asynccontextmanager
async def router_kill(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    router = ctx.rig.routers[0]
    router.proc.kill()
    fig: dict[str, Any] = {"target": router.proc.name}
    try:
        yield fig
    finally:
        fig["restart_s"] = await _again(router, ROUTER_READY, 1, ctx.cfg.timeout)


async def _again(sidecar: BridgeProcess, metric: str, wanted: float, timeout: float) -> float:
    """Start a killed sidecar again (same port, log); seconds until `metric` is `wanted`."""
    sidecar.proc.start()
    return round(await sidecar.until(metric, wanted, timeout), 2)


@contextlib.asynccontextmanager
async def simulator_kill(ctx: Any) -> AsyncIterator[dict[str, Any]]:
    index = len(ctx.fleet.groups) - 1
    fig: dict[str, Any] = {"target": f"simulator-{index}",
                           "agents": await ctx.fleet.kill(index)}
    try:
        yield fig
    finally:
        fig["restart_s"] = round(await ctx.fleet.restart(index, ctx.cfg.timeout), 2)


DRILLS: dict[str, Drill] = {
    "a": Drill("node", "kill -9 the NATS node with the most agents of those that lead "
               "neither JetStream's meta group nor TELEMETRY; start it again after --down s",
               node_kill),
    "b": Drill("stream-leader", "kill -9 the node leading the fleet tenant's TELEMETRY "
               "stream; start it again after --down s (and a new leader)",
               stream_leader_kill),
    "c": Drill("node-stop", "SIGSTOP the node with the most agents (a leader only on a tie) "
               "for --stop-seconds, then SIGCONT",
               node_stop, pause=True, private_only=False),
    "d": Drill("pocketbase", "kill -9 PocketBase; start it again after --down s",
               pocketbase_kill),
    "e": Drill("bridge", "kill -9 the leading bridge (the other takes over); start it again "
               "after the takeover and --down s, as the standby", bridge_kill),
    "f": Drill("router", "kill -9 one of the two routers; start it again after --down s",
               router_kill),
    "g": Drill("simulator", "kill -9 one simulator process (its agents vanish); start it "
               "again with the same agents after --down s",
               simulator_kill, private_only=False),
}
