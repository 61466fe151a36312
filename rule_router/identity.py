"""The router's own, least-privilege identity (SPEC §11): no superuser login, no hidden
fields read.

PocketBase: a `sidecars` record (kind router), logged in from a 0600 login file. It may
read rules and tenants, write only rules.status/error, and read the `nats_users` rows
named like itself. NATS: the router makes its own user nkey (kept in a 0600 seed file);
only the public key goes to its sidecars row, and the bridge signs a JWT for it in every
active tenant. The creds for a tenant are that row's `jwt` plus the local seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nkeys

from cairn_common import nkey
from cairn_common.filemodes import read_private, write_private
from cairn_common.pocketbase import PocketBase
from cairn_common.sidecar_login import COLLECTION, SidecarLogin, read_login

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityFiles:
    login_file: Path
    seed_file: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], data_dir: Path) -> IdentityFiles:
        secrets_dir = data_dir / "secrets"
        login = env.get("CAIRN_ROUTER_LOGIN_FILE") or secrets_dir / "router-login.json"
        seed = env.get("CAIRN_ROUTER_SEED_FILE") or secrets_dir / "router.nk"
        return cls(login_file=Path(login), seed_file=Path(seed))


class RouterIdentity:
    def __init__(self, files: IdentityFiles) -> None:
        self.files = files
        self.login: SidecarLogin = read_login(files.login_file)
        self.user: nkeys.KeyPair = load_or_create_seed(files.seed_file)
        self.public_key = self.user.public_key.decode()
        self.seed = self.user.seed.decode()

    @property
    def name(self) -> str:
        """Also the name of its `nats_users` rows and of its durable consumers."""
        return self.login.name

    async def sign_in(self, pb: PocketBase) -> None:
        """Log in and register the public key on our own row (only when it changed)."""
        record = await pb.auth_with_password(COLLECTION, self.login.name, self.login.password)
        if record.get("nats_public_key") != self.public_key:
            await pb.update(COLLECTION, record["id"], {"nats_public_key": self.public_key})
            log.info("router key registered", extra={"public_key": self.public_key})

    def creds_for(self, row: dict[str, object]) -> tuple[str, str] | None:
        """(JWT, seed) from one of our `nats_users` rows, or None while it has no JWT for
        our current key (the bridge is still signing it)."""
        jwt = row.get("jwt")
        if not isinstance(jwt, str) or not jwt or row.get("public_key") != self.public_key:
            return None
        return jwt, self.seed


def load_or_create_seed(path: Path) -> nkeys.KeyPair:
    """The router's user nkey; made on first start, never leaves this file (0600: a seed
    other local users could read is refused)."""
    if path.exists() or path.is_symlink():
        return nkey.from_seed(read_private(path, "the router's NATS seed").strip(), "user")
    user = nkey.create("user")
    write_private(path, user.seed.decode() + "\n")
    return user
