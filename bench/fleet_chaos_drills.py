"""The drills of `python -m bench fleet-chaos` (a table, one function each; the processes
they kill are in bench/fleet_chaos_rig.py): a fault is a context manager that injects it,
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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from bench.bridges import BridgeProcess
from bench.fleet_chaos_rig import ROUTER_READY, within
from cairn_stack.cluster import leaders
from cairn_stack.pocketbase import start_pocketbase


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
