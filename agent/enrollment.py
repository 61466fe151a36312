"""`cairn-agent enroll`: own key pair, public key to our device row, JWT back, files written.

Safe to re-run: the existing seed is reused, an existing agent.yaml is kept (it must be for
the same device), and the creds file is replaced atomically. The directory is made 0700 and
every file written 0600; an existing seed open to other users is refused, not reused.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import yaml

from agent import config as config_mod
from agent.credentials import load_or_create_seed, register_key, write_creds
from agent.errors import ConfigError, EnrollmentError
from cairn_common import filemodes
from cairn_common.nats_urls import NatsUrlError, parse_nats_urls

log = logging.getLogger(__name__)

SECRET_ENV = "CAIRN_ENROLL_SECRET"


@dataclass(frozen=True)
class EnrollRequest:
    server: str
    code: str
    directory: Path
    nats_urls: tuple[str, ...]  # every node of the cluster; an entry may be "a,b,c"
    secret: str
    timeout: float = 60.0
    tenant: str = ""  # the tenant's slug: needed by every device made since 1764000008

    @property
    def login(self) -> str:
        return config_mod.DeviceConfig(code=self.code, tenant=self.tenant).login


def read_secret(secret_file: str | None, interactive: bool) -> str:
    """From --secret-file, else $CAIRN_ENROLL_SECRET, else a prompt."""
    if secret_file:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise EnrollmentError(f"cannot read the secret file {secret_file}: "
                                  f"{exc.strerror}") from exc
    elif os.environ.get(SECRET_ENV):
        secret = os.environ[SECRET_ENV].strip()
    elif interactive:
        secret = getpass.getpass("Enrollment secret (the device's PocketBase password): ")
    else:
        raise EnrollmentError(f"no enrollment secret: pass --secret-file, set {SECRET_ENV}, "
                              "or run in a terminal to be prompted")
    if not secret:
        raise EnrollmentError("the enrollment secret is empty")
    return secret


def default_nats_urls(server: str) -> tuple[str, ...]:
    host = urlparse(server).hostname or "127.0.0.1"
    return (f"nats://{host}:4222",)


async def enroll(req: EnrollRequest) -> Path:
    """Returns the path of agent.yaml."""
    if not config_mod.CODE_PATTERN.match(req.code):
        raise EnrollmentError(f"device code {req.code!r} {config_mod.CODE_RULE}")
    if req.tenant and not config_mod.SLUG_PATTERN.match(req.tenant):
        raise EnrollmentError(f"--tenant {req.tenant!r} {config_mod.SLUG_RULE}")
    parsed = urlparse(req.server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise EnrollmentError(f"--server {req.server!r} must be an http(s) URL")
    try:
        parse_nats_urls(req.nats_urls, "--nats")
    except NatsUrlError as exc:
        raise EnrollmentError(str(exc)) from None
    filemodes.private_dir(req.directory)
    config_path = req.directory / "agent.yaml"
    existing = _existing_config(config_path, req)
    if existing and existing.device.tenant and not req.tenant:
        req = replace(req, tenant=existing.device.tenant)  # enroll again: agent.yaml knows it
    base = config_path.parent.resolve()
    seed_path = existing.path(existing.nats.seed_file) if existing else base / "agent.nk"
    creds_path = existing.path(existing.nats.creds_file) if existing else base / "agent.creds"
    secret_path = (existing.path(existing.server.secret_file)
                   if existing and existing.server.secret_file else base / "agent.secret")
    try:
        filemodes.check_private(seed_path, "the device's NATS seed")
    except filemodes.NotPrivateError as exc:
        raise EnrollmentError(f"refusing to enroll: {exc.problem}") from exc
    user = load_or_create_seed(seed_path)
    public = user.public_key.decode()
    log.info("registering public key", extra={"device": req.login, "public_key": public})
    issued = await register_key(req.server, req.login, req.secret, public, req.timeout)
    write_creds(creds_path, issued.jwt, user.seed.decode())
    filemodes.write_private(secret_path, req.secret + "\n")
    if existing is None:
        filemodes.write_private(config_path, render_config(req))
    elif req.tenant and not existing.device.tenant:  # the owner's file: not rewritten
        log.warning("agent.yaml has no device.tenant: the agent logs in by its bare code; "
                    f"add `tenant: {req.tenant}` under `device:` in {config_path}")
    return config_path


def _existing_config(path: Path, req: EnrollRequest) -> config_mod.AgentConfig | None:
    if not path.exists():
        return None
    try:
        existing = config_mod.load(path)
    except ConfigError as exc:
        raise EnrollmentError(f"{exc}; fix or remove it, then enroll again") from exc
    held = existing.device
    if held.code != req.code or (held.tenant and req.tenant and held.tenant != req.tenant):
        raise EnrollmentError(f"{path} belongs to device {held.login!r}, not "
                              f"{req.login!r}; use another --dir")
    return existing


def render_config(req: EnrollRequest) -> str:
    doc = {
        "device": {"code": req.code, **({"tenant": req.tenant} if req.tenant else {})},
        "server": {"url": req.server, "secret_file": "agent.secret"},
        "nats": {"urls": list(parse_nats_urls(req.nats_urls, "--nats")),
                 "creds_file": "agent.creds",
                 "seed_file": "agent.nk"},
    }
    return (
        "# cairn-agent configuration, written by `cairn-agent enroll`.\n"
        "# Every key has a default; see `cairn-agent check-config` for the effective values.\n"
        + yaml.safe_dump(doc, sort_keys=False)
        + "# Whitelists (only this file can widen them):\n"
        "# commands:\n#   allowed: [\"uptime\", \"df -h\"]\n"
        "#   scripts_directory: /etc/cairn-agent/scripts\n"
        "# services:\n#   allowed: [nginx]\n#   watch: [nginx]\n"
        "# logs:\n#   allowed_paths: [/var/log/syslog, \"/var/log/nginx/*.log\"]\n"
    )
