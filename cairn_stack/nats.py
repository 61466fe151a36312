"""Run the real nats-server with the repository's nats-server.conf in operator mode."""

from __future__ import annotations

import os
from pathlib import Path

from cairn_common.filemodes import private_dir
from cairn_common.layout import DataLayout
from cairn_stack.processes import ManagedProcess, ProcessError, binary, http_ok

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_NATS_CONF = REPO_ROOT / "nats-server.conf"
# Room for 512 tenants at the default quotas (512 MiB disk, 8 MiB memory each); nothing
# is allocated up front, the server only refuses quotas beyond these sums.
DEFAULT_MAX_FILE_STORE = "256GB"
DEFAULT_MAX_MEMORY_STORE = "4GB"


def nats_process(layout: DataLayout, port: int, monitor_port: int,
                 ws_port: int = -1) -> ManagedProcess:
    """A nats-server for this data dir. Bootstrap must have written the include file first.
    Its JetStream store and resolver are 0700 (the process runs with umask 077)."""
    for directory in (layout.nats_dir, layout.nats_store_dir, layout.nats_resolver_dir):
        private_dir(directory)
    link = link_config(layout.nats_conf, REPO_NATS_CONF)
    return ManagedProcess(
        name="nats-server",
        argv=[binary("nats-server"), "-c", str(link)],
        log_path=layout.logs_dir / "nats-server.log",
        env=server_env(port, monitor_port, layout.nats_store_dir, layout.nats_resolver_dir,
                       ws_port),
    )


def server_env(port: int, monitor_port: int, store_dir: Path, resolver_dir: Path,
               ws_port: int = -1) -> dict[str, str]:
    """The $CAIRN_NATS_* variables nats-server.conf reads (a ws_port of -1: any free one,
    as tests use it; read it back from /varz)."""
    return {
        "CAIRN_NATS_PORT": str(port),
        "CAIRN_NATS_MONITOR_PORT": str(monitor_port),
        "CAIRN_NATS_WS_PORT": str(ws_port),
        "CAIRN_NATS_STORE_DIR": str(store_dir),
        "CAIRN_NATS_RESOLVER_DIR": str(resolver_dir),
        # every tenant's JetStream quota is reserved against these (limits.py)
        "CAIRN_NATS_MAX_FILE_STORE": os.environ.get("CAIRN_NATS_MAX_FILE_STORE")
        or DEFAULT_MAX_FILE_STORE,
        "CAIRN_NATS_MAX_MEMORY_STORE": os.environ.get("CAIRN_NATS_MAX_MEMORY_STORE")
        or DEFAULT_MAX_MEMORY_STORE,
    }


def link_config(link: Path, target: Path) -> Path:
    """`link` -> `target` (the repository's config), so includes resolve beside `link`."""
    if link.is_symlink() or link.exists():
        if not link.is_symlink() or os.readlink(link) != str(target):
            link.unlink()
    if not link.exists():
        link.symlink_to(target)
    return link


def start_nats(
    layout: DataLayout, port: int, monitor_port: int, timeout: float = 20, ws_port: int = -1
) -> ManagedProcess:
    proc = nats_process(layout, port, monitor_port, ws_port)
    proc.start()
    ready_or_stop(proc, timeout, monitor_port)
    return proc


def ready_or_stop(proc: ManagedProcess, timeout: float, monitor_port: int) -> None:
    """Wait for health; a server that never gets there is stopped, not left behind."""
    # js-server-only: a stream left on disk by a deleted tenant's account must not make the
    # server look unhealthy (that account is gone from the resolver on purpose)
    try:
        proc.wait_until(
            lambda: http_ok(f"http://127.0.0.1:{monitor_port}/healthz?js-server-only=true"),
            timeout, "nats-server healthy",
        )
    except ProcessError:
        proc.stop()
        raise
