"""Start the Cairn sidecars (bridge, later the router) as child processes of the stack."""

from __future__ import annotations

import sys

from cairn_common.layout import DataLayout
from cairn_stack.processes import ManagedProcess, http_get_text
from cairn_stack.settings import StackSettings
from cairn_stack.superuser import Superuser


def sidecar_env(settings: StackSettings, admin: Superuser) -> dict[str, str]:
    return {
        "CAIRN_DATA_DIR": str(settings.data_dir),
        "CAIRN_PB_URL": settings.pb_url,
        "CAIRN_NATS_URL": settings.nats_url,
        "CAIRN_ADMIN_EMAIL": admin.email,
        "CAIRN_ADMIN_PASSWORD": admin.password,
    }


def start_bridge(settings: StackSettings, layout: DataLayout, admin: Superuser,
                 timeout: float = 60) -> ManagedProcess:
    """The bridge is ready once it has reconciled and follows PocketBase's events."""
    port = settings.bridge_metrics_port
    proc = ManagedProcess(
        name="cairn-bridge",
        argv=[sys.executable, "-m", "pb_hooks_bridge", "run", "--metrics-port", str(port)],
        log_path=layout.logs_dir / "cairn-bridge.log",
        env=sidecar_env(settings, admin),
    )
    proc.start()
    proc.wait_until(lambda: _reconciled(port), timeout, "cairn-bridge reconciled")
    return proc


def start_router(settings: StackSettings, layout: DataLayout, admin: Superuser,
                 timeout: float = 60) -> ManagedProcess:
    """The router is ready once it follows PocketBase's rules."""
    port = settings.router_metrics_port
    proc = ManagedProcess(
        name="cairn-router",
        argv=[sys.executable, "-m", "rule_router", "run", "--metrics-port", str(port)],
        log_path=layout.logs_dir / "cairn-router.log",
        env=sidecar_env(settings, admin),
    )
    proc.start()
    proc.wait_until(lambda: _metric(port, "cairn_router_pocketbase_connected") >= 1,
                    timeout, "cairn-router following PocketBase")
    return proc


def _reconciled(port: int) -> bool:
    return _metric(port, "cairn_bridge_reconciliations_total") >= 1


def _metric(port: int, name: str) -> float:
    for line in http_get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
