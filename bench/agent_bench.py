"""Agent benchmarks against a real stack, each with a same-run baseline.

- ping round trip: the agent (its own process) vs a bare nats-py responder (its own
  process, same kind of device credentials), 5,000 sequential requests each.
- exec overhead: `exec` of a whitelisted `true` through NATS vs spawning `true` directly.
- footprint: the agent's RSS and CPU time while idle (heartbeat every 60 s, system
  telemetry every 5 min) over a measured window.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from agent.enrollment import EnrollRequest, enroll
from bench.stack import machine, percentile, provisioned_tenant, start
from cairn_common.natsauth import connect_options

PASSWORD = "bench-enroll-123"

BARE_RESPONDER = """
import asyncio, sys, nats
async def main():
    async def quiet(e): pass
    nc = await nats.connect(sys.argv[1], user_credentials=sys.argv[2], error_cb=quiet)
    async def pong(msg):
        await msg.respond(b'{"status":"pong"}')
    await nc.subscribe(sys.argv[3], cb=pong)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def _device(admin: Any, tenant: dict[str, Any], code: str, stack: Any,
                  directory: Path, config: dict[str, Any] | None = None) -> Path:
    await admin.create("devices", {"tenant": tenant["id"], "code": code, "password": PASSWORD,
                                   "passwordConfirm": PASSWORD})
    doc = {"device": {"code": code, "tenant": tenant["slug"]},
           "server": {"url": stack.settings.pb_url, "secret_file": "agent.secret"},
           "nats": {"urls": [stack.settings.nats_url]},
           "exporters": ["http://127.0.0.1:9/metrics"], **(config or {})}
    path = _write_yaml(directory, doc)
    await enroll(EnrollRequest(server=stack.settings.pb_url, code=code, tenant=tenant["slug"],
                               directory=directory,
                               nats_urls=(stack.settings.nats_url,), secret=PASSWORD))
    return path


def _write_yaml(directory: Path, doc: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _rtt(nc: Any, subject: str, n: int, payload: bytes = b"{}") -> list[float]:
    for _ in range(200):  # warm-up
        await nc.request(subject, payload, timeout=5)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await nc.request(subject, payload, timeout=5)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(requests: int = 5000, idle_seconds: float = 300.0) -> dict[str, Any]:
    import nats

    stack = start()
    procs: list[asyncio.subprocess.Process] = []
    try:
        admin = await stack.admin_client()
        tenant = await provisioned_tenant(admin, "ab")
        work = Path(tempfile.mkdtemp(prefix="cairn-agent-bench-"))
        agent_cfg = await _device(admin, tenant, "bench-agent", stack, work / "agent",
                                  {"commands": {"allowed": ["true"], "timeout": 10}})
        bare_cfg = await _device(admin, tenant, "bench-bare", stack, work / "bare")
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--config", str(agent_cfg),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        bare = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BARE_RESPONDER, stack.settings.nats_url,
            str(bare_cfg.parent / "agent.creds"), "agents.bench-bare.cmd.ping",
            stdout=asyncio.subprocess.PIPE)
        procs = [agent, bare]
        assert bare.stdout is not None
        await bare.stdout.readline()
        svc = await admin.first("nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge"')
        nc = await nats.connect(stack.settings.nats_url,
                                **connect_options(lambda: (svc["jwt"], svc["seed"])))
        for _ in range(100):
            try:
                await nc.request("agents.bench-agent.cmd.ping", b"{}", timeout=1)
                break
            except nats.errors.Error:
                await asyncio.sleep(0.2)
        agent_ms = await _rtt(nc, "agents.bench-agent.cmd.ping", requests)
        bare_ms = await _rtt(nc, "agents.bench-bare.cmd.ping", requests)
        exec_ms = await _rtt(nc, "agents.bench-agent.cmd.exec", 500, b'{"command": "true"}')
        reply = json.loads((await nc.request("agents.bench-agent.cmd.exec",
                                             b'{"command": "true"}', timeout=5)).data)
        assert reply["status"] == "success", reply
        spawn_ms = []
        for _ in range(500):
            t0 = time.perf_counter()
            p = await asyncio.create_subprocess_exec("true")
            await p.wait()
            spawn_ms.append((time.perf_counter() - t0) * 1000)
        await nc.close()
        cpu0, t0 = _proc_cpu_seconds(agent.pid), time.monotonic()
        await asyncio.sleep(idle_seconds)
        cpu1, t1 = _proc_cpu_seconds(agent.pid), time.monotonic()
        await admin.close()
        return {
            "machine": machine(), "requests": requests,
            "agent_p50": percentile(agent_ms, 50), "agent_p99": percentile(agent_ms, 99),
            "bare_p50": percentile(bare_ms, 50), "bare_p99": percentile(bare_ms, 99),
            "exec_p50": percentile(exec_ms, 50), "exec_p99": percentile(exec_ms, 99),
            "spawn_p50": percentile(spawn_ms, 50), "spawn_p99": percentile(spawn_ms, 99),
            "idle_seconds": t1 - t0, "idle_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "idle_rss_mb": _rss_mb(agent.pid),
        }
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
                await p.wait()
        stack.stop()


def report(r: dict[str, Any]) -> str:
    return (
        f"machine: {r['machine']}\n"
        f"ping ({r['requests']} sequential): agent p50 {r['agent_p50']:.3f} ms p99 "
        f"{r['agent_p99']:.3f} ms; bare nats-py responder p50 {r['bare_p50']:.3f} ms p99 "
        f"{r['bare_p99']:.3f} ms; ratio p50 {r['agent_p50'] / r['bare_p50']:.2f}x, "
        f"p99 {r['agent_p99'] / r['bare_p99']:.2f}x\n"
        f"exec `true` through NATS p50 {r['exec_p50']:.2f} ms p99 {r['exec_p99']:.2f} ms; "
        f"spawning `true` directly p50 {r['spawn_p50']:.2f} ms p99 {r['spawn_p99']:.2f} ms; "
        f"ratio p50 {r['exec_p50'] / r['spawn_p50']:.2f}x\n"
        f"idle over {r['idle_seconds']:.0f} s: RSS {r['idle_rss_mb']:.1f} MB, CPU "
        f"{r['idle_cpu_percent']:.3f} % of one core "
        f"({r['idle_cpu_percent'] * 36:.1f} CPU-seconds per hour)"
    )


if __name__ == "__main__":
    idle = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
    print(report(asyncio.run(run(idle_seconds=idle))))
