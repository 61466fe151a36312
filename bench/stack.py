"""A private stack for benchmarks: nats-server, PocketBase and the bridge as real processes."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
