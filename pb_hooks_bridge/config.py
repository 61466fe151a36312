"""Bridge settings: flags override environment, environment overrides defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cairn_common.layout import DataLayout
from cairn_common.nats_urls import NatsUrlError, parse_nats_urls
from cairn_common.superuser import LoginMissing, superuser_login
from pb_hooks_bridge.errors import BridgeError

DAY = 86_400
MIN_USER_JWT_TTL = 60  # seconds; service users are renewed at half their lifetime


@dataclass(frozen=True)
class BridgeConfig:
    data_dir: Path
    pb_url: str
    nats_url: str  # one URL or a comma-separated list (every node of a cluster)
    admin_email: str
    admin_password: str
    user_jwt_ttl: int = 7 * DAY
    person_jwt_ttl: int = 12 * 3600  # a person's JWT: one working day, then log in again
    telemetry_max_age: int = 7 * DAY
    metrics_port: int = 0  # 0 = no /metrics endpoint
    push_window: float = 0.002  # seconds to coalesce account changes before a push
    concurrency: int = 64  # identity records handled at once (one at a time per record)
    commands_in_flight: int = 256  # command requests awaiting a reply at once, overall
    commands_per_tenant: int = 16  # ... per tenant (one at a time per device)
    nats_replicas: int = 1  # TELEMETRY/ALERTS replicas (3 on a 3+ node cluster)

    def __post_init__(self) -> None:
        try:
            parse_nats_urls(self.nats_url)
        except NatsUrlError as exc:
            raise BridgeError(str(exc)) from None
        if not 1 <= self.nats_replicas <= 5:
            raise BridgeError(f"CAIRN_NATS_REPLICAS must be 1..5 (got {self.nats_replicas})")
        if self.user_jwt_ttl < MIN_USER_JWT_TTL:
            raise BridgeError(f"CAIRN_USER_JWT_TTL must be at least {MIN_USER_JWT_TTL} seconds "
                              f"(got {self.user_jwt_ttl})")
        if self.person_jwt_ttl < MIN_USER_JWT_TTL:
            raise BridgeError(f"CAIRN_PERSON_JWT_TTL must be at least {MIN_USER_JWT_TTL} "
                              f"seconds (got {self.person_jwt_ttl})")

    @property
    def nats_urls(self) -> tuple[str, ...]:
        """Every server URL in `nats_url`, for nats-py's `servers=[...]`."""
        return parse_nats_urls(self.nats_url)

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
    try:
        email, password = superuser_login(env, data_dir)
    except LoginMissing as exc:
        raise BridgeError(str(exc)) from exc
    values: dict[str, object] = {
        "data_dir": data_dir, "pb_url": pb_url, "nats_url": nats_url,
        "admin_email": email, "admin_password": password,
    }
    for name, key in (("user_jwt_ttl", "CAIRN_USER_JWT_TTL"),
                      ("person_jwt_ttl", "CAIRN_PERSON_JWT_TTL"),
                      ("telemetry_max_age", "CAIRN_TELEMETRY_MAX_AGE"),
                      ("metrics_port", "CAIRN_BRIDGE_METRICS_PORT"),
                      ("nats_replicas", "CAIRN_NATS_REPLICAS")):
        raw = env.get(key)
        if raw:
            try:
                values[name] = int(raw)
            except ValueError:
                raise BridgeError(f"{key}={raw!r} must be an integer") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BridgeConfig(**values)  # type: ignore[arg-type]
