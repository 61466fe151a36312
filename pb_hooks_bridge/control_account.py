"""Cairn's own NATS account (`cairn-control`), where bridges keep their leader lease.

The lease needs JetStream (a KV bucket) and the system account has none, and no tenant's
account may hold it. So the bridge makes one more account, signed by the operator like
every other: its seed and a user's creds live next to the operator's in the data
directory's secrets (0600), written once by whichever bridge runs first and then only
read, and its JWT is pushed on `$SYS.REQ.CLAIMS.UPDATE` at every start (the same JWT
each time, so two bridges pushing it race harmlessly). Its JetStream quota is tiny: one
key in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from cairn_common import creds, filemodes, natsjwt, nkey
from cairn_common.layout import DataLayout
from pb_hooks_bridge.errors import BridgeError

NAME = "cairn-control"
LIMITS = {"mem_storage": 1024 * 1024, "disk_storage": 1024 * 1024, "streams": 4,
          "consumer": 16, "conn": 64}


@dataclass(frozen=True)
class ControlAccount:
    public_key: str
    jwt: str  # the account JWT (operator-signed)
    user_jwt: str
    user_seed: str


def _seed_path(layout: DataLayout) -> Path:
    return layout.secrets_dir / "control_account.nk"


def _creds_path(layout: DataLayout) -> Path:
    return layout.secrets_dir / "control_user.creds"


def ensure(layout: DataLayout, operator: object) -> ControlAccount:
    """The control account and its user, made on first use (race-free: a second bridge
    starting at the same moment reads what the first one wrote)."""
    seed_path, creds_path = _seed_path(layout), _creds_path(layout)
    if not seed_path.exists():
        account = nkey.create("account")
        _write_once(seed_path, account.seed.decode() + "\n")
    try:
        account = nkey.from_seed(seed_path.read_bytes(), "account")
    except nkey.NkeyError as exc:
        raise BridgeError(f"{seed_path} is corrupt ({exc}); restore it from backup") from exc
    public = account.public_key.decode()
    if not creds_path.exists():
        user = nkey.create("user")
        token = natsjwt.encode(natsjwt.user_claims(user.public_key.decode(), "cairn-bridge"),
                               account)
        _write_once(creds_path, creds.render(token, user.seed.decode()))
    user_jwt, user_seed = creds.read(creds_path)
    if natsjwt.decode(user_jwt).get("iss") != public:
        raise BridgeError(f"{creds_path} was not issued by {seed_path}; remove both to "
                          "make new ones")
    account_jwt = natsjwt.encode(
        natsjwt.account_claims(public, NAME, limits=LIMITS, iat=_made_at(seed_path)),
        operator)
    return ControlAccount(public, account_jwt, user_jwt, user_seed)


async def push(nc: NATS, control: ControlAccount, timeout: float = 5.0) -> None:
    """Make the account known to the servers (their full resolvers keep it)."""
    msg = await nc.request("$SYS.REQ.CLAIMS.UPDATE", control.jwt.encode(), timeout=timeout)
    try:
        answer = json.loads(msg.data)
    except ValueError:
        answer = {}
    if "error" in answer or answer.get("data", {}).get("code") != 200:
        raise BridgeError(f"the NATS server refused the {NAME} account: {msg.data[:200]!r}")


def _made_at(path: Path) -> int:
    """A fixed iat (the seed file's age), so every push of this account is the same JWT."""
    return int(path.stat().st_mtime)


def _write_once(path: Path, text: str) -> None:
    """Create `path` 0600 unless it exists (then the other writer won; its content stays)."""
    filemodes.private_dir(path.parent, tighten=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # atomic, and fails if another bridge made it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
