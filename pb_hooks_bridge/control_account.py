"""Cairn's own NATS account (`cairn-control`), where bridges keep their leader lease.

The lease needs JetStream (a KV bucket) and the system account has none, and no tenant's
account may hold it. So there is one more account, signed by the operator like every
other. `cairn-bridge bootstrap` makes it (`create`), with the operator and SYS: its seed
and one user's creds live next to theirs in secrets/ (0600). A running bridge only reads
them (`load`) and refuses to start without them: a bridge that made its own would lease
in a bucket of its own, and two bridges would both lead. The account JWT is pushed on
`$SYS.REQ.CLAIMS.UPDATE` at every start (the same JWT each time, its `iat` the seed file's
age, so two bridges pushing it race harmlessly). Its JetStream quota is tiny.

One agreed identity. Bootstrap also writes the control account's public key into the
operator JWT, as the tag `cairn-control:<key>`, so it travels in `nats/operator.conf`,
the include every NATS node must be given anyway. Before it pushes anything a bridge asks
every server for its varz (`$SYS.REQ.SERVER.PING.VARZ`, which shows the operator JWTs the
server trusts, tags included) and refuses to lead (`ForeignControlAccount`, naming both
keys) when a server trusts another operator or names another control account. So the
servers decide which control account is the cluster's, whichever bridge starts first, and
a second host with its own `control_account.nk` (or its own bootstrap) never leads. A
server whose operator JWT names no control account (an operator.conf from before this
check) is accepted with a warning: run bootstrap and give every node the new include.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nkeys
from nats.aio.client import Client as NATS

from cairn_common import creds, filemodes, natsjwt, nkey
from cairn_common.layout import DataLayout
from pb_hooks_bridge.errors import BootstrapError, BridgeError

log = logging.getLogger(__name__)

NAME = "cairn-control"
TAG_PREFIX = "cairn-control:"  # + the account's public key, in the operator JWT's tags
LIMITS = {"mem_storage": 1024 * 1024, "disk_storage": 1024 * 1024, "streams": 4,
          "consumer": 16, "conn": 64}
VARZ = "$SYS.REQ.SERVER.PING.VARZ"
COPY_HINT = ("copy secrets/control_account.nk and secrets/control_user.creds (or the whole "
             "secrets/ directory) from the first bridge host")


class ControlAccountError(BridgeError):
    """The control account is missing, unreadable, or cannot be checked against the servers."""


class ForeignControlAccount(ControlAccountError):
    """The servers were set up with another control account (or operator): leading here
    would elect a second leader."""


@dataclass(frozen=True)
class ControlAccount:
    public_key: str
    jwt: str  # the account JWT (operator-signed)
    user_jwt: str
    user_seed: str
    seed_path: Path


def seed_path(layout: DataLayout) -> Path:
    return layout.secrets_dir / "control_account.nk"


def creds_path(layout: DataLayout) -> Path:
    return layout.secrets_dir / "control_user.creds"


def tag(public_key: str) -> str:
    return TAG_PREFIX + public_key


def tagged_keys(operator_claims: dict[str, Any]) -> list[str]:
    """The control account keys an operator JWT's tags name (servers may lower-case tags;
    nkeys are base32, so upper-casing gives the key back)."""
    tags = (operator_claims.get("nats") or {}).get("tags") or []
    return [t[len(TAG_PREFIX):].strip().upper() for t in tags
            if isinstance(t, str) and t.lower().startswith(TAG_PREFIX)]


def create(layout: DataLayout, changed: list[str]) -> str:
    """Bootstrap's part: the account seed and its user's creds, made when absent (race-free:
    a second bootstrap at the same moment reads what the first wrote). Returns the key."""
    seed, user = seed_path(layout), creds_path(layout)
    if not seed.exists():
        if user.exists():
            raise BootstrapError(
                f"{seed} is missing but {user} made from it exists. Restore the seed from "
                f"backup or {COPY_HINT}; a new one would not be the control account the other "
                f"bridges and the NATS servers know. To start over on purpose, delete {user}.")
        if _write_once(seed, nkey.create("account").seed.decode() + "\n"):
            changed.append(str(seed))
    account = _read_seed(seed, BootstrapError)
    public = account.public_key.decode()
    if not _issued_by(user, public):  # absent or foreign: any user of the account will do
        filemodes.write_private(user, _new_user(account))
        changed.append(str(user))
    return public


def require(layout: DataLayout) -> str:
    """The start-up check: the control account's public key, or ControlAccountError naming
    the missing file and the fix (nothing is created here)."""
    seed, user = seed_path(layout), creds_path(layout)
    for path in (seed, user):
        if not path.exists():
            raise ControlAccountError(
                f"refusing to start: {path} is missing (the `{NAME}` NATS account, where "
                f"bridges elect their leader). On the first bridge host run `cairn-bridge "
                f"bootstrap` (make run does); on another bridge host {COPY_HINT}. A bridge "
                f"never makes this account itself: one of its own would elect a second leader.")
    public = _read_seed(seed, ControlAccountError).public_key.decode()
    if not _issued_by(user, public):
        raise ControlAccountError(
            f"refusing to start: {user} was not issued by {seed} ({public}). Run "
            f"`cairn-bridge bootstrap` to issue it again, or {COPY_HINT}.")
    return public


def load(layout: DataLayout, operator: nkeys.KeyPair) -> ControlAccount:
    """The account as bootstrap made it, its JWT signed by this data dir's operator."""
    public = require(layout)
    user_jwt, user_seed = creds.read(creds_path(layout))
    seed = seed_path(layout)
    account_jwt = natsjwt.encode(
        natsjwt.account_claims(public, NAME, limits=LIMITS, iat=_made_at(seed)), operator)
    return ControlAccount(public, account_jwt, user_jwt, user_seed, seed)


async def verify(nc: NATS, control: ControlAccount, operator_public: str,
                 timeout: float = 5.0, straggle: float = 1.0) -> None:
    """ForeignControlAccount unless every server trusts this operator and names no other
    control account than ours (see the module docstring). Asks before the first push."""
    replies = await _varz(nc, timeout, straggle)
    if not replies:
        raise ControlAccountError(f"no NATS server answered {VARZ} within {timeout:.0f} s; "
                                  f"cannot check the {NAME} account")
    others: dict[str, list[str]] = {}
    untagged: list[str] = []
    for server, varz in replies.items():
        trusted = {str(c.get("sub")): c for c in varz.get("trusted_operators_claim") or []
                   if isinstance(c, dict)}
        if operator_public not in trusted:
            raise ForeignControlAccount(
                f"refusing to lead: NATS server {server} trusts operator "
                f"{', '.join(sorted(trusted)) or '(none)'}, not this bridge's "
                f"{operator_public} (secrets/operator.nk). Copy secrets/ from the host that "
                "bootstrapped the servers' operator.conf.")
        keys = tagged_keys(trusted[operator_public])
        if not keys:
            untagged.append(server)
        for key in keys:
            if key != control.public_key:
                others.setdefault(key, []).append(server)
    if others:
        theirs = "; ".join(f"{key} (server {', '.join(names)})" for key, names in others.items())
        raise ForeignControlAccount(
            f"refusing to lead: this bridge's {NAME} account {control.public_key} (from "
            f"{control.seed_path}) is not the one the NATS servers were set up with: "
            f"{theirs}, named by the operator JWT in their operator.conf. Two control "
            "accounts would elect two leaders. Copy secrets/control_account.nk and "
            "secrets/control_user.creds (or the whole secrets/) from the bridge host whose "
            "`cairn-bridge bootstrap` made that operator.conf, then start this bridge again.")
    if untagged:
        log.warning("NATS servers name no control account in their operator JWT, so a second "
                    "bridge with another one would not be refused: run `cairn-bridge "
                    "bootstrap` and give every node the new nats/operator.conf",
                    extra={"servers": sorted(untagged), "control_account": control.public_key})


async def push(nc: NATS, control: ControlAccount, timeout: float = 5.0) -> None:
    """Make the account known to the servers (their full resolvers keep it)."""
    msg = await nc.request("$SYS.REQ.CLAIMS.UPDATE", control.jwt.encode(), timeout=timeout)
    try:
        answer = json.loads(msg.data)
    except ValueError:
        answer = {}
    if "error" in answer or answer.get("data", {}).get("code") != 200:
        if await _held_already(nc, control, timeout):
            return  # e.g. another host pushed the same account with a later iat
        raise BridgeError(f"the NATS server refused the {NAME} account: {msg.data[:200]!r}")


async def _held_already(nc: NATS, control: ControlAccount, timeout: float) -> bool:
    """Do the servers hold this very account, signed by the same operator, with the same
    claims? (Its iat is the seed file's time, so a copy of secrets/ that did not keep
    file times makes a second, later JWT of the same account; the resolver then refuses
    the older one, which is harmless.)"""
    try:
        msg = await nc.request(f"$SYS.REQ.ACCOUNT.{control.public_key}.CLAIMS.LOOKUP", b"",
                               timeout=timeout)
        held = natsjwt.decode(msg.data.decode())
        ours = natsjwt.decode(control.jwt)
    except (nats.errors.Error, TimeoutError, natsjwt.JwtError, UnicodeDecodeError):
        return False
    return (held.get("sub") == ours.get("sub") and held.get("iss") == ours.get("iss")
            and held.get("nats") == ours.get("nats"))


async def _varz(nc: NATS, timeout: float, straggle: float) -> dict[str, dict[str, Any]]:
    """Every server's varz by name: all of them (as many as the JetStream meta group has
    peers), or those that answered within `straggle` seconds of the first."""
    got: dict[str, dict[str, Any]] = {}
    want = 1
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(VARZ, b"", reply=inbox)
            wait = timeout
            while len(got) < want:
                try:
                    msg = await sub.next_msg(timeout=wait)
                except TimeoutError:  # nats.errors.TimeoutError is one too
                    break
                wait = straggle
                server, varz = _read_varz(msg.data)
                if server:
                    got[server] = varz
                    want = max(want, _cluster_size(varz))
        finally:
            await sub.unsubscribe()
    except nats.errors.Error as exc:
        raise ControlAccountError(f"cannot ask the NATS servers ({VARZ}) to check the {NAME} "
                                  f"account: {exc.__class__.__name__}: {exc}") from exc
    return got


def _read_varz(data: bytes) -> tuple[str, dict[str, Any]]:
    try:
        body = json.loads(data)
    except ValueError:
        return "", {}
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return "", {}
    server = body.get("server") if isinstance(body.get("server"), dict) else {}
    return str(server.get("name") or server.get("id") or ""), body["data"]


def _cluster_size(varz: dict[str, Any]) -> int:
    meta = (varz.get("jetstream") or {}).get("meta") or {}
    size = meta.get("cluster_size")
    return size if isinstance(size, int) and size > 0 else 1


def _read_seed(path: Path, error: type[BridgeError]) -> nkeys.KeyPair:
    try:
        return nkey.from_seed(path.read_bytes(), "account")
    except nkey.NkeyError as exc:
        raise error(f"{path} is corrupt ({exc}); restore it from backup or {COPY_HINT}") from exc


def _issued_by(path: Path, public: str) -> bool:
    """Does `path` hold a readable user creds issued by account `public`?"""
    if not path.exists():
        return False
    try:
        token, seed = creds.read(path)
        nkey.from_seed(seed, "user")
        return natsjwt.decode(token).get("iss") == public
    except (creds.CredsError, natsjwt.JwtError, nkey.NkeyError):
        return False


def _new_user(account: nkeys.KeyPair) -> str:
    user = nkey.create("user")
    token = natsjwt.encode(natsjwt.user_claims(user.public_key.decode(), "cairn-bridge"),
                           account)
    return creds.render(token, user.seed.decode())


def _made_at(path: Path) -> int:
    """A fixed iat (the seed file's age), so every push of this account is the same JWT."""
    return int(path.stat().st_mtime)


def _write_once(path: Path, text: str) -> bool:
    """Create `path` 0600 unless it exists (then the other writer won; its content stays)."""
    filemodes.private_dir(path.parent, tighten=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # atomic, and fails if another bootstrap made it first
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
