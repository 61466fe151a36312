"""Where everything lives under the data directory (`CAIRN_DATA_DIR`, default ./data).

All of it is private to the user running Cairn (SPEC §11): the root is 0700 and nothing in
`private_entries` has a group/other bit (see cairn_common/filemodes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def operator_seed(self) -> Path:
        return self.secrets_dir / "operator.nk"

    @property
    def operator_jwt(self) -> Path:
        return self.secrets_dir / "operator.jwt"

    @property
    def sys_account_seed(self) -> Path:
        return self.secrets_dir / "sys_account.nk"

    @property
    def sys_account_jwt(self) -> Path:
        return self.secrets_dir / "sys_account.jwt"

    @property
    def audit_key(self) -> Path:
        return self.secrets_dir / "audit.key"  # cairn_common/audit_key.py

    @property
    def sys_user_creds(self) -> Path:
        return self.secrets_dir / "sys_user.creds"

    @property
    def nats_dir(self) -> Path:
        return self.root / "nats"

    @property
    def nats_conf(self) -> Path:
        """A symlink to the repository's nats-server.conf, so its include resolves here."""
        return self.nats_dir / "nats-server.conf"

    @property
    def nats_include(self) -> Path:
        return self.nats_dir / "operator.conf"

    @property
    def nats_store_dir(self) -> Path:
        return self.nats_dir / "store"

    @property
    def nats_resolver_dir(self) -> Path:
        return self.nats_dir / "resolver"

    @property
    def pb_dir(self) -> Path:
        return self.root / "pocketbase"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def superuser_file(self) -> Path:
        return self.root / "superuser.json"

    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    @property
    def private_entries(self) -> tuple[Path, ...]:
        """What Cairn keeps in the data dir; the launcher tightens and checks all of it."""
        return (self.secrets_dir, self.superuser_file, self.pb_dir, self.nats_dir,
                self.demo_dir, self.logs_dir)
