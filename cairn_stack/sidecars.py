"""Start the Cairn sidecars (bridge, later the router) as child processes of the stack."""

from __future__ import annotations

import sys

from cairn_common.layout import DataLayout
from cairn_stack.processes import ManagedProcess, ProcessError, http_get_text
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
    """Ready once it has reconciled and follows PocketBase's events."""
    return _start("cairn-bridge", "pb_hooks_bridge", settings.bridge_metrics_port,
                  "cairn_bridge_reconciliations_total", settings, layout, admin, timeout)


def start_router(settings: StackSettings, layout: DataLayout, admin: Superuser,
                 timeout: float = 60) -> ManagedProcess:
    """Ready once it follows PocketBase's rules."""
    return _start("cairn-router", "rule_router", settings.router_metrics_port,
                  "cairn_router_pocketbase_connected", settings, layout, admin, timeout)


def _start(name: str, module: str, port: int, ready_metric: str, settings: StackSettings,
           layout: DataLayout, admin: Superuser, timeout: float) -> ManagedProcess:
    """A sidecar with /metrics on `port`; ready when `ready_metric` reaches 1."""
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", module, "run", "--metrics-port", str(port)],
        log_path=layout.logs_dir / f"{name}.log",
        env=sidecar_env(settings, admin),
    )
    proc.start()
    try:
        proc.wait_until(lambda: _metric(port, ready_metric) >= 1, timeout, f"{name} ready")
    except ProcessError:
        proc.stop()  # never leave a half-started sidecar behind
        raise
    return proc


def _metric(port: int, name: str) -> float:
    for line in http_get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
