"""Stack settings from CAIRN_* environment variables (SPEC §2), validated once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cairn_common.nats_urls import join_nats_urls

MAX_NATS_NODES = 5


class SettingsError(ValueError):
    """An environment variable has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class StackSettings:
    data_dir: Path
    nats_port: int
    nats_monitor_port: int
    pb_port: int
    bridge_metrics_port: int
    router_metrics_port: int
    admin_email: str | None
    admin_password: str | None
    demo: bool
    # cluster mode (CAIRN_NATS_NODES, default 1): node i (1-based) listens on
    # nats_port + i - 1, nats_monitor_port + i - 1 and nats_cluster_port + i - 1
    nats_nodes: int = 1
    nats_cluster_port: int = 6222
    nats_ws_port: int = 9222  # NATS over WebSocket for the dashboard (node i: + i - 1)

    @property
    def nats_ws_urls(self) -> tuple[str, ...]:
        """Every node's WebSocket URL (what the dashboard connects to)."""
        return tuple(f"ws://127.0.0.1:{self.nats_ws_port + i}" for i in range(self.nats_nodes))

    @property
    def nats_url(self) -> str:
        """Node 1 (the only node by default)."""
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def nats_urls(self) -> tuple[str, ...]:
        """Every node's client URL, node 1 first."""
        return tuple(f"nats://127.0.0.1:{self.nats_port + i}" for i in range(self.nats_nodes))

    @property
    def nats_url_list(self) -> str:
        """`CAIRN_NATS_URL` for the sidecars: every node, comma-separated."""
        return join_nats_urls(self.nats_urls)

    @property
    def nats_replicas(self) -> int:
        """Replicas of the tenants' streams: 3 from three nodes on, else 1."""
        return 3 if self.nats_nodes >= 3 else 1

    def nats_ports(self) -> list[tuple[str, int]]:
        """Every port the NATS nodes listen on, named for messages."""
        ports = []
        for i in range(self.nats_nodes):
            suffix = "" if i == 0 else f"+{i}"
            ports += [(f"CAIRN_NATS_PORT{suffix}", self.nats_port + i),
                      (f"CAIRN_NATS_MONITOR_PORT{suffix}", self.nats_monitor_port + i),
                      (f"CAIRN_NATS_WS_PORT{suffix}", self.nats_ws_port + i)]
            if self.nats_nodes > 1:
                ports.append((f"CAIRN_NATS_CLUSTER_PORT{suffix}", self.nats_cluster_port + i))
        return ports

    @property
    def pb_url(self) -> str:
        return f"http://127.0.0.1:{self.pb_port}"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name}={value} is outside 1..65535")
    return value


def load(env: Mapping[str, str] | None = None) -> StackSettings:
    env = os.environ if env is None else env
    demo_raw = env.get("CAIRN_DEMO", "1").strip().lower()
    if demo_raw not in {"0", "1", "true", "false", "yes", "no", ""}:
        raise SettingsError(f"CAIRN_DEMO={demo_raw!r}: use 1 or 0")
    email = env.get("CAIRN_ADMIN_EMAIL", "").strip() or None
    password = env.get("CAIRN_ADMIN_PASSWORD", "") or None
    if bool(email) != bool(password):
        raise SettingsError("set both CAIRN_ADMIN_EMAIL and CAIRN_ADMIN_PASSWORD, or neither")
    if email and "@" not in email:
        raise SettingsError(f"CAIRN_ADMIN_EMAIL={email!r} is not an email address")
    if password is not None and len(password) < 10:
        raise SettingsError("CAIRN_ADMIN_PASSWORD must be at least 10 characters (PocketBase)")
    nodes_raw = env.get("CAIRN_NATS_NODES", "").strip() or "1"
    if not nodes_raw.isdigit() or not 1 <= int(nodes_raw) <= MAX_NATS_NODES:
        raise SettingsError(f"CAIRN_NATS_NODES={nodes_raw!r}: use 1 (default) to "
                            f"{MAX_NATS_NODES}; 3 is a cluster that survives one node's loss")
    settings = StackSettings(
        data_dir=Path(env.get("CAIRN_DATA_DIR", "").strip() or "./data").resolve(),
        nats_port=_port(env, "CAIRN_NATS_PORT", 4222),
        nats_monitor_port=_port(env, "CAIRN_NATS_MONITOR_PORT", 8222),
        pb_port=_port(env, "CAIRN_PB_PORT", 8090),
        bridge_metrics_port=_port(env, "CAIRN_BRIDGE_METRICS_PORT", 9091),
        router_metrics_port=_port(env, "CAIRN_ROUTER_METRICS_PORT", 9092),
        admin_email=email,
        admin_password=password,
        demo=demo_raw in {"1", "true", "yes", ""},
        nats_nodes=int(nodes_raw),
        nats_cluster_port=_port(env, "CAIRN_NATS_CLUSTER_PORT", 6222),
        nats_ws_port=_port(env, "CAIRN_NATS_WS_PORT", 9222),
    )
    named = [*settings.nats_ports(), ("CAIRN_PB_PORT", settings.pb_port),
             ("CAIRN_BRIDGE_METRICS_PORT", settings.bridge_metrics_port),
             ("CAIRN_ROUTER_METRICS_PORT", settings.router_metrics_port)]
    ports = [port for _, port in named]
    if len(set(ports)) != len(ports) or max(ports) > 65535:
        raise SettingsError("CAIRN_NATS_PORT, CAIRN_NATS_MONITOR_PORT, CAIRN_NATS_WS_PORT, "
                            "CAIRN_PB_PORT, "
                            "CAIRN_BRIDGE_METRICS_PORT and CAIRN_ROUTER_METRICS_PORT must "
                            "differ (and with CAIRN_NATS_NODES=N, each NATS port is followed "
                            f"by N-1 more), got {', '.join(f'{n}={p}' for n, p in named)}")
    return settings
