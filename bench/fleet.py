"""Fleet simulator (issue 12): N simulated agents against a real stack, with a JSON summary.

`python -m bench fleet --agents N [--processes K] [--heartbeat S] [--telemetry S]
[--duration S] [--nats-url URL,URL] [--pb-url URL] ...` (see --help).

Phases, each measured: device rows through the bulk path (`cairn-bridge devices-bulk`'s
module), enrollment of every device through PocketBase and the bridge (its own nkey, the
bridge-signed JWT, the agent's own `register_key`), connect of K simulator processes
(bench/fleet_worker.py), one single ping's latency (baseline), one broadcast ping (a request
to every agent, replies counted), then a steady window with heartbeats and telemetry at the
given rates: CPU of the bridge and PocketBase (against a window at rest before any agent
existed), RSS of every process, and PocketBase password logins counted from its own request
log (positive control: the enrollment window must show one per agent).

PocketBase's auth rate limiter is switched off during enrollment and restored afterwards:
every simulated agent logs in from 127.0.0.1, where a real fleet comes from many addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import nats

from bench.fleet_agents import LoadConfig, raise_fd_limit
from bench.fleet_enroll import (
    bulk_rows,
    count_password_logins,
    create_tenant,
    enroll_all,
    service_creds,
    set_auth_rate_limit,
)
from bench.fleet_measure import (
    broadcast_ping,
    command_check,
    cpu_percent,
    cpu_seconds,
    rss_mb,
    single_latency,
    wildcard_ping,
)
from bench.fleet_procs import Simulators
from bench.fleet_revoke import enroll_probes, revocation_latency, time_burst, time_revocations
from bench.stack import machine, pids_by_role, start
from cairn_common.natsauth import connect_options, service_inbox
from cairn_common.pocketbase import PocketBase, pb_date

PER_PROCESS = 5000  # agents per simulator process by default (2 cores: leave CPU to others)
ROLE_NAMES = {"nats-server": "nats", "pocketbase": "pocketbase", "pb_hooks_bridge": "bridge"}


@dataclass(frozen=True)
class FleetConfig:
    agents: int
    processes: int = 0  # 0 = one per PER_PROCESS agents
    heartbeat: float = 60.0
    telemetry: float = 300.0
    duration: float = 120.0  # steady window
    rest: float = 20.0  # window at rest (before any agent) for the CPU baseline
    settle: float = 10.0  # after the broadcast, before the steady window
    nats_urls: tuple[str, ...] = ()
    pb_url: str = ""  # empty: start a private stack (bench/stack.py)
    stack_pid: int = 0  # an existing stack's launcher pid, to find its processes
    enroll_concurrency: int = 32
    connect_concurrency: int = 200
    keep_stack: bool = False  # keep a private stack's directory (logs) after the run
    revocations: int = 20  # disables timed at rest and under load (0: none)
    burst: int = 10  # devices disabled at once, at rest and under load (0: none)
    # also time `revocations` disables of devices in a small tenant of their own, while the
    # fleet's tenant holds the N agents (an MSP's shape: many tenants, each a few hundred)
    neighbour: bool = True

    @property
    def process_count(self) -> int:
        return self.processes or max(1, math.ceil(self.agents / PER_PROCESS))


@dataclass
class Target:
    pb_url: str
    nats_urls: tuple[str, ...]
    email: str
    password: str
    pids: dict[str, int]
    bridge_metrics_port: int = 0  # 0: the bridge's counters are not read


def _pids(pairs: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for role, pid in pairs:
        name = ROLE_NAMES.get(role)
        if name == "nats":
            out[f"nats-{pid}"] = pid  # one per node
        elif name is not None:
            out[name] = pid
    return out


async def _phases(cfg: FleetConfig, target: Target, summary: dict[str, Any]) -> None:
    admin = PocketBase(target.pb_url, timeout=120)
    await admin.auth_superuser(target.email, target.password)
    sims: Simulators | None = None
    limiter: bool | None = None
    tmp = Path(tempfile.mkdtemp(prefix="cairn-fleet-"))  # 0700
    try:
        slug = f"fleet-{secrets.token_hex(3)}"
        tenant = await create_tenant(admin, slug, cfg.agents)
        svc_name = f"fleet-bench-{secrets.token_hex(2)}"
        svc_jwt, svc_seed = await service_creds(admin, tenant, svc_name)
        summary["tenant"] = slug
        watched = {k: v for k, v in target.pids.items() if not k.startswith("nats")}
        summary["cpu_at_rest_pct"] = await cpu_percent(watched, cfg.rest) if watched else {}
        limiter = await set_auth_rate_limit(admin, False)  # restored in `finally`
        if cfg.revocations:  # baseline: revocation latency with no fleet at all
            summary["revocation_at_rest"] = await revocation_latency(
                admin, tenant, target.pb_url, target.nats_urls, cfg.revocations)
        if cfg.burst:
            summary["revocation_burst_at_rest"] = await time_burst(admin, await enroll_probes(
                admin, tenant, target.pb_url, target.nats_urls, cfg.burst))
        neighbour = (await create_tenant(admin, f"{slug}-nb", 100)
                     if cfg.neighbour and cfg.revocations else None)
        if neighbour is not None:
            summary["revocation_neighbour_at_rest"] = await revocation_latency(
                admin, neighbour, target.pb_url, target.nats_urls, cfg.revocations)

        bulk = await bulk_rows(admin, slug, "sim", cfg.agents, tmp / "devices.csv")
        summary["bulk_create"] = {"rows": len(bulk.created), "seconds": round(bulk.seconds, 1),
                                  "rate_per_s": round(bulk.rate, 1)}
        since = pb_date(time.time())
        enrolled, seconds = await enroll_all(
            target.pb_url, slug, [(c.code, c.secret) for c in bulk.created],
            cfg.enroll_concurrency)
        until = pb_date(time.time() + 0.001)
        (tmp / "devices.csv").unlink()  # the secrets are no longer needed
        summary["enrollment"] = {"agents": len(enrolled), "seconds": round(seconds, 1),
                                 "rate_per_s": round(len(enrolled) / seconds, 1)}

        load = LoadConfig(servers=target.nats_urls, heartbeat=cfg.heartbeat,
                          telemetry=cfg.telemetry, connect_concurrency=cfg.connect_concurrency)
        sims = Simulators(enrolled, cfg.process_count, load)
        t0 = time.perf_counter()
        await sims.start()
        connected = await sims.wait_connected(timeout=max(300, cfg.agents / 20))
        summary["connect"] = {**connected, "seconds": round(time.perf_counter() - t0, 1),
                              "processes": len(sims.children)}

        nc = await nats.connect(servers=list(target.nats_urls), inbox_prefix=service_inbox(
            svc_name), connect_timeout=20, **connect_options(lambda: (svc_jwt, svc_seed)))
        try:
            codes = [e.code for e in enrolled]
            summary["commands_check"] = await command_check(nc, codes[-1])
            summary["single_ping"] = await single_latency(nc, codes[0])
            everyone = {**target.pids, "bench": os.getpid(),
                        **{f"simulator-{i}": pid for i, pid in enumerate(sims.pids)}}
            before = {name: cpu_seconds(pid) for name, pid in everyone.items()}
            summary["broadcast_ping"] = await broadcast_ping(nc, service_inbox(svc_name), codes)
            # where the broadcast's time went: CPU seconds each process spent during it
            summary["broadcast_ping"]["cpu_s"] = {
                name: round(after - before[name], 2) for name, pid in everyone.items()
                if (after := cpu_seconds(pid)) is not None and before[name] is not None}
            single_s = summary["single_ping"]["median_ms"] / 1000
            every = summary["broadcast_ping"]["all_answered_s"]
            summary["broadcast_ping"]["vs_single_request"] = (
                round(every / single_s) if every and single_s else None)
            summary["wildcard_subject_ping_replies"] = await wildcard_ping(
                nc, service_inbox(svc_name))
        finally:
            await nc.close()

        probes = await enroll_probes(admin, tenant, target.pb_url, target.nats_urls,
                                     cfg.revocations)  # their logins before the window
        burst = await enroll_probes(admin, tenant, target.pb_url, target.nats_urls, cfg.burst)
        neighbours = (await enroll_probes(admin, neighbour, target.pb_url, target.nats_urls,
                                          cfg.revocations) if neighbour is not None else [])
        await asyncio.sleep(cfg.settle)
        before = await sims.stats()
        counted = (await asyncio.to_thread(bridge_counters, target.bridge_metrics_port)
                   if target.bridge_metrics_port else {})
        start_at = pb_date(time.time())
        sampled = cpu_percent({**watched, **{f"simulator-{i}": p for i, p in
                                             enumerate(sims.pids)}}, cfg.duration)

        async def revocations_under_load() -> None:
            # the neighbour tenant's first, while no walk of the fleet's big account runs
            # (a node applies claim updates one at a time: docs/benchmarks.md)
            if neighbours:
                summary["revocation_neighbour_under_load"] = await time_revocations(
                    admin, neighbours)
            if probes:
                summary["revocation_under_load"] = await time_revocations(admin, probes)
            if burst:
                summary["revocation_burst_under_load"] = await time_burst(admin, burst)

        steady, _ = await asyncio.gather(sampled, revocations_under_load())
        end_at = pb_date(time.time())
        after = await sims.stats()
        summary["steady"] = _steady(cfg, steady, summary["cpu_at_rest_pct"], before, after)
        await asyncio.sleep(4)  # PocketBase writes its request log in batches
        summary["pocketbase_password_logins"] = {
            "enrollment_window": await count_password_logins(admin, since, until),
            "steady_window": await count_password_logins(admin, start_at, end_at),
            "steady_window_s": cfg.duration,
        }
        steady_logins = summary["pocketbase_password_logins"]["steady_window"]
        summary["pocketbase_password_logins"]["per_hour_at_steady_rate"] = (
            None if steady_logins is None else round(steady_logins * 3600 / cfg.duration))
        online = await admin._send("GET", "/api/collections/devices/records", params={
            "filter": f'tenant = "{tenant["id"]}" && online = true', "perPage": 1})
        summary["devices_online_in_pocketbase"] = online["totalItems"]
        if target.bridge_metrics_port:  # what changed during the steady window
            now = await asyncio.to_thread(bridge_counters, target.bridge_metrics_port)
            summary["bridge_counters_steady"] = {
                k: round(v - counted.get(k, 0.0), 3) for k, v in now.items()}
        summary["rss_mb"] = {
            **{name: round(rss_mb(pid) or 0) for name, pid in target.pids.items()},
            **{f"simulator-{i}": round(s.get("rss_mb") or 0) for i, s in enumerate(after)}}
    finally:
        if sims is not None:
            await sims.stop()
        if limiter is not None:
            await set_auth_rate_limit(admin, limiter)
        await admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def bridge_counters(port: int) -> dict[str, float]:
    """What the bridge saw (its /metrics): kicks by outcome, pushes and their time, and the
    realtime event lag, so a slow revocation can be placed on one side or the other."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {"unreadable": 1.0, "port": float(port)}
    wanted = ("cairn_bridge_revocation_kicks_total", "cairn_bridge_account_push_seconds_sum",
              "cairn_bridge_revocation_kick_seconds_sum",
              "cairn_bridge_event_step_seconds_sum", "cairn_bridge_event_step_seconds_count",
              "cairn_bridge_revocation_kick_seconds_count",
              "cairn_bridge_account_push_seconds_count", "cairn_bridge_event_lag_seconds_sum",
              "cairn_bridge_event_lag_seconds_count")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(wanted)}


def _steady(cfg: FleetConfig, cpu: dict[str, float | None], rest: dict[str, float | None],
            before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    def total(stats: list[dict[str, Any]], key: str) -> int:
        return sum(int(s.get(key) or 0) for s in stats)

    window = cfg.duration
    out: dict[str, Any] = {
        "window_s": window, "cpu_pct": cpu,
        "heartbeats_per_s": round((total(after, "heartbeats") - total(before, "heartbeats"))
                                  / window, 1),
        "telemetry_per_s": round((total(after, "telemetry") - total(before, "telemetry"))
                                 / window, 1),
        "telemetry_failed": total(after, "telemetry_failed"),
        "disconnects": total(after, "disconnects"),
    }
    out["cpu_vs_rest"] = {k: round(v / rest[k], 1) for k, v in cpu.items()
                          if v is not None and rest.get(k)}
    return out


async def run(cfg: FleetConfig) -> dict[str, Any]:
    soft, hard = raise_fd_limit(cfg.agents + 200)
    summary: dict[str, Any] = {"machine": machine(), "config": asdict(cfg),
                               "fd_limit": {"soft": soft, "hard": hard}}
    per_process = math.ceil(cfg.agents / cfg.process_count)
    if per_process + 100 > hard:
        raise SystemExit(f"{per_process} agents per process exceed the open-file hard limit "
                         f"({hard}): use --processes {math.ceil(cfg.agents / (hard - 200))}")
    stack = None
    if cfg.pb_url:
        email = os.environ.get("CAIRN_ADMIN_EMAIL", "")
        password = os.environ.get("CAIRN_ADMIN_PASSWORD", "")
        if not (email and password and cfg.nats_urls):
            raise SystemExit("--pb-url needs --nats-url and CAIRN_ADMIN_EMAIL / "
                             "CAIRN_ADMIN_PASSWORD (the superuser) in the environment")
        pids = _pids(pids_by_role(cfg.stack_pid)) if cfg.stack_pid else {}
        target = Target(cfg.pb_url, cfg.nats_urls, email, password, pids,
                        int(os.environ.get("CAIRN_BRIDGE_METRICS_PORT") or 0))
    else:
        stack = await asyncio.to_thread(start)
        assert stack.bridge is not None
        target = Target(stack.settings.pb_url,
                        (f"nats://127.0.0.1:{stack.settings.nats_port}",),
                        stack.admin.email, stack.admin.password,
                        {"nats": stack.nats.proc.pid, "pocketbase": stack.pb.proc.pid,
                         "bridge": stack.bridge.proc.pid},
                        stack.settings.bridge_metrics_port or 0)
    summary["nats_urls"] = list(target.nats_urls)
    try:
        await _phases(cfg, target, summary)
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
            if cfg.keep_stack:
                print(f"stack directory kept: {stack.root}", file=sys.stderr)
            else:  # it holds account seeds and N device rows
                shutil.rmtree(stack.root, ignore_errors=True)
    return summary


def parse(argv: list[str] | None = None) -> FleetConfig:
    p = argparse.ArgumentParser(
        prog="python -m bench fleet", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--agents", type=int, required=True, help="simulated agents (N)")
    p.add_argument("--processes", type=int, default=0,
                   help=f"simulator processes (default: one per {PER_PROCESS} agents)")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="seconds between an agent's heartbeats, jittered (60; 0 = none)")
    p.add_argument("--telemetry", type=float, default=300.0,
                   help="seconds between an agent's telemetry.system publishes (300; 0 = none)")
    p.add_argument("--duration", type=float, default=120.0,
                   help="steady-state window in seconds (120)")
    p.add_argument("--rest", type=float, default=20.0,
                   help="CPU baseline window before any agent exists, seconds (20)")
    p.add_argument("--nats-url", default="",
                   help="comma-separated NATS URLs of an existing stack; agents are spread "
                   "over them (each gets all of them as servers)")
    p.add_argument("--pb-url", default="",
                   help="PocketBase of an existing stack (superuser from CAIRN_ADMIN_EMAIL / "
                   "CAIRN_ADMIN_PASSWORD); default: start a private stack")
    p.add_argument("--stack-pid", type=int, default=0,
                   help="pid of the existing stack's launcher (cairn-stack), for CPU and RSS")
    p.add_argument("--enroll-concurrency", type=int, default=32, help="enrollments at once")
    p.add_argument("--connect-concurrency", type=int, default=200,
                   help="connects at once per process")
    p.add_argument("--revocations", type=int, default=20,
                   help="devices disabled one by one at rest and during the steady window, "
                   "timed until the server drops them (20; 0 = skip)")
    p.add_argument("--burst", type=int, default=10,
                   help="devices disabled all at once, at rest and during the steady window "
                   "(10; 0 = skip)")
    p.add_argument("--no-neighbour", dest="neighbour", action="store_false",
                   help="skip the disables timed in a small tenant of their own next to the "
                   "fleet's (on by default, with --revocations of them)")
    p.add_argument("--keep-stack", action="store_true",
                   help="keep the private stack's directory (its logs) instead of removing it")
    a = p.parse_args(argv)
    if a.agents < 1:
        p.error("--agents must be at least 1")
    urls = tuple(u.strip() for u in a.nats_url.split(",") if u.strip())
    return FleetConfig(agents=a.agents, processes=a.processes, heartbeat=a.heartbeat,
                       telemetry=a.telemetry, duration=a.duration, rest=a.rest,
                       nats_urls=urls, pb_url=a.pb_url, stack_pid=a.stack_pid,
                       enroll_concurrency=a.enroll_concurrency,
                       connect_concurrency=a.connect_concurrency, keep_stack=a.keep_stack,
                       revocations=a.revocations, burst=a.burst,
                       neighbour=a.neighbour)


async def _until_signalled(cfg: FleetConfig) -> dict[str, Any]:
    """`run`, cancelled by SIGTERM as by Ctrl-C, so its stack and simulators are stopped."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(cfg)


def main(argv: list[str] | None = None) -> None:
    try:
        summary = asyncio.run(_until_signalled(parse(argv)))
    except asyncio.CancelledError:
        raise SystemExit("stopped (SIGTERM); the stack and simulators were stopped") from None
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
