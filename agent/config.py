"""agent.yaml: strict, typed, with a sane default for every key but `device.code`.

An unknown key or a wrong type stops the agent with a message naming the key and file.
The security whitelists (commands, services, log paths, `exporters_allowed`) live only
here: desired config from PocketBase may change intervals and exporters, never a whitelist,
and only within the bounds below (SPEC §11 "Quotas").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from agent.errors import ConfigError
from cairn_common.durations import DAY, MINUTE, DurationError, human, parse_seconds
from cairn_common.nats_urls import NatsUrlError, parse_nats_urls

_INTERNAL = frozenset({"base_dir", "local_exporters"})  # not keys of the file
CODE_PATTERN = re.compile(r"^[a-z0-9-]{3,64}$")
CODE_RULE = "must match [a-z0-9-]{3,64}"
SLUG_PATTERN = re.compile(r"^[a-z0-9-]{1,63}$")
SLUG_RULE = "must be a tenant slug ([a-z0-9-], at most 63)"


@dataclass(frozen=True)
class IntervalBound:
    """The allowed range of one interval, in seconds.

    `local_min` only catches typos in agent.yaml ("60ms"): that file belongs to whoever owns
    the machine, who also writes the whitelists. `desired_min` is the quota on
    devices.config, which any tenant operator writes for every device at once.
    `maximum` holds for both.
    """

    local_min: float
    desired_min: float
    maximum: float


# The one table of interval bounds (README "cairn-agent", SPEC §11 "Quotas").
INTERVAL_BOUNDS: dict[str, IntervalBound] = {
    "heartbeat": IntervalBound(local_min=1.0, desired_min=5.0, maximum=DAY),
    "service": IntervalBound(local_min=1.0, desired_min=5.0, maximum=DAY),
    "system": IntervalBound(local_min=1.0, desired_min=10.0, maximum=DAY),
    "inventory": IntervalBound(local_min=MINUTE, desired_min=MINUTE, maximum=7 * DAY),
}
MAX_DESIRED_EXPORTERS = 8  # devices.config may list this many exporter URLs at most
DEFAULT_EXPORTERS = ("http://localhost:9100/metrics", "http://localhost:9182/metrics")


@dataclass(frozen=True)
class DeviceConfig:
    code: str = ""
    tenant: str = ""  # the tenant's slug; empty: the bare code (devices made before 1764000008)

    @property
    def login(self) -> str:
        """The PocketBase login identity: <tenant slug>/<code> (codes are unique per tenant)."""
        return f"{self.tenant}/{self.code}" if self.tenant else self.code


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
    # every node of the cluster (an entry may itself be a comma-separated list)
    urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    creds_file: str = "agent.creds"
    seed_file: str = "agent.nk"
    tls: TlsConfig = field(default_factory=TlsConfig)
    # how often the link pings its server: a hung node is left after about 3 pings
    ping_interval: float = 20.0


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
    exporters: tuple[str, ...] = DEFAULT_EXPORTERS
    # exact URLs or globs devices.config may choose besides the local `exporters` list
    exporters_allowed: tuple[str, ...] = ()
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    base_dir: Path = Path(".")  # where relative paths in the file resolve (its folder)
    # `exporters` as agent.yaml set it, kept across desired-config changes (None: exporters)
    local_exporters: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.local_exporters is None:
            object.__setattr__(self, "local_exporters", self.exporters)

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
    if config.nats.urls:  # none: _check says so
        try:
            urls = parse_nats_urls(config.nats.urls, f"{source}: nats.urls")
        except NatsUrlError as exc:
            raise ConfigError(str(exc)) from None
        config = replace(config, nats=replace(config.nats, urls=urls))
    _check(config, source)
    return config


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name not in _INTERNAL}
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
        return duration(value, key, source)
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


def duration(value: Any, key: str, source: str) -> float:
    """A duration in the grammar every Cairn file shares (cairn_common.durations)."""
    try:
        return parse_seconds(value)
    except DurationError as exc:
        raise ConfigError(f"{source}: {key} {exc}") from None


PING_MIN, PING_MAX = 0.5, 600.0  # seconds, nats.ping_interval


def _check(config: AgentConfig, source: str) -> None:
    code = config.device.code
    if not code:
        raise ConfigError(f"{source}: device.code is required")
    if not CODE_PATTERN.match(code):
        raise ConfigError(f"{source}: device.code {code!r} {CODE_RULE}")
    tenant = config.device.tenant
    if tenant and not SLUG_PATTERN.match(tenant):
        raise ConfigError(f"{source}: device.tenant {tenant!r} {SLUG_RULE}")
    if not config.nats.urls:
        raise ConfigError(f"{source}: nats.urls must list at least one server")
    if not PING_MIN <= config.nats.ping_interval <= PING_MAX:
        raise ConfigError(f"{source}: nats.ping_interval must be between {human(PING_MIN)} "
                          f"and {human(PING_MAX)}")
    if config.commands.max_output_bytes < 1024:
        raise ConfigError(f"{source}: commands.max_output_bytes must be at least 1024")
    if config.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{source}: logging.level must be debug, info, warning or error")
    for name, bound in INTERVAL_BOUNDS.items():
        value = getattr(config.intervals, name)
        if not bound.local_min <= value <= bound.maximum:
            raise ConfigError(f"{source}: intervals.{name} is {human(value)}; it must be "
                              f"between {human(bound.local_min)} and {human(bound.maximum)}")
    for index, pattern in enumerate(config.exporters_allowed):
        if (problem := _pattern_problem(pattern)) is not None:
            raise ConfigError(f"{source}: exporters_allowed[{index}] {pattern!r} {problem}; "
                              f"expected an http(s) URL or glob such as "
                              f"\"http://localhost:*/metrics\"")


# -- exporter URLs devices.config may choose ------------------------------------------------
# A desired URL is accepted when it is exactly in the local `exporters` or `exporters_allowed`,
# or matches a glob there. Globs are fnmatch, matched per part: the scheme exactly, the
# host[:port] (where `[` `]` are literal, for IPv6) and the path apart, so a `*` in the path
# can never reach another host. URLs matched by a glob must be plain: http(s), printable
# ASCII, a bare host[:port] (no user@), no backslash, fragment or dot segments.

_HOST_PORT = re.compile(r"^(?:\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::\d{1,5})?$")
_HOST_GLOB = re.compile(r"^[a-z0-9.\-:*?\[\]]+$")
_PLAIN = re.compile(r"^[\x21-\x7e]+$")


def _split(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port], path?query), lower-cased but for the path; None if no "://"."""
    scheme, sep, tail = url.partition("://")
    if not sep:
        return None
    cut = tail.find("/")
    host, rest = (tail, "") if cut < 0 else (tail[:cut], tail[cut:])
    return scheme.lower(), host.lower(), rest


def _plain_problem(text: str) -> str | None:
    if not _PLAIN.match(text) or "\\" in text or "#" in text:
        return "has spaces, non-ASCII, a backslash or a fragment"
    parts = _split(text)
    if parts is None or parts[0] not in ("http", "https"):
        return "is not http:// or https://"
    return None


def _pattern_problem(pattern: str) -> str | None:
    if (problem := _plain_problem(pattern)) is not None:
        return problem
    _, host, _ = _split(pattern) or ("", "", "")
    if not _HOST_GLOB.match(host):
        return "has a bad host[:port] part"
    return None


def exporter_refusal(url: str, config: AgentConfig) -> str | None:
    """Why devices.config may not point this agent at `url`, or None when it may."""
    if url in (config.local_exporters or ()) or url in config.exporters_allowed:
        return None
    if (problem := _plain_problem(url)) is not None:
        return problem
    scheme, host, rest = _split(url) or ("", "", "")
    if not _HOST_PORT.match(host):
        return "has a bad host[:port] part (user@host is refused)"
    path = rest.split("?", 1)[0]
    if any(seg.lower().replace("%2e", ".") in (".", "..") for seg in path.split("/")):
        return "has a . or .. path segment"
    for pattern in config.exporters_allowed:
        p_scheme, p_host, p_rest = _split(pattern) or ("", "", "")
        if (scheme == p_scheme and fnmatchcase(host, p_host.replace("[", "[[]"))
                and fnmatchcase(rest, p_rest)):
            return None
    return "is neither in the local exporters nor matched by exporters_allowed"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def to_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective config as plain data (check-config prints it)."""
    def convert(obj: Any) -> Any:
        if is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in fields(obj)
                    if f.name not in _INTERNAL}
        if isinstance(obj, tuple):
            return [convert(x) for x in obj]
        return obj
    return convert(config)
