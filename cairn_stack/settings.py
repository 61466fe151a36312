"""Stack settings from CAIRN_* environment variables (SPEC §2), validated once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


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

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

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
    )
    ports = [settings.nats_port, settings.nats_monitor_port, settings.pb_port,
             settings.bridge_metrics_port, settings.router_metrics_port]
    if len(set(ports)) != len(ports):
        raise SettingsError("CAIRN_NATS_PORT, CAIRN_NATS_MONITOR_PORT, CAIRN_PB_PORT, "
                            "CAIRN_BRIDGE_METRICS_PORT and CAIRN_ROUTER_METRICS_PORT must "
                            f"differ, got {ports}")
    return settings
