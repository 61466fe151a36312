"""Stacks for benchmarks: a private one (nats-server, PocketBase and the bridge as real
processes) and the whole `make run` launcher (`launch`), with per-process RSS and metrics."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBase
from cairn_stack.nats import start_nats
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import ManagedProcess, free_port
from cairn_stack.settings import StackSettings
from cairn_stack.sidecars import start_bridge
from cairn_stack.superuser import Superuser
from pb_hooks_bridge.bootstrap import bootstrap


@dataclass
class BenchStack:
    root: Path
    settings: StackSettings
    admin: Superuser
    nats: ManagedProcess
    pb: ManagedProcess
    bridge: ManagedProcess | None = None

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.root)

    async def admin_client(self) -> PocketBase:
        pb = PocketBase(self.settings.pb_url, timeout=60)
        await pb.auth_superuser(self.admin.email, self.admin.password)
        # a private stack where one address logs in every device: PocketBase's per-address
        # auth limit (on since issue 13) would refuse the benchmark, not measure it
        await pb.update_settings({"rateLimits": {"enabled": False}})
        return pb

    def start_bridge(self) -> ManagedProcess:
        self.bridge = start_bridge(self.settings, self.layout, self.admin, timeout=600)
        return self.bridge

    def stop(self) -> None:
        for proc in (self.bridge, self.pb, self.nats):
            if proc is not None:
                proc.stop()


def start(with_bridge: bool = True) -> BenchStack:
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    layout = DataLayout(root)
    settings = StackSettings(
        data_dir=root, nats_port=free_port(), nats_monitor_port=free_port(),
        pb_port=free_port(), bridge_metrics_port=free_port(),
        router_metrics_port=free_port(), admin_email=None,
        admin_password=None, demo=False,
    )
    admin = Superuser("bench@cairn.local", secrets.token_urlsafe(16), generated_now=False)
    bootstrap(layout)
    upsert_superuser(layout, admin.email, admin.password)
    nats = start_nats(layout, settings.nats_port, settings.nats_monitor_port)
    pb = start_pocketbase(layout, settings.pb_port)
    stack = BenchStack(root, settings, admin, nats, pb)
    if with_bridge:
        stack.start_bridge()
    return stack


async def provisioned_tenant(admin: PocketBase, slug: str) -> dict:
    """Create a tenant and wait until the bridge has provisioned its NATS account."""
    tenant = await admin.create("tenants", {"name": slug, "slug": slug, "active": True})
    while not (await admin.get("tenants", tenant["id"]))["nats_account_public_key"]:
        await asyncio.sleep(0.05)
    return tenant


def machine() -> str:
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


PROCESSES = ("nats-server", "pocketbase", "pb_hooks_bridge", "rule_router", "agent")


def launch(env: dict[str, str], timeout: float = 60) -> tuple[subprocess.Popen[str], list[str]]:
    """`python -m cairn_stack` with `env`; returns once it says it is up, with its output."""
    proc = subprocess.Popen([sys.executable, "-m", "cairn_stack"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("Press Ctrl-C"):
            return proc, lines
    proc.kill()
    raise AssertionError("stack did not come up:\n" + "\n".join(lines))


def rss_by_process(root_pid: int) -> dict[str, int]:
    """RSS in KiB of the stack's processes (descendants of `root_pid`), by role."""
    out: dict[str, int] = {}
    todo = [root_pid] if root_pid else []
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
        rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS")), 0)
        for role in PROCESSES:
            if role in cmdline and pid != root_pid:
                out[role] = out.get(role, 0) + rss
    return out


def metric_sum(port: str, name: str, label: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


def pids_by_role(root_pid: int) -> list[tuple[str, int]]:
    """(role, pid) of each stack process below `root_pid` (one entry per nats-server node)."""
    out: list[tuple[str, int]] = []
    todo = [root_pid] if root_pid else []
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
        role = next((r for r in PROCESSES if r in cmdline), None)
        if role is not None and pid != root_pid:
            out.append((role, pid))
    return out
