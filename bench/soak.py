"""Soak: the whole `make run` stack with short JWT lifetimes under steady load, judged from
outside. Shared by the months-in-minutes test (tests/stack/test_months.py, a few
lifetimes) and `python -m bench soak` (30 minutes or more).

Load, every `step` seconds: one `exec` command row (a script appends its number to a file,
so a command run twice or never shows), one direct ping with a fresh connection on the demo
service user's current creds (so the bridge must keep that row renewed), and a look at the
device's `online`. The demo agent publishes system telemetry every 5 s and a rule turns
every document into an alert, kept in the tenant's ALERTS stream. Every `revoke_every`
seconds a throwaway device is enrolled, connected, then disabled, and the time until the
server drops its connection is recorded.

Findings: alerts lost, commands run twice or not at all, failed pings, offline sightings,
connections the server closed for an expired JWT, renewals, revocation latencies, and the
RSS of every process at start and end.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.stack import launch, metric_sum, rss_by_process
from cairn_common import nkey
from cairn_common.filemodes import private_dir, write_private
from cairn_common.natsauth import connect_options, device_inbox, service_inbox
from cairn_common.pocketbase import PocketBase
from cairn_stack.processes import free_port

COUNT_SCRIPT = '#!/bin/sh\necho "$1" >> "$2"\necho ok\n'
RULE = """subject: agents.demo-1.telemetry.system
match: "timestamp exists"
actions:
  - publish: "alerts.demo-1.seen"
    payload: '{"seen": "{timestamp}"}'
"""
SYSTEM_EVERY = 5  # seconds between the demo agent's system documents here
REFUSED = re.compile(r"authentication expired|authorization violation", re.I)
PASSWORD = "soak-device-secret-1"


@dataclass
class Findings:
    seconds: float = 0.0
    commands: int = 0
    commands_failed: list[Any] = field(default_factory=list)
    commands_twice: int = 0
    commands_missing: int = 0
    pings: int = 0
    pings_failed: list[Any] = field(default_factory=list)
    offline_seen: list[float] = field(default_factory=list)
    telemetry: int = 0
    alerts_lost: int = 0
    expired_closes: dict[str, float] = field(default_factory=dict)
    renewals: dict[str, float] = field(default_factory=dict)
    agent_refusals: list[str] = field(default_factory=list)
    revocations: list[float] = field(default_factory=list)
    revocations_idle: list[float] = field(default_factory=list)  # baseline, before load
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)

    def revocation_p99(self, idle: bool = False) -> float | None:
        samples = self.revocations_idle if idle else self.revocations
        if not samples:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Soak:
    def __init__(self, root: Path, ttl: int, revoke_every: float = 30.0,
                 step: float = 3.0, idle_samples: int = 5) -> None:
        self.idle_samples = idle_samples
        self.root = root
        self.data_dir = root / "data"
        self.ttl = ttl
        self.revoke_every = revoke_every
        self.step = step
        self.env = {**os.environ, "CAIRN_DATA_DIR": str(self.data_dir), "CAIRN_DEMO": "1",
                    "CAIRN_USER_JWT_TTL": str(ttl)}
        for name in ("NATS_PORT", "NATS_MONITOR_PORT", "NATS_WS_PORT", "PB_PORT",
                     "BRIDGE_METRICS_PORT", "ROUTER_METRICS_PORT"):
            self.env[f"CAIRN_{name}"] = str(free_port())
        self.nats_url = f"nats://127.0.0.1:{self.env['CAIRN_NATS_PORT']}"
        self.pb_url = f"http://127.0.0.1:{self.env['CAIRN_PB_PORT']}"
        self.proc: subprocess.Popen[str] | None = None
        self.pb: PocketBase | None = None
        self.findings = Findings()
        self.counted = root / "ran.txt"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._prepare_agent()
        self.proc, lines = await asyncio.to_thread(self._launch)
        login = next(line for line in lines if "Login:" in line).split()
        self.pb = PocketBase(self.pb_url)
        await self.pb.auth_superuser(login[1], login[3])
        self.tenant = await self.pb.first("tenants", 'slug = "demo"')
        self.device = await self.pb.first("devices", 'code = "demo-1"')
        await self.pb.create("rules", {"tenant": self.tenant["id"], "name": "every-system-doc",
                                       "enabled": True, "yaml": RULE})
        await _until(lambda: self.pb.first("rules", 'name = "every-system-doc" && '
                                                    'status = "valid"'), 20, "rule valid")
        await _until(self._ping, 60, "the demo agent answers")
        # the run judges that the device never shows offline once it is up: an answered
        # ping comes before presence's first pass has written `online`
        await _until(self._online, 30, "the demo device online")

    async def _online(self) -> bool:
        return bool((await self.pb.get("devices", self.device["id"])).get("online"))

    async def stop(self) -> None:
        if self.pb is not None:
            await self.pb.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.communicate, timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _prepare_agent(self) -> None:
        """The demo agent's config (kept by `make run`): fast intervals, a counting script."""
        private_dir(self.data_dir)
        agent_dir = private_dir(private_dir(self.data_dir / "demo") / "agent")
        write_private(private_dir(agent_dir / "scripts") / "count.sh", COUNT_SCRIPT)
        doc = {
            "device": {"code": "demo-1", "tenant": "demo"},
            "server": {"url": self.pb_url, "secret_file": "agent.secret"},
            "nats": {"urls": [self.nats_url], "creds_file": "agent.creds",
                     "seed_file": "agent.nk"},
            "intervals": {"heartbeat": "2s", "system": f"{SYSTEM_EVERY}s", "service": "60s",
                          "inventory": "24h"},
            "commands": {"allowed": ["hostname"], "scripts_directory": "scripts",
                         "timeout": "30s"},
        }
        write_private(agent_dir / "agent.yaml", yaml.safe_dump(doc))

    def _launch(self) -> tuple[subprocess.Popen[str], list[str]]:
        return launch(self.env, timeout=120)

    # -- load -----------------------------------------------------------------------

    async def run(self, seconds: float) -> Findings:
        assert self.pb is not None
        f = self.findings
        f.rss_start = rss_by_process(self.proc.pid if self.proc else 0)
        for _ in range(self.idle_samples):  # the baseline: same stack, no load yet
            f.revocations_idle.append(await self._revocation())
        commands: list[str] = []
        started = time.monotonic()
        next_revoke = started + 5
        while time.monotonic() - started < seconds:
            row = await self.pb.create("commands", {
                "tenant": self.tenant["id"], "device": self.device["id"], "command": "exec",
                "payload": {"command": "count.sh",
                            "args": [str(len(commands)), str(self.counted)]}})
            commands.append(row["id"])
            f.pings += 1
            try:
                if not await self._ping():
                    f.pings_failed.append(round(time.monotonic() - started, 1))
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                f.pings_failed.append((round(time.monotonic() - started, 1), repr(exc)))
            if not (await self.pb.get("devices", self.device["id"])).get("online"):
                f.offline_seen.append(round(time.monotonic() - started, 1))
            if time.monotonic() >= next_revoke:
                next_revoke = time.monotonic() + self.revoke_every
                f.revocations.append(await self._revocation())
            await asyncio.sleep(self.step)
        f.seconds = time.monotonic() - started
        f.rss_end = rss_by_process(self.proc.pid if self.proc else 0)
        await self._judge(commands)
        return f

    async def _judge(self, commands: list[str]) -> None:
        assert self.pb is not None
        f = self.findings
        f.commands = len(commands)

        async def finished() -> bool:
            rows = await self.pb.list("commands", filter=f'device = "{self.device["id"]}"',
                                      fields="id,status,error")
            return all(r["status"] in ("succeeded", "failed", "expired") for r in rows)

        await _until(finished, 90, "every command row finished")
        rows = await self.pb.list("commands", filter=f'device = "{self.device["id"]}"',
                                  fields="id,status,error")
        f.commands_failed = [(r["id"], r["status"], r["error"]) for r in rows
                             if r["id"] in set(commands) and r["status"] != "succeeded"]
        ran = [int(x) for x in self.counted.read_text().split()] if self.counted.exists() else []
        f.commands_twice = len(ran) - len(set(ran))
        f.commands_missing = len(set(range(len(commands))) - set(ran))
        await asyncio.sleep(2)  # the last documents' alerts are on their way
        telemetry = await self._stream_docs("TELEMETRY", "agents.demo-1.telemetry.system")
        alerts = await self._stream_docs("ALERTS", "alerts.demo-1.seen")
        stamps = {d["timestamp"] for d in telemetry if "timestamp" in d}
        f.telemetry = len(stamps)
        f.alerts_lost = len(stamps - {a.get("seen") for a in alerts})
        for part in ("bridge", "router"):
            port = self.env[f"CAIRN_{part.upper()}_METRICS_PORT"]
            f.expired_closes[part] = metric_sum(port, "cairn_nats_link_reopened_total",
                                                'reason="expired"')
            f.renewals[part] = metric_sum(port, "cairn_nats_link_reopened_total",
                                          'reason="renewal"')
        log = self.data_dir / "logs" / "cairn-agent.log"
        text = log.read_text() if log.exists() else ""
        f.agent_refusals = [line for line in text.splitlines() if REFUSED.search(line)][:5]

    async def _service_creds(self) -> tuple[str, str]:
        assert self.pb is not None
        row = await self.pb.first("nats_users",
                                  f'tenant = "{self.tenant["id"]}" && name = "admin"')
        return row["jwt"], row["seed"]

    async def _ping(self) -> bool:
        """A fresh connection on the service user's current creds, and one ping."""
        jwt, seed = await self._service_creds()
        nc = await nats.connect(self.nats_url, allow_reconnect=False, connect_timeout=5,
                                inbox_prefix=service_inbox("admin"),
                                **connect_options(lambda: (jwt, seed)))
        try:
            msg = await nc.request("agents.demo-1.cmd.ping", b"{}", timeout=5)
            return json.loads(msg.data).get("status") == "pong"
        finally:
            await nc.close()

    async def _stream_docs(self, stream: str, subject: str) -> list[dict[str, Any]]:
        jwt, seed = await self._service_creds()
        nc = await nats.connect(self.nats_url, allow_reconnect=False,
                                inbox_prefix=service_inbox("admin"),
                                **connect_options(lambda: (jwt, seed)))
        try:
            js = nc.jetstream(timeout=10)
            sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, inactive_threshold=60))
            docs: list[dict[str, Any]] = []
            while True:
                try:
                    msgs = await sub.fetch(200, timeout=2)
                except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
                    return docs
                for msg in msgs:
                    docs.append(json.loads(msg.data))
                    await msg.ack()
        finally:
            await nc.close()

    async def _revocation(self) -> float:
        """Seconds from `status: disabled` to the server dropping the device's connection."""
        assert self.pb is not None
        code = f"soak-{os.urandom(4).hex()}"
        device = await self.pb.create("devices", {
            "tenant": self.tenant["id"], "code": code, "name": code, "password": PASSWORD,
            "passwordConfirm": PASSWORD})
        user = nkey.create("user")
        async with PocketBase(self.pb_url) as as_device:
            await as_device.auth_with_password("devices", device["login"], PASSWORD)
            await as_device.update("devices", device["id"],
                                   {"nats_public_key": user.public_key.decode()})
        row = await _until(lambda: self._issued(device["id"]), 20, f"JWT for {code}")
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        nc = await nats.connect(self.nats_url, allow_reconnect=False, closed_cb=on_closed,
                                inbox_prefix=device_inbox(code),
                                **connect_options(lambda: (row["nats_jwt"],
                                                           user.seed.decode())))
        try:
            started = time.perf_counter()
            await self.pb.update("devices", device["id"], {"status": "disabled"})
            await asyncio.wait_for(closed.wait(), 30)
            return time.perf_counter() - started
        finally:
            await nc.close()
            await self.pb.delete("devices", device["id"])

    async def _issued(self, device_id: str) -> dict[str, Any] | None:
        assert self.pb is not None
        row = await self.pb.get("devices", device_id)
        return row if row.get("nats_jwt") and row.get("status") == "active" else None


async def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


async def run(minutes: float = 30.0, ttl: int = 120) -> Findings:
    root = Path(tempfile.mkdtemp(prefix="cairn-soak-"))
    soak = Soak(root, ttl)
    await soak.start()
    try:
        return await soak.run(minutes * 60)
    finally:
        await soak.stop()


def report(f: Findings, ttl: int = 120) -> str:
    hours = f.seconds / 3600
    growth = {k: round((f.rss_end.get(k, 0) - v) / 1024 / hours, 1)
              for k, v in f.rss_start.items()} if hours else {}
    p99 = f.revocation_p99()
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; JWT lifetime {ttl} s",
        f"ran {f.seconds / 60:.1f} min ({f.seconds / ttl:.1f} lifetimes)",
        f"commands {f.commands}: failed {len(f.commands_failed)}, run twice "
        f"{f.commands_twice}, never run {f.commands_missing}",
        f"pings {f.pings}: failed {len(f.pings_failed)}; offline sightings "
        f"{len(f.offline_seen)}",
        f"telemetry documents {f.telemetry}: alerts lost {f.alerts_lost}",
        f"closed for an expired JWT: {f.expired_closes}; renewals: {f.renewals}; "
        f"agent refusals in log: {len(f.agent_refusals)}",
        f"revocations under load {len(f.revocations)}: median "
        f"{_ms(statistics.median(f.revocations) if f.revocations else None)}, p99 {_ms(p99)}; "
        f"idle baseline ({len(f.revocations_idle)}, same stack before the load): median "
        f"{_ms(statistics.median(f.revocations_idle) if f.revocations_idle else None)}"
        + (f"; median ratio load/idle "
           f"{statistics.median(f.revocations) / statistics.median(f.revocations_idle):.2f}"
           if f.revocations and f.revocations_idle else ""),
        "RSS KiB start -> end (MiB/hour): " + ", ".join(
            f"{k} {f.rss_start[k]} -> {f.rss_end.get(k, 0)} ({growth.get(k, 0):+})"
            for k in sorted(f.rss_start)),
    ]
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def main() -> None:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    print(report(asyncio.run(run(minutes))))


if __name__ == "__main__":
    main()
