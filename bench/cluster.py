"""Cluster figures (issue 12) on a local 3-node cluster, each with a same-run baseline.

- Account push to a returning node: a tenant created while a node is down; seconds from
  that node's restart until its resolver holds the account's newest JWT. Baseline: a tenant
  created with every node up, until every node's resolver holds it.
- Revocation on a returning node: a device disabled while its node is down; seconds from
  the restart until that node refuses its key. Baseline: disable -> refused on a live node.
- Agent failover: the agent's node killed (-9) or hung (SIGSTOP); seconds until the agent
  answers a ping again (asked every 0.25 s from another node). Baseline: a normal ping.

Everything real: nats-server nodes (cairn_stack/cluster.py), PocketBase, the bridge and
the agent in this process. `python -m bench cluster`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import yaml

from agent import config as config_mod
from agent.app import AgentApp
from agent.enrollment import EnrollRequest, enroll
from bench.stack import machine, provisioned_tenant
from cairn_common import creds
from cairn_common.layout import DataLayout
from cairn_common.nats_urls import join_nats_urls
from cairn_common.natsauth import connect_options, service_inbox
from cairn_common.pocketbase import PocketBase
from cairn_common.tasks import cancel_and_wait
from cairn_stack.cluster import NatsNode, leaders, meta_leader, start_cluster, start_node
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import ManagedProcess, free_port
from pb_hooks_bridge.app import Bridge
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.config import BridgeConfig

PASSWORD = "bench-cluster-123"
ROUNDS = 3


@dataclass
class Rig:
    root: Path
    nodes: list[NatsNode]
    procs: dict[str, ManagedProcess]
    pb: ManagedProcess
    pb_url: str
    admin: PocketBase
    bridge: Bridge
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.root)

    def follower(self) -> NatsNode:
        """A node leading neither JetStream's meta group nor a KV bucket (the lease)."""
        found = leaders(self.nodes[0])
        return next((n for n in reversed(self.nodes) if n.name not in found),
                    next(n for n in reversed(self.nodes) if n.name != found[0]))

    def restart(self, node: NatsNode) -> None:
        self.procs[node.name] = start_node(self.layout, node, self.nodes)

    def held(self, node: NatsNode, account: str) -> str:
        path = node.directory / "resolver" / f"{account}.jwt"
        return path.read_text().strip() if path.exists() else ""


async def until(check: Any, timeout: float = 30.0, every: float = 0.01) -> float:
    """Seconds until `await check()` is truthy (AssertionError past `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(every)
    raise AssertionError(f"not reached in {timeout} s: {check}")


async def start_rig() -> Rig:
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-cluster-"))
    layout = DataLayout(root)
    bootstrap(layout)
    nodes = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(),
                      layout.nats_dir / "nodes" / f"n{i + 1}") for i in range(3)]
    procs = dict(zip([n.name for n in nodes], start_cluster(layout, nodes), strict=True))
    email, password = "bench@cairn.local", secrets.token_urlsafe(16)
    upsert_superuser(layout, email, password)
    port = free_port()
    pb = start_pocketbase(layout, port)
    pb_url = f"http://127.0.0.1:{port}"
    admin = PocketBase(pb_url, timeout=60)
    await admin.auth_superuser(email, password)
    await admin.update_settings({"rateLimits": {"enabled": False}})
    bridge = Bridge(BridgeConfig(data_dir=root, pb_url=pb_url,
                                 nats_url=join_nats_urls(n.url for n in nodes),
                                 admin_email=email, admin_password=password, nats_replicas=3))
    await bridge.start()
    rig = Rig(root, nodes, procs, pb, pb_url, admin, bridge)
    rig.tasks.append(asyncio.create_task(bridge.run(), name="bench-bridge"))
    return rig


async def stop_rig(rig: Rig) -> None:
    await rig.bridge.stop()
    await cancel_and_wait(rig.tasks)
    await rig.admin.close()
    for proc in [*rig.procs.values(), rig.pb]:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGCONT)
        proc.stop()


async def enrolled(rig: Rig, tenant: dict[str, Any], directory: Path,
                   extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """A device enrolled the real way (agent/enrollment.py) with every node's URL; returns
    its row and its directory (agent.yaml, agent.creds)."""
    code = f"b-{secrets.token_hex(4)}"
    device = await rig.admin.create("devices", {
        "tenant": tenant["id"], "code": code, "password": PASSWORD, "passwordConfirm": PASSWORD})
    urls = tuple(n.url for n in rig.nodes)
    doc = yaml.safe_dump({
        "device": {"code": code, "tenant": tenant["slug"]},
        "server": {"url": rig.pb_url, "secret_file": "agent.secret"},
        "nats": {"urls": list(urls), "ping_interval": 0.5},
        "exporters": ["http://127.0.0.1:9/metrics"], **(extra or {})})
    await asyncio.to_thread(_write, directory, doc)
    await enroll(EnrollRequest(server=rig.pb_url, code=code, tenant=tenant["slug"],
                               directory=directory,
                               nats_urls=urls, secret=PASSWORD))
    return device, directory


def _write(directory: Path, doc: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agent.yaml").write_text(doc)


async def accepted(url: str, directory: Path) -> bool:
    """True when `url` lets the device in, False when it refuses it (other errors raise)."""
    jwt, seed = creds.read(directory / "agent.creds")
    errors: list[Exception] = []

    async def collect(exc: Exception) -> None:
        errors.append(exc)
    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=collect,
                                **connect_options(lambda: (jwt, seed)))
    except (nats.errors.Error, OSError) as exc:
        if any("authorization" in str(e).lower() for e in [*errors, exc]):
            return False
        raise
    await nc.close()
    return True


async def account_figures(rig: Rig, n: int) -> dict[str, float]:
    t0 = time.monotonic()
    tenant = await rig.admin.create("tenants", {"name": f"base-{n}", "slug":
                                                f"base-{n}-{secrets.token_hex(3)}", "active": True})
    await until(lambda: _everywhere(rig, tenant, rig.nodes))
    baseline = time.monotonic() - t0
    away = rig.follower()
    rig.procs[away.name].kill()
    tenant = await provisioned_tenant(rig.admin, f"away-{n}-{secrets.token_hex(3)}")
    t0 = time.monotonic()
    rig.restart(away)
    healthy = time.monotonic() - t0
    await until(lambda: _everywhere(rig, tenant, [away]))
    return {"account_return": time.monotonic() - t0, "account_healthy": healthy,
            "account_all_up": baseline}


async def _everywhere(rig: Rig, tenant: dict[str, Any], nodes: list[NatsNode]) -> bool:
    """The tenant's newest account JWT is in every one of `nodes`' resolver dirs."""
    row = await rig.admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
    return bool(row and row.get("jwt")) and all(
        rig.held(node, row["public_key"]) == row["jwt"] for node in nodes)


async def revocation_figures(rig: Rig, n: int, work: Path) -> dict[str, float]:
    tenant = await provisioned_tenant(rig.admin, f"rev-{n}-{secrets.token_hex(3)}")
    live, live_path = await enrolled(rig, tenant, work / f"live-{n}")
    away = rig.follower()
    up = next(node for node in rig.nodes if node is not away)
    t0 = time.monotonic()
    await rig.admin.update("devices", live["id"], {"status": "disabled"})
    await until(lambda: _refused(up.url, live_path))
    baseline = time.monotonic() - t0
    device, path = await enrolled(rig, tenant, work / f"away-{n}")
    assert await accepted(away.url, path)
    rig.procs[away.name].kill()
    await rig.admin.update("devices", device["id"], {"status": "disabled"})
    await until(lambda: _refused(up.url, path))
    t0 = time.monotonic()
    rig.restart(away)
    await until(lambda: _refused(away.url, path))
    return {"revocation_return": time.monotonic() - t0, "revocation_live": baseline}


async def _refused(url: str, path: Path) -> bool:
    return not await accepted(url, path)


async def failover_figures(rig: Rig, work: Path, rounds: int) -> dict[str, Any]:
    tenant = await provisioned_tenant(rig.admin, f"agent-{secrets.token_hex(3)}")
    _, directory = await enrolled(rig, tenant, work / "agent")
    config = config_mod.load(directory / "agent.yaml")
    app = AgentApp(config)
    app.link.settings = replace(app.link.settings, ping_interval=config.nats.ping_interval)
    await app.start()
    svc = await rig.admin.first("nats_users",
                                f'tenant = "{tenant["id"]}" && name = "cairn-bridge"')
    code = config.device.code
    out: dict[str, list[float]] = {"normal": [], "kill": [], "hang": []}
    try:
        for _ in range(rounds):
            for how in ("kill", "hang"):
                await until(lambda: _agreed(rig), 30)
                url = app.link.status()["url"]
                node = next(n for n in rig.nodes if n.url == url)
                other = next(n for n in rig.nodes if n is not node)
                nc = await nats.connect(other.url, inbox_prefix=service_inbox("cairn-bridge"),
                                        **connect_options(lambda: (svc["jwt"], svc["seed"])))
                try:
                    for _ in range(30):
                        started = time.perf_counter()
                        assert await _ping(nc, code, 2)
                        out["normal"].append(time.perf_counter() - started)
                    proc = rig.procs[node.name]
                    if how == "kill":
                        proc.kill()
                    else:
                        assert proc.proc is not None
                        proc.proc.send_signal(signal.SIGSTOP)
                    out[how].append(await until(lambda nc=nc: _ping(nc, code, 0.25), 30, 0.01))
                finally:
                    await nc.close()
                    if how == "kill":
                        rig.restart(node)
                    elif (hung := rig.procs[node.name].proc) is not None:
                        hung.send_signal(signal.SIGCONT)
    finally:
        await app.stop()
    return out


async def _agreed(rig: Rig) -> bool:
    leaders = await asyncio.gather(*(asyncio.to_thread(meta_leader, n) for n in rig.nodes))
    return len(set(leaders)) == 1 and bool(leaders[0])


async def _ping(nc: Any, code: str, timeout: float) -> bool:
    try:
        msg = await nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return json.loads(msg.data).get("status") == "pong"


async def run(rounds: int = ROUNDS) -> dict[str, Any]:
    rig = await start_rig()
    work = rig.root / "bench"
    try:
        rows: list[dict[str, float]] = []
        for n in range(rounds):
            await until(lambda: _agreed(rig), 30)
            rows.append({**await account_figures(rig, n),
                         **await revocation_figures(rig, n, work)})
        failover = await failover_figures(rig, work, rounds)
    finally:
        await stop_rig(rig)
    result: dict[str, Any] = {"machine": machine(), "rounds": rounds}
    for key in rows[0]:
        result[key] = [r[key] for r in rows]
    result.update(failover)
    return result


def report(r: dict[str, Any]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key])

    def span(key: str, unit: float = 1.0, fmt: str = ".2f") -> str:
        values = [v * unit for v in r[key]]
        return (f"median {statistics.median(values):{fmt}}, max {max(values):{fmt}} "
                f"({len(values)} runs)")

    normal = med("normal")
    return (
        f"machine: {r['machine']}\n"
        f"account created while a node was down, on that node after its restart: "
        f"{span('account_return')} s (restart to healthy {span('account_healthy')} s); "
        f"baseline, created with all up until on every node: {span('account_all_up')} s\n"
        f"revocation made while a node was down, refused there after its restart: "
        f"{span('revocation_return')} s; baseline, disable -> refused on a live node: "
        f"{span('revocation_live')} s; "
        f"ratio {med('revocation_return') / med('revocation_live'):.1f}x\n"
        f"agent failover, node killed (-9): {span('kill', 1000, '.0f')} ms; node hung "
        f"(SIGSTOP, agent ping_interval 0.5 s): {span('hang', 1000, '.0f')} ms; normal ping "
        f"median {normal * 1000:.2f} ms (ratios {med('kill') / normal:.0f}x and "
        f"{med('hang') / normal:.0f}x)"
    )


if __name__ == "__main__":
    print(report(asyncio.run(run())))
