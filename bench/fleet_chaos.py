"""Chaos drills under fleet load (issue 12): `python -m bench fleet-chaos [--agents N]
[--drills a,b,...] [--down S] [--stop-seconds S] [--timeout S] ...` (see --help).

A 3-node cluster with two bridges and two routers (bench/fleet_chaos_drills.py), N simulated
agents (bench/fleet_procs.py, the fleet simulator's) heartbeating and publishing telemetry,
then one drill after another, each a fault and its recovery (the table in
bench/fleet_chaos_drills.py). Measured from outside, for every drill:

- agents connected: their connections in the nodes' /connz (every 0.5 s), the lowest count
  and the seconds from the fault until all of them are there again;
- seconds from the fault until one broadcast ping is answered by every agent, and a
  broadcast ping's time once the fault is undone;
- telemetry publishes acknowledged and not acknowledged (the simulators' counters; a
  simulated agent does not retry, the real one does), and whether TELEMETRY holds every
  acknowledged one (its last sequence, read from the stream's leader after the counters);
- routing: a rule turns a probe message published every 0.5 s into an alert; every probe
  published while the fault lasted must come back as an alert, through either router;
- a revocation made during the fault (a probe device disabled; retried while PocketBase is
  down): once the fault is undone its key must be refused on every node while a device
  left alone is accepted on every node (bench/fleet_revoke.py's probes and check).

Every wait is bounded (--timeout); a drill that fails says why in its `error`/`failed`, the
fault is undone all the same, and the next drill starts once the stack is healthy again.
Progress goes to stderr, the JSON summary to stdout (exit 1 when a drill failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from bench.fleet_agents import LoadConfig, raise_fd_limit
from bench.fleet_chaos_config import ChaosConfig, parse
from bench.fleet_chaos_drills import DRILLS, Drill
from bench.fleet_chaos_probes import RouteProbe, Sampler
from bench.fleet_chaos_rig import Fleet, Monitor, Rig, start_rig, within
from bench.fleet_enroll import (
    bulk_rows,
    create_tenant,
    enroll_all,
    service_creds,
    set_auth_rate_limit,
)
from bench.fleet_measure import broadcast_ping
from bench.fleet_revoke import Probe, _still_accepted, enroll_probes
from bench.stack import machine, pids_by_role
from cairn_common.natsauth import connect_options, service_inbox
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.tasks import cancel_and_wait

RULE = ('subject: "agents.*.telemetry.chaos"\n'
        'actions:\n  - publish: "alerts.chaos"\n    payload: \'{"n": {n}}\'\n')
T0 = time.monotonic()
LEGEND = {  # what a drill's figures mean (seconds from the moment the fault is in place)
    "undone_s": "the fault undone: restarted and ready again, or SIGCONT",
    "target_agents": "agents connected to the node at the fault",
    "agents_lowest": "fewest agent connections any node listed (/connz every 0.5 s)",
    "connected_again_s": "every agent listed again for good (0: no sample saw fewer)",
    "ping_all_s": "one broadcast ping answered by every agent (attempts of --ping-timeout)",
    "ping_after_undo_s": "a broadcast ping's time once the fault is undone",
    "telemetry": "publishes acknowledged / not (simulator counters; they do not retry), "
                 "acknowledged but not in TELEMETRY since the start, heartbeats sent, "
                 "agent disconnects seen by the simulators",
    "routing": "probe messages acknowledged from the fault on, missing alerts after "
               "--timeout, first alert after the fault",
    "revocation": "probe disabled at the fault (accepted after, tries), its connection "
                  "closed after, refused on every node after the undo, nodes still taking "
                  "it, nodes taking a probe left alone",
}


def say(message: str) -> None:
    print(f"[fleet-chaos {time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Ctx:
    cfg: ChaosConfig
    rig: Rig
    admin: PocketBase
    tenant: dict[str, Any]
    fleet: Fleet
    nc: NATS
    inbox: str
    sampler: Sampler
    route: RouteProbe
    telemetry_leader: str = ""

    @property
    def account(self) -> str:
        return str(self.tenant["nats_account_public_key"])


async def _unhealthy(ctx: Ctx) -> str:
    """What is not back yet ('' when nothing): nodes, sidecars, TELEMETRY, agents."""
    rig = ctx.rig
    if nodes := await rig.monitor.unhealthy():
        return nodes
    if rig.private and (sidecars := await rig.sidecars_unready()):
        return sidecars
    state = await rig.monitor.stream(ctx.account, "TELEMETRY")
    if not state or not state["current"]:
        return f"TELEMETRY has no leader or a replica behind ({state})"
    ctx.telemetry_leader = state["leader"]
    agents = len(await rig.monitor.agents(ctx.account))
    return "" if agents >= ctx.fleet.size else f"{agents} of {ctx.fleet.size} agents connected"


async def _totals(ctx: Ctx) -> dict[str, int]:
    """The counters first, then the stream: what was acknowledged before is stored."""
    sims = await ctx.fleet.totals()
    state: dict[str, Any] | None = None

    async def read() -> bool:
        nonlocal state
        state = await ctx.rig.monitor.stream(ctx.account, "TELEMETRY")
        return state is not None
    await within(read, ctx.cfg.timeout, "TELEMETRY's leader answering")
    assert state is not None
    return {"acked": sims["telemetry"] + len(ctx.route.sent),
            "not_acked": sims["telemetry_failed"] + ctx.route.failed,
            "stored": state["last_seq"], "heartbeats": sims["heartbeats"],
            "disconnects": sims["disconnects"]}


async def _agents_back(ctx: Ctx, t0: float, window: float) -> dict[str, Any]:
    """Every agent's connection listed again, then one broadcast ping answered by all."""
    n, bound = ctx.fleet.size, ctx.cfg.timeout + window
    try:
        await ctx.sampler.until(lambda c: c >= n, t0, bound)
    except TimeoutError:
        raise TimeoutError(f"not every agent connected again within {bound:.0f} s") from None
    deadline, attempts = time.monotonic() + bound, 0
    while True:
        attempts += 1
        started = time.monotonic()
        ping = await broadcast_ping(ctx.nc, ctx.inbox, ctx.fleet.codes, ctx.cfg.ping_timeout)
        if ping["all_answered_s"] is not None:
            return {"ping_all_s": round(started + ping["all_answered_s"] - t0, 2),
                    "ping_attempts": attempts}
        if time.monotonic() > deadline:
            raise TimeoutError(f"no broadcast ping answered by all {n} agents within "
                               f"{bound:.0f} s (last: {ping['replies']})")


async def _revoke(ctx: Ctx, doomed: Probe, t0: float, bound: float) -> dict[str, Any]:
    """Disable the probe now, again and again while PocketBase does not answer."""
    was_open, tries = not doomed.closed.is_set(), 0
    deadline = time.monotonic() + bound
    while True:
        tries += 1
        try:
            await ctx.admin.update("devices", doomed.row_id, {"status": "disabled"})
            break
        except PocketBaseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
    accepted = time.monotonic()
    out: dict[str, Any] = {"disable_accepted_s": round(accepted - t0, 2), "disable_tries": tries}
    if was_open:  # closed by the kick, or by the fault when its node was the one
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(doomed.closed.wait(), bound)
            out["connection_closed_s"] = round(time.monotonic() - accepted, 2)
    return out


async def _refused_everywhere(ctx: Ctx, doomed: Probe, kept: Probe) -> dict[str, Any]:
    urls = ctx.rig.nats_urls
    last: tuple[list[bool], list[bool]] = ([], [])

    async def done() -> bool:
        nonlocal last
        last = (await asyncio.gather(*(_still_accepted(replace(doomed, servers=(u,)))
                                       for u in urls)),
                await asyncio.gather(*(_still_accepted(replace(kept, servers=(u,)))
                                       for u in urls)))
        return not any(last[0]) and all(last[1])
    try:
        took: float | None = round(await within(done, ctx.cfg.timeout, "refused"), 2)
    except TimeoutError:
        took = None
    return {"refused_on_every_node_s": took, "still_accepted_after": sum(last[0]),
            "control_accepted": sum(last[1]), "nodes": len(urls)}


async def run_drill(ctx: Ctx, drill: Drill) -> dict[str, Any]:
    cfg, rig = ctx.cfg, ctx.rig
    out: dict[str, Any] = {"drill": drill.name, "fault": drill.what}
    if (drill.private_only and not rig.private) or (
            drill.pause and not (rig.private or rig.foreign_nodes)):
        out["skipped"] = ("needs the private stack (it restarts what it kills)"
                          if drill.private_only else "needs --stack-pid (the nodes' pids)")
        return out
    why = "?"

    async def healthy() -> bool:
        nonlocal why
        why = await _unhealthy(ctx)
        return not why
    try:
        out["healthy_before_s"] = round(await within(healthy, cfg.timeout, "healthy"), 2)
        doomed, kept = await enroll_probes(ctx.admin, ctx.tenant, rig.pb_url, rig.nats_urls, 2)
        before = await _totals(ctx)
    except Exception as exc:  # the stack did not recover from the drill before
        out["failed"] = [f"not healthy {cfg.timeout:.0f} s before the drill: {why}" if why
                         else f"before the drill: {type(exc).__name__}: {exc}"]
        out["ok"] = False
        return out
    window = cfg.stop_seconds if drill.pause else cfg.down
    fig: dict[str, Any] = {}
    tasks: list[asyncio.Task[Any]] = []
    t0 = time.monotonic()
    try:
        async with drill.fault(ctx) as fig:
            t0 = time.monotonic()  # the fault is in place
            revoke = asyncio.create_task(_revoke(ctx, doomed, t0, cfg.timeout + window))
            back = asyncio.create_task(_agents_back(ctx, t0, window))
            tasks = [revoke, back]
            await asyncio.sleep(window)  # the fault's fixed duration
        undone = time.monotonic()
        out["undone_s"] = round(undone - t0, 2)
        out.update(await back)
        out.update(ctx.sampler.dip(t0, time.monotonic(), ctx.fleet.size))
        ping = await broadcast_ping(ctx.nc, ctx.inbox, ctx.fleet.codes, cfg.ping_timeout)
        out["ping_after_undo_s"] = ping["all_answered_s"]
        out["revocation"] = {**await revoke, **await _refused_everywhere(ctx, doomed, kept)}
        out["routing"] = await ctx.route.routed(t0, cfg.timeout)
    except Exception as exc:  # reported; the fault was undone on the way out
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        out.update({k: v for k, v in fig.items() if k not in out})
        await cancel_and_wait(tasks)
        for probe in (doomed, kept):
            with contextlib.suppress(Exception):
                await probe.nc.close()
    try:
        after = await _totals(ctx)
        out["telemetry"] = {"acked": after["acked"] - before["acked"],
                            "not_acked": after["not_acked"] - before["not_acked"],
                            "acked_not_stored_total": max(0, after["acked"] - after["stored"]),
                            "heartbeats": after["heartbeats"] - before["heartbeats"],
                            "agent_disconnects": after["disconnects"] - before["disconnects"]}
    except TimeoutError as exc:
        out.setdefault("error", f"after the drill: {exc}")
    out["drill_s"] = round(time.monotonic() - t0, 1)
    out["failed"] = _failed(out)
    out["ok"] = not out["failed"]
    return out


def _failed(out: dict[str, Any]) -> list[str]:
    if "error" in out:  # the steps after it did not run
        return [out["error"]]
    rev, route = out["revocation"], out["routing"]
    checks = [(out["ping_after_undo_s"] is None, "a broadcast ping after the undo went "
               "unanswered by some agent"),
              (rev["still_accepted_after"] != 0, "the disabled probe is still accepted"),
              (rev["control_accepted"] != rev["nodes"], "the control probe is refused"),
              (route["missing"] != 0, "probe messages never routed"),
              (out["telemetry"]["acked_not_stored_total"] > 0,
               "acknowledged telemetry missing from TELEMETRY")]
    return [why for bad, why in checks if bad]


async def _rig(cfg: ChaosConfig) -> Rig:
    if not cfg.pb_url:
        return await start_rig(cfg.setup_timeout)
    email = os.environ.get("CAIRN_ADMIN_EMAIL", "")
    password = os.environ.get("CAIRN_ADMIN_PASSWORD", "")
    if not (email and password and cfg.nats_urls):
        raise SystemExit("--pb-url needs --nats-url and CAIRN_ADMIN_EMAIL / "
                         "CAIRN_ADMIN_PASSWORD (the superuser) in the environment")
    monitors = cfg.monitor_urls or tuple(  # the launcher's default: client port + 4000
        f"http://127.0.0.1:{int(u.rsplit(':', 1)[1]) + 4000}" for u in cfg.nats_urls)
    rig = Rig(cfg.nats_urls, Monitor(monitors), cfg.pb_url, email, password,
              foreign_nodes=[pid for role, pid in pids_by_role(cfg.stack_pid)
                             if role == "nats-server"] if cfg.stack_pid else [])
    await rig.monitor.server_names()
    return rig


async def _setup(cfg: ChaosConfig, rig: Rig, summary: dict[str, Any], work: Path) -> Ctx:
    admin = PocketBase(rig.pb_url, timeout=60)
    await admin.auth_superuser(rig.email, rig.password)
    summary["rate_limiter_was"] = await set_auth_rate_limit(admin, False)  # restored after
    slug = f"chaos-{secrets.token_hex(3)}"
    tenant = await create_tenant(admin, slug, cfg.agents)
    tenant = await admin.get("tenants", tenant["id"])  # with its account's public key
    svc = f"chaos-bench-{secrets.token_hex(2)}"
    svc_jwt, svc_seed = await service_creds(admin, tenant, svc)
    bulk = await bulk_rows(admin, slug, "sim", cfg.agents, work / "devices.csv")
    enrolled, seconds = await enroll_all(
        rig.pb_url, slug, [(c.code, c.secret) for c in bulk.created],
        cfg.enroll_concurrency)
    (work / "devices.csv").unlink()  # the secrets are no longer needed
    summary["tenant"] = slug
    summary["enrollment"] = {"agents": len(enrolled), "seconds": round(seconds, 1)}
    fleet = Fleet(enrolled, cfg.processes, LoadConfig(
        servers=rig.nats_urls, heartbeat=cfg.heartbeat, telemetry=cfg.telemetry,
        connect_concurrency=cfg.connect_concurrency))
    t0 = time.monotonic()
    try:
        connected = await fleet.start(cfg.setup_timeout)
        summary["connect"] = {"connected": sum(c["connected"] for c in connected),
                              "failed": sum(c["failed"] for c in connected),
                              "seconds": round(time.monotonic() - t0, 1)}
        nc = await nats.connect(
            servers=list(rig.nats_urls), inbox_prefix=service_inbox(svc), connect_timeout=5,
            ping_interval=2, max_outstanding_pings=2, reconnect_time_wait=0.5,
            max_reconnect_attempts=-1, error_cb=_quiet,
            **connect_options(lambda: (svc_jwt, svc_seed)))
    except BaseException:
        await fleet.stop()
        raise
    ctx = Ctx(cfg, rig, admin, tenant, fleet, nc, service_inbox(svc),
              Sampler(rig.monitor, ""), RouteProbe(nc))
    ctx.sampler.account = ctx.account
    ctx.sampler.start()
    await admin.create("rules", {"tenant": tenant["id"], "name": "chaos-probe", "enabled": True,
                                 "yaml": RULE})
    await ctx.route.start()
    summary["rule_routing_s"] = round(await within(lambda: _any(ctx.route.seen), cfg.timeout,
                                                   "the routers firing the probe rule"), 1)
    return ctx


async def _quiet(exc: Exception) -> None:
    pass


async def _any(items: dict[int, float]) -> bool:
    return bool(items)


async def _teardown(ctx: Ctx, summary: dict[str, Any]) -> None:
    await cancel_and_wait([t for t in (ctx.sampler.task, ctx.route.task) if t is not None])
    with contextlib.suppress(Exception):
        await ctx.nc.close()
    await ctx.fleet.stop()
    with contextlib.suppress(PocketBaseError):
        await set_auth_rate_limit(ctx.admin, summary.get("rate_limiter_was"))
    await ctx.admin.close()


@contextlib.contextmanager
def _child_env(values: dict[str, str]) -> Any:
    """Set for the children this process starts (the bridges read CAIRN_NATS_REPLICAS)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def run(cfg: ChaosConfig) -> dict[str, Any]:
    _, hard = raise_fd_limit(cfg.agents + 500)
    if math.ceil(cfg.agents / cfg.processes) + 100 > hard:
        raise SystemExit(f"too many agents per process for the open-file limit ({hard}): "
                         "use more --processes")
    summary: dict[str, Any] = {"machine": machine(), "config": asdict(cfg), "legend": LEGEND,
                               "drills": {}}
    rig: Rig | None = None
    ctx: Ctx | None = None
    work = Path(tempfile.mkdtemp(prefix="cairn-chaos-work-"))  # 0700
    with _child_env({} if cfg.pb_url else {"CAIRN_NATS_REPLICAS": "3"}):
        try:
            say("starting the stack" if not cfg.pb_url else f"using the stack at {cfg.pb_url}")
            rig = await _rig(cfg)
            summary["stack"] = {"private": rig.private, "nats_urls": list(rig.nats_urls),
                                "bridges": len(rig.bridges), "routers": len(rig.routers)}
            say(f"enrolling and connecting {cfg.agents} agents")
            ctx = await _setup(cfg, rig, summary, work)
            for key in cfg.drills:
                drill = DRILLS[key]
                say(f"drill {key} ({drill.name}): {drill.what}")
                result = summary["drills"][key] = await run_drill(ctx, drill)
                say(f"drill {key}: " + ("skipped: " + result["skipped"] if "skipped" in result
                                        else "ok" if result.get("ok") else
                                        f"FAILED: {'; '.join(result.get('failed') or [])}"))
        finally:
            if ctx is not None:
                await _teardown(ctx, summary)
            if rig is not None:
                await rig.monitor.close()
                await asyncio.to_thread(rig.stop)
                if rig.root is not None and not cfg.keep_stack:
                    shutil.rmtree(rig.root, ignore_errors=True)
                elif rig.root is not None:
                    say(f"stack directory kept: {rig.root}")
            shutil.rmtree(work, ignore_errors=True)
    summary["ok"] = all(d.get("ok", "skipped" in d) for d in summary["drills"].values())
    return summary


def main(argv: list[str] | None = None) -> None:
    try:
        summary = asyncio.run(run(parse(argv)))
    except KeyboardInterrupt:  # every process this run started is stopped by then
        say("interrupted")
        sys.exit(130)
    print(json.dumps(summary, indent=2), flush=True)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
