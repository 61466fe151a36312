"""Start the Cairn sidecars (bridge, router) as child processes of the stack.

Logins reach them through 0600 files, never environment variables (SPEC §11): the bridge
gets the superuser login (the only sidecar that holds it), the router a least-privilege
`sidecars` login of its own, made here with the superuser login.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from cairn_common.filemodes import write_private
from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBase
from cairn_stack.processes import ManagedProcess, ProcessError, http_get_text
from cairn_stack.settings import StackSettings
from cairn_stack.superuser import Superuser
from pb_hooks_bridge.sidecar_logins import ensure_sidecar_login

ROUTER_NAME = "cairn-router"
# Never handed to a child: a sidecar reads what it needs from its own login file.
SECRET_ENV = ("CAIRN_ADMIN_EMAIL", "CAIRN_ADMIN_PASSWORD")


def base_env(settings: StackSettings) -> dict[str, str]:
    return {
        "CAIRN_DATA_DIR": str(settings.data_dir),
        "CAIRN_PB_URL": settings.pb_url,
        "CAIRN_NATS_URL": settings.nats_url_list,  # every node in cluster mode
        "CAIRN_NATS_REPLICAS": str(settings.nats_replicas),
    }


def bridge_login_file(layout: DataLayout, admin: Superuser) -> Path:
    """The superuser login as a 0600 file: `superuser.json` when it holds this login,
    else a copy under secrets/ (the login came from CAIRN_ADMIN_* variables)."""
    try:
        saved = json.loads(layout.superuser_file.read_text())
        if saved == {"email": admin.email, "password": admin.password}:
            return layout.superuser_file
    except (OSError, ValueError):
        pass
    path = layout.secrets_dir / "bridge-login.json"
    write_private(path, json.dumps({"email": admin.email, "password": admin.password}) + "\n")
    return path


def router_login_file(layout: DataLayout) -> Path:
    return layout.secrets_dir / "router-login.json"


async def prepare_router_login(settings: StackSettings, layout: DataLayout,
                               admin: Superuser) -> Path:
    path = router_login_file(layout)
    async with PocketBase(settings.pb_url) as pb:
        await pb.auth_superuser(admin.email, admin.password)
        await ensure_sidecar_login(pb, ROUTER_NAME, "router", path)
    return path


def start_bridge(settings: StackSettings, layout: DataLayout, admin: Superuser,
                 timeout: float = 60) -> ManagedProcess:
    """Ready once it has reconciled and follows PocketBase's events."""
    env = {**base_env(settings),
           "CAIRN_BRIDGE_LOGIN_FILE": str(bridge_login_file(layout, admin))}
    return _start("cairn-bridge", "pb_hooks_bridge", settings.bridge_metrics_port,
                  "cairn_bridge_reconciliations_total", layout, env, timeout)


def start_router(settings: StackSettings, layout: DataLayout, admin: Superuser,
                 timeout: float = 60) -> ManagedProcess:
    """Ready once it follows PocketBase's rules, logged in as its own sidecar record."""
    login = asyncio.run(prepare_router_login(settings, layout, admin))
    env = {**base_env(settings), "CAIRN_ROUTER_LOGIN_FILE": str(login),
           "CAIRN_ROUTER_SEED_FILE": str(layout.secrets_dir / "router.nk")}
    return _start("cairn-router", "rule_router", settings.router_metrics_port,
                  "cairn_router_pocketbase_connected", layout, env, timeout)


def _start(name: str, module: str, port: int, ready_metric: str, layout: DataLayout,
           env: dict[str, str], timeout: float) -> ManagedProcess:
    """A sidecar with /metrics on `port`; ready when `ready_metric` reaches 1."""
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", module, "run", "--metrics-port", str(port)],
        log_path=layout.logs_dir / f"{name}.log",
        env=env,
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
