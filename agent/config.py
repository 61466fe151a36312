"""agent.yaml: strict, typed, with a sane default for every key but `device.code`.

An unknown key or a wrong type stops the agent with a message naming the key and file.
The security whitelists (commands, services, log paths) live only here: desired config
from PocketBase may change intervals and exporters, never a whitelist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from agent.errors import ConfigError

CODE_PATTERN = re.compile(r"^[a-z0-9-]{3,64}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


@dataclass(frozen=True)
class DeviceConfig:
    code: str = ""


@dataclass(frozen=True)
class ServerConfig:
    url: str = "http://127.0.0.1:8090"
    secret_file: str = ""  # the device's enrollment secret, kept 0600 for JWT renewal


@dataclass(frozen=True)
class TlsConfig:
    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class NatsConfig:
    urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    creds_file: str = "agent.creds"
    seed_file: str = "agent.nk"
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class Intervals:
    heartbeat: float = 60.0
    system: float = 300.0
    service: float = 60.0
    inventory: float = 86400.0


@dataclass(frozen=True)
class CommandsConfig:
    allowed: tuple[str, ...] = ()
    scripts_directory: str = ""
    timeout: float = 30.0
    max_output_bytes: int = 512 * 1024


@dataclass(frozen=True)
class ServicesConfig:
    allowed: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogsConfig:
    allowed_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    json: bool | None = None  # None: JSON when stderr is not a terminal
    file: str = ""
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 3


@dataclass(frozen=True)
class AgentConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    intervals: Intervals = field(default_factory=Intervals)
    exporters: tuple[str, ...] = (
        "http://localhost:9100/metrics", "http://localhost:9182/metrics",
    )
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    base_dir: Path = Path(".")  # where relative paths in the file resolve (its folder)

    def path(self, value: str) -> Path:
        """A path from the config, relative ones resolved against the config's folder."""
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate


def load(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}") from exc
    return from_dict(raw if raw is not None else {}, source=str(path),
                     base_dir=path.parent.resolve())


def from_dict(raw: Any, source: str = "agent.yaml", base_dir: Path = Path(".")) -> AgentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    values = _build(AgentConfig, raw, source, "")
    config = AgentConfig(**values, base_dir=base_dir)
    _check(config, source)
    return config


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "base_dir"}
    for key in raw:
        if key not in known:
            where = f"{prefix}{key}"
            raise ConfigError(f"{source}: unknown key {where!r} "
                              f"(known here: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name in known:
        if name not in raw:
            continue
        key, value, hint = f"{prefix}{name}", raw[name], hints[name]
        if is_dataclass(hint):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping, got {_kind(value)}")
            values[name] = hint(**_build(hint, value, source, f"{key}."))
        else:
            values[name] = _coerce(value, hint, key, source)
    return values


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    text = str(hint)
    if "tuple" in text:
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list of strings, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{source}: {key}[{index}] must be a non-empty string, "
                                  f"got {_kind(item)}")
        return tuple(value)
    if hint is float:
        return _seconds(value, key, source)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {_kind(value)}")
        return value
    if "bool" in text:
        if value is None and "None" in text:
            return None
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {_kind(value)}")
        return value
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {_kind(value)}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {hint}")  # pragma: no cover


def _seconds(value: Any, key: str, source: str) -> float:
    """A duration: a number of seconds, or a string such as "90s", "5m", "24h"."""
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be a duration, got {_kind(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ConfigError(f"{source}: {key} must be a duration like 60, \"90s\", \"5m\", "
                          f"got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{source}: {key} must be greater than zero")
    return seconds


def _check(config: AgentConfig, source: str) -> None:
    code = config.device.code
    if not code:
        raise ConfigError(f"{source}: device.code is required")
    if not CODE_PATTERN.match(code):
        raise ConfigError(f"{source}: device.code {code!r} must match [a-z0-9-]{{3,64}}")
    if not config.nats.urls:
        raise ConfigError(f"{source}: nats.urls must list at least one server")
    if config.commands.max_output_bytes < 1024:
        raise ConfigError(f"{source}: commands.max_output_bytes must be at least 1024")
    if config.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{source}: logging.level must be debug, info, warning or error")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def to_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective config as plain data (check-config prints it)."""
    def convert(obj: Any) -> Any:
        if is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in fields(obj)
                    if f.name != "base_dir"}
        if isinstance(obj, tuple):
            return [convert(x) for x in obj]
        return obj
    return convert(config)
