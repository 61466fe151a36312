"""The device's key and JWT: register a public key through PocketBase and wait for the JWT.

Used by enrollment, renewal and rotation. Only the public key ever leaves the machine; the
seed is written 0600 next to the creds file, and `cairn-agent run` refuses to start when the
seed, creds or secret file is open to other local users (`check_secret_files`).
"""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nkeys

from agent.collectors.inventory import os_info
from agent.context import VERSION
from agent.control import ControlClient, ControlError
from agent.errors import EnrollmentError
from cairn_common import creds, filemodes, natsjwt, nkey
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.renewable import RenewError, is_newer, lifetime

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Issued:
    jwt: str
    expires: int | None
    record: dict[str, Any]


def host_facts() -> dict[str, str]:
    info = os_info()
    name = " ".join(x for x in (info.get("name"), info.get("version")) if x)
    return {"hostname": socket.gethostname(), "os": name or platform.platform(),
            "agent_version": VERSION}


def load_or_create_seed(path: Path) -> nkeys.KeyPair:
    """Re-running enrollment keeps the key; a corrupt seed file is an error, not replaced."""
    if path.exists():
        try:
            return nkey.from_seed(path.read_bytes(), "user")
        except nkey.NkeyError as exc:
            raise EnrollmentError(f"{path} is not a user nkey seed ({exc}); move it away to "
                                  "enroll with a new key") from exc
    kp = nkey.create("user")
    filemodes.write_private(path, kp.seed.decode() + "\n")
    return kp


def secret_files(config: AgentConfig) -> list[tuple[Path, str]]:
    """The files whose content would let someone act as this device, with what each holds."""
    files = [(config.path(config.nats.seed_file), "the device's NATS seed"),
             (config.path(config.nats.creds_file), "the device's NATS creds")]
    if config.server.secret_file:
        files.append((config.path(config.server.secret_file), "the device's enrollment secret"))
    return files


def check_secret_files(config: AgentConfig) -> None:
    """filemodes.NotPrivateError, naming the chmod fix, if one of them is open to other local
    users, a symlink or not ours: refused, not fixed (someone may have copied it already)."""
    for path, what in secret_files(config):
        filemodes.check_private(path, what)


async def register_key(server_url: str, login: str, secret: str, public_key: str,
                       timeout: float = 60.0, stale: str = "") -> Issued:
    """Write our public key (and host facts) to our own device row; wait for the JWT.

    `login`: <tenant slug>/<code>, or a bare code (DeviceConfig.login).

    `stale`: the JWT being renewed. Only a JWT newer than it is an answer (the row still
    holds the old one until the bridge has signed again)."""
    async with PocketBase(server_url) as pb:
        try:
            record = await pb.auth_with_password("devices", login, secret)
        except PocketBaseError as exc:
            if exc.status == 403 and exc.reason:  # the control plane says why (devices.pb.js)
                raise EnrollmentError(f"PocketBase at {server_url} refused device {login!r}: "
                                      f"{exc.reason}") from exc
            if exc.status in (400, 401, 403):
                hint = "" if "/" in login else (
                    "; a device made since codes are unique per tenant logs in as "
                    f"<tenant slug>/{login}: enroll with --tenant")
                raise EnrollmentError(
                    f"PocketBase at {server_url} refused device {login!r}: wrong tenant, "
                    f"code or secret, or the device is disabled{hint}") from exc
            raise EnrollmentError(f"cannot reach PocketBase at {server_url}: {exc}") from exc
        try:
            await pb.update("devices", record["id"], {"nats_public_key": public_key,
                                                      **host_facts()})
        except PocketBaseError as exc:
            raise EnrollmentError(f"PocketBase refused our key: {exc}") from exc
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = record
        while time.monotonic() < deadline:
            last = await pb.get("devices", record["id"])
            token = last.get("nats_jwt") or ""
            if token and last.get("status") == "active" and (not stale or is_newer(token, stale)):
                claims = natsjwt.decode(token, verify=False)
                if claims.get("sub") == public_key:
                    return Issued(token, claims.get("exp"), last)
            if last.get("error") and last.get("nats_public_key") == public_key:
                raise EnrollmentError(f"the control plane refused our key: {last['error']}")
            await asyncio.sleep(0.2)
        raise EnrollmentError(
            f"no NATS credentials within {timeout:.0f} s (device status "
            f"{last.get('status') or 'pending'!r}): is cairn-bridge running?")


async def fetch_own_record(server_url: str, login: str, secret: str) -> dict[str, Any]:
    """Our device row, read as the device itself."""
    async with PocketBase(server_url) as pb:
        try:
            record = await pb.auth_with_password("devices", login, secret)
            return await pb.get("devices", record["id"])
        except PocketBaseError as exc:
            raise EnrollmentError(f"cannot read our device row from {server_url}: {exc}") from exc


def write_creds(path: Path, jwt: str, seed: str) -> None:
    creds.write(path, jwt, seed)


class DeviceCredentials:
    """The device's creds file as the supervised link's credentials (cairn_common/renewable).

    Cached in memory (read at start and after every write here). Renewal asks the bridge
    over our own NATS connection while the JWT we hold is still valid (agent/control.py:
    no password, no bcrypt check in PocketBase). Only when the JWT expired, or there is
    no connection to ask on, does it register our key again through PocketBase (a
    password login) and wait for a JWT newer than the stale one. A lock keeps a renewal
    and a rotation from registering at the same time (the second one sees the first
    one's JWT and is done)."""

    def __init__(self, config: AgentConfig, secret: Callable[[], str],
                 control: ControlClient | None = None) -> None:
        self.config = config
        self.secret = secret
        self.control = control
        self.lock = asyncio.Lock()
        self._cached: tuple[str, str] | None = None
        self.renewed = {"nats": 0, "password": 0}  # renewals by path (health, tests)

    @property
    def creds_path(self) -> Path:
        return self.config.path(self.config.nats.creds_file)

    @property
    def seed_path(self) -> Path:
        return self.config.path(self.config.nats.seed_file)

    def current(self) -> tuple[str, str]:
        if self._cached is None:
            self._cached = creds.read(self.creds_path)
        return self._cached

    def store(self, jwt: str, seed: str) -> None:
        write_creds(self.creds_path, jwt, seed)
        self._cached = (jwt, seed)

    def reload(self) -> None:
        self._cached = None

    async def register(self, kp: nkeys.KeyPair, stale: str = "") -> None:
        """Register `kp`'s public key and store the JWT signed for it (caller holds lock)."""
        issued = await register_key(self.config.server.url, self.config.device.login,
                                    self.secret(), kp.public_key.decode(), stale=stale)
        self.store(issued.jwt, kp.seed.decode())

    async def renew(self, stale: str) -> None:
        async with self.lock:
            self.reload()
            if is_newer(self.current()[0], stale):
                return  # a rotation (or a renewal racing us) already brought one
            try:
                kp = load_or_create_seed(self.seed_path)
            except (EnrollmentError, OSError) as exc:
                raise RenewError(str(exc)) from exc
            if self.control is not None and self.control.usable and not _expired(stale):
                try:
                    token = await self.control.renew(kp.public_key.decode(), stale)
                except ControlError as exc:  # the link tries again later, still no password
                    raise RenewError(f"renewal over NATS: {exc}") from exc
                self.store(token, kp.seed.decode())
                self.renewed["nats"] += 1
                log.info("NATS JWT renewed over NATS")
                return
            log.info("renewing the NATS JWT through PocketBase (it expired, or there is no "
                     "connection to ask on)")
            try:
                await self.register(kp, stale)
            except (EnrollmentError, OSError) as exc:
                raise RenewError(str(exc)) from exc
            self.renewed["password"] += 1


def _expired(token: str) -> bool:
    exp = lifetime(token)[1] if token else None
    return exp is not None and exp <= time.time()
