"""Operator/SYS bootstrap: idempotent, private files, refuses to paper over lost keys."""

from __future__ import annotations

import hashlib
import stat

import nats
import pytest
from nats.errors import NoServersError

from cairn_common import creds, natsjwt, nkey
from cairn_common.layout import DataLayout
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.errors import BootstrapError


def _snapshot(layout: DataLayout) -> dict[str, str]:
    files = [*layout.secrets_dir.iterdir(), layout.nats_include]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_bootstrap_is_idempotent_and_private(tmp_path):
    layout = DataLayout(tmp_path)
    first = bootstrap(layout)
    assert first.changed, "a fresh data dir must get key material"
    before = _snapshot(layout)
    second = bootstrap(layout)
    assert second.changed == []
    assert second.operator_public == first.operator_public
    assert _snapshot(layout) == before
    assert stat.S_IMODE(layout.secrets_dir.stat().st_mode) == 0o700
    for path in [*layout.secrets_dir.iterdir(), layout.nats_include]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_fresh_data_dir_is_private(tmp_path):
    layout = DataLayout(tmp_path / "new" / "data")
    bootstrap(layout)
    for directory in (layout.root, layout.root.parent, layout.secrets_dir, layout.nats_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_loose_seed_stops_bootstrap_with_the_fix(tmp_path):
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    layout.operator_seed.chmod(0o644)
    with pytest.raises(BootstrapError, match=r"operator\.nk .*mode 0644.*fix with: chmod 600"):
        bootstrap(layout)
    assert stat.S_IMODE(layout.operator_seed.stat().st_mode) == 0o644, "refused, not fixed"
    layout.operator_seed.chmod(0o600)
    assert bootstrap(layout).changed == []


def test_generated_jwts_are_consistent(tmp_path):
    layout = DataLayout(tmp_path)
    result = bootstrap(layout)
    op = natsjwt.decode(layout.operator_jwt.read_text().strip())
    sys_account = natsjwt.decode(layout.sys_account_jwt.read_text().strip())
    assert op["sub"] == op["iss"] == result.operator_public
    assert op["nats"]["type"] == "operator"
    assert op["nats"]["system_account"] == result.system_account
    assert sys_account["iss"] == result.operator_public
    assert sys_account["nats"]["type"] == "account"
    include = layout.nats_include.read_text()
    assert f'system_account: "{result.system_account}"' in include
    assert layout.sys_account_jwt.read_text().strip() in include


def test_corrupt_operator_seed_stops_bootstrap(tmp_path):
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    layout.operator_seed.write_text("SOAAAAthis-is-not-a-seed\n")
    with pytest.raises(BootstrapError, match=r"operator\.nk is corrupt"):
        bootstrap(layout)
    assert layout.operator_seed.read_text() == "SOAAAAthis-is-not-a-seed\n"


def test_seed_of_wrong_kind_is_corrupt(tmp_path):
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    layout.operator_seed.write_bytes(nkey.create("user").seed)
    with pytest.raises(BootstrapError, match="user key, expected operator"):
        bootstrap(layout)


def test_missing_operator_seed_with_derived_files_is_refused(tmp_path):
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    jwt_before = layout.operator_jwt.read_text()
    layout.operator_seed.unlink()
    with pytest.raises(BootstrapError, match="would orphan every NATS account"):
        bootstrap(layout)
    assert not layout.operator_seed.exists(), "no new operator may be created"
    assert layout.operator_jwt.read_text() == jwt_before


def test_missing_sys_seed_with_derived_files_is_refused(tmp_path):
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    layout.sys_account_seed.unlink()
    with pytest.raises(BootstrapError, match=r"sys_account\.nk is missing"):
        bootstrap(layout)


def test_lost_derived_files_are_remade_from_the_same_seeds(tmp_path):
    layout = DataLayout(tmp_path)
    first = bootstrap(layout)
    layout.nats_include.unlink()
    layout.sys_user_creds.unlink()
    again = bootstrap(layout)
    assert again.operator_public == first.operator_public
    assert layout.nats_include.exists() and layout.sys_user_creds.exists()


async def test_sys_user_can_ping_the_server(nats_env):
    nc = await nats.connect(
        nats_env.url, user_credentials=str(nats_env.layout.sys_user_creds), allow_reconnect=False
    )
    try:
        reply = await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=3)
        assert b'"server"' in reply.data
    finally:
        await nc.close()


async def test_user_of_unknown_account_is_refused(nats_env, tmp_path):
    operator = nkey.from_seed(nats_env.layout.operator_seed.read_bytes(), "operator")
    account = nkey.create("account")  # signed by our operator, but never pushed to the server
    natsjwt.encode(natsjwt.account_claims(account.public_key.decode(), "ghost"), operator)
    user = nkey.create("user")
    token = natsjwt.encode(natsjwt.user_claims(user.public_key.decode(), "ghost-user"), account)
    path = tmp_path / "ghost.creds"
    creds.write(path, token, user.seed.decode())
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(
            nats_env.url, user_credentials=str(path), allow_reconnect=False,
            max_reconnect_attempts=0, connect_timeout=5, error_cb=on_error,
        )
    assert any("authorization" in str(e).lower() for e in errors), errors
