"""The processes `python -m bench fleet-chaos` kills: the private stack (what
`CAIRN_NATS_NODES=3 make run` runs, with a second bridge and a second router: three
nats-server nodes, PocketBase, two `cairn-bridge run` and two `rule_router run`
processes, each with its own /metrics port), its simulators, and the monitor that reads
the nodes' /connz and /jsz. The drills themselves are in bench/fleet_chaos_drills.py.
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
from collections.abc import Callable
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
from cairn_stack.cluster import NatsNode, start_cluster, start_node
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
