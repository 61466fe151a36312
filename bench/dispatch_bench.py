"""Commands through PocketBase (issue 6), with same-run baselines.

- Round trip: a `commands` row created (REST, superuser) -> the bridge sends it -> the
  agent answers -> `succeeded` on the row, seen through a realtime subscription. 500
  sequential pings. Baseline: a direct NATS request to the same agent.
- Queue drain: 1,000 commands queued for 100 offline devices; all 100 agents start at
  once; time until every row is final, and proof that none ran twice (one claim each).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from agent import config as config_mod
from agent.app import AgentApp
from agent.enrollment import EnrollRequest, enroll
from bench.stack import BenchStack, machine, percentile, provisioned_tenant, start
from cairn_common.natsauth import connect_options

PASSWORD = "bench-enroll-123"
FINAL = {"succeeded", "failed", "expired"}


async def _agent(stack: BenchStack, admin: Any, tenant: dict[str, Any], code: str,
                 root: Path) -> Path:
    await admin.create("devices", {"tenant": tenant["id"], "code": code, "password": PASSWORD,
                                   "passwordConfirm": PASSWORD})
    directory = root / code
    directory.mkdir(parents=True)
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "device": {"code": code, "tenant": tenant["slug"]},
        "server": {"url": stack.settings.pb_url, "secret_file": "agent.secret"},
        "nats": {"urls": [stack.settings.nats_url]},
        "intervals": {"system": "1h", "inventory": "24h"},
        "exporters": ["http://127.0.0.1:9/metrics"],
        "commands": {"allowed": ["true"]}}))
    await enroll(EnrollRequest(server=stack.settings.pb_url, code=code, tenant=tenant["slug"],
                               directory=directory,
                               nats_urls=(stack.settings.nats_url,), secret=PASSWORD))
    return path


class Finals:
    """Realtime watch of `commands`: when each row reached a final status."""

    def __init__(self, admin: Any) -> None:
        self.admin = admin
        self.done: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def start(self) -> asyncio.Task[None]:
        ready = asyncio.Event()

        async def run() -> None:
            async for event in self.admin.realtime(["commands/*"]):
                if event.action == "connect":
                    ready.set()
                elif event.record.get("status") in FINAL:
                    self.done.setdefault(event.record["id"], time.perf_counter())
                    self.changed.set()

        task = asyncio.create_task(run())
        await asyncio.wait_for(ready.wait(), 10)
        return task

    async def wait(self, ids: set[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not ids <= set(self.done):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.1, deadline - time.perf_counter()))


async def run(samples: int = 500, devices: int = 100, per_device: int = 10) -> dict[str, Any]:
    import nats

    stack = start()
    apps: list[AgentApp] = []
    try:
        admin = await stack.admin_client()
        tenant = await provisioned_tenant(admin, "cb")
        root = Path(tempfile.mkdtemp(prefix="cairn-dispatch-bench-"))
        finals = Finals(admin)
        watcher = await finals.start()
        # -- round trip ------------------------------------------------------------
        first = AgentApp(config_mod.load(await _agent(stack, admin, tenant, "rt-0", root)))
        await first.start()
        apps.append(first)
        device = await admin.first("devices", 'code = "rt-0"')
        svc = await admin.first("nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge"')
        nc = await nats.connect(stack.settings.nats_url,
                                **connect_options(lambda: (svc["jwt"], svc["seed"])))
        await asyncio.sleep(1)
        via_pb, direct = [], []
        for _ in range(samples):
            t0 = time.perf_counter()
            row = await admin.create("commands", {"tenant": tenant["id"], "device": device["id"],
                                                  "command": "ping", "payload": {}})
            await finals.wait({row["id"]}, 10)
            via_pb.append((finals.done[row["id"]] - t0) * 1000)
            t0 = time.perf_counter()
            await nc.request("agents.rt-0.cmd.ping", b"{}", timeout=5)
            direct.append((time.perf_counter() - t0) * 1000)
        await nc.close()
        # -- queue drain -----------------------------------------------------------
        paths = [await _agent(stack, admin, tenant, f"q-{i:03d}", root) for i in range(devices)]
        rows = []
        for i in range(devices):
            dev = await admin.first("devices", f'code = "q-{i:03d}"')
            for _ in range(per_device):
                rows.append(await admin.create("commands", {
                    "tenant": tenant["id"], "device": dev["id"], "command": "exec",
                    "payload": {"command": "true"}}))
        ids = {r["id"] for r in rows}
        while True:  # every row probed and found offline
            queued = await admin.list("commands", filter='status = "queued"', fields="id")
            if ids <= {r["id"] for r in queued}:
                break
            await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        new_apps = [AgentApp(config_mod.load(p)) for p in paths]
        await asyncio.gather(*(a.start() for a in new_apps))
        apps.extend(new_apps)
        await finals.wait(ids, 600)
        drain_s = max(finals.done[i] for i in ids) - t0
        claims = await admin.list("audit_log", filter='action = "command.sent"',
                                  fields="target")
        targets = [c["target"] for c in claims]
        statuses = {r["status"] for r in await admin.list("commands", fields="status")}
        watcher.cancel()
        await admin.close()
        return {
            "machine": machine(), "samples": samples,
            "pb_p50": percentile(via_pb, 50), "pb_p99": percentile(via_pb, 99),
            "direct_p50": percentile(direct, 50), "direct_p99": percentile(direct, 99),
            "queued": len(ids), "devices": devices, "drain_s": drain_s,
            "twice": len(targets) - len(set(targets)), "statuses": sorted(statuses),
        }
    finally:
        for app in apps:
            await app.stop()
        stack.stop()


def report(r: dict[str, Any]) -> str:
    return (
        f"machine: {r['machine']}\n"
        f"command row -> response on the row ({r['samples']} pings): p50 {r['pb_p50']:.1f} ms "
        f"p99 {r['pb_p99']:.1f} ms; direct NATS request p50 {r['direct_p50']:.2f} ms p99 "
        f"{r['direct_p99']:.2f} ms; ratio p50 {r['pb_p50'] / r['direct_p50']:.1f}x\n"
        f"queue drain: {r['queued']} commands for {r['devices']} devices that start at once: "
        f"all final in {r['drain_s']:.1f} s ({r['queued'] / r['drain_s']:.0f} commands/s); "
        f"sent twice: {r['twice']}; final statuses {r['statuses']}"
    )


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(report(asyncio.run(run(samples=n))))
