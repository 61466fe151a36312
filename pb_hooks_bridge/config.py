"""Bridge settings: flags override environment, environment overrides defaults."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cairn_common.layout import DataLayout
from pb_hooks_bridge.errors import BridgeError

DAY = 86_400


@dataclass(frozen=True)
class BridgeConfig:
    data_dir: Path
    pb_url: str
    nats_url: str
    admin_email: str
    admin_password: str
    user_jwt_ttl: int = 7 * DAY
    telemetry_max_age: int = 7 * DAY
    metrics_port: int = 0  # 0 = no /metrics endpoint
    push_window: float = 0.002  # seconds to coalesce account changes before a push
    concurrency: int = 64  # records handled at once (one at a time per record)

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_dir)


def load(env: Mapping[str, str] | None = None, **overrides: object) -> BridgeConfig:
    """Read CAIRN_* variables; the superuser falls back to `$CAIRN_DATA_DIR/superuser.json`."""
    env = os.environ if env is None else env
    data_dir = Path(str(overrides.pop("data_dir", None) or env.get("CAIRN_DATA_DIR") or "./data"))
    data_dir = data_dir.resolve()
    pb_url = env.get("CAIRN_PB_URL") or f"http://127.0.0.1:{env.get('CAIRN_PB_PORT', '8090')}"
    nats_url = env.get("CAIRN_NATS_URL") or f"nats://127.0.0.1:{env.get('CAIRN_NATS_PORT', '4222')}"
    email = env.get("CAIRN_ADMIN_EMAIL", "")
    password = env.get("CAIRN_ADMIN_PASSWORD", "")
    if not (email and password):
        saved = DataLayout(data_dir).superuser_file
        try:
            login = json.loads(saved.read_text())
            email, password = login["email"], login["password"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BridgeError(
                "no PocketBase superuser: set CAIRN_ADMIN_EMAIL and CAIRN_ADMIN_PASSWORD "
                f"(or run `make run` once so {saved} exists): {exc.__class__.__name__}"
            ) from exc
    values: dict[str, object] = {
        "data_dir": data_dir, "pb_url": pb_url, "nats_url": nats_url,
        "admin_email": email, "admin_password": password,
    }
    for name, key in (("user_jwt_ttl", "CAIRN_USER_JWT_TTL"),
                      ("telemetry_max_age", "CAIRN_TELEMETRY_MAX_AGE"),
                      ("metrics_port", "CAIRN_BRIDGE_METRICS_PORT")):
        raw = env.get(key)
        if raw:
            try:
                values[name] = int(raw)
            except ValueError:
                raise BridgeError(f"{key}={raw!r} must be an integer (seconds or port)") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = BridgeConfig(**values)  # type: ignore[arg-type]
    if config.user_jwt_ttl < 300:
        raise BridgeError("CAIRN_USER_JWT_TTL must be at least 300 seconds")
    return config
