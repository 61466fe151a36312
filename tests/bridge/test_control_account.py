"""The `cairn-control` account (pb_hooks_bridge/control_account.py): bootstrap makes it and
names it in the operator JWT; a bridge without one refuses to start; a bridge with one of
its own refuses to lead, against the real servers; one with the first host's secrets/
stands by as before."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from bench.bridges import BridgeProcess
from cairn_common import natsjwt, nkey
from cairn_common.filemodes import private_dir, write_private
from cairn_common.layout import DataLayout
from cairn_stack.nats import start_nats
from cairn_stack.processes import free_port
from pb_hooks_bridge import control_account
from pb_hooks_bridge.bootstrap import bootstrap, load_operator, render_include
from pb_hooks_bridge.errors import BootstrapError

# what someone copying "the operator key" to a second host takes, and nothing more
OPERATOR_ONLY = ("operator.nk", "sys_account.nk", "sys_user.creds")


def _operator_claims(layout: DataLayout) -> dict:
    return natsjwt.decode(layout.operator_jwt.read_text().strip())


def test_bootstrap_makes_the_control_account_once(tmp_path):
    layout = DataLayout(tmp_path)
    first = bootstrap(layout)
    seed, user = control_account.seed_path(layout), control_account.creds_path(layout)
    assert {str(seed), str(user)} <= set(first.changed)
    public = nkey.from_seed(seed.read_bytes(), "account").public_key.decode()
    assert first.control_account == public == control_account.require(layout)
    for path in (seed, user):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # the operator JWT in the servers' include names it
    assert control_account.tagged_keys(_operator_claims(layout)) == [public]
    assert layout.operator_jwt.read_text().strip() in layout.nats_include.read_text()
    before = {p: p.read_bytes() for p in (seed, user, layout.operator_jwt, layout.nats_include)}
    again = bootstrap(layout)
    assert again.changed == [] and again.control_account == public
    assert {p: p.read_bytes() for p in before} == before


def test_bootstrap_keeps_a_control_account_an_older_bridge_made(tmp_path):
    """A data dir from before: the account made lazily by a bridge, an operator JWT without
    the tag. The account is kept (it is the one the servers know); the JWT gets the tag."""
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    public = control_account.require(layout)
    seed = control_account.seed_path(layout).read_bytes()
    operator = load_operator(layout)
    claims = natsjwt.operator_claims(operator.public_key.decode(), "cairn",
                                     _operator_claims(layout)["nats"]["system_account"])
    write_private(layout.operator_jwt, natsjwt.encode(claims, operator) + "\n")
    result = bootstrap(layout)
    assert result.control_account == public
    assert control_account.seed_path(layout).read_bytes() == seed
    assert str(layout.operator_jwt) in result.changed
    assert control_account.tagged_keys(_operator_claims(layout)) == [public]


def test_bootstrap_refuses_a_lost_control_seed_whose_creds_remain(tmp_path):
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    control_account.seed_path(layout).unlink()
    with pytest.raises(BootstrapError, match=r"control_account\.nk is missing.*copy secrets/"):
        bootstrap(layout)
    assert not control_account.seed_path(layout).exists()


def _second_host(first: DataLayout, root: Path, only: tuple[str, ...] = ()) -> DataLayout:
    """A second bridge host's data dir: the first host's whole secrets/, or `only` those
    files of it."""
    layout = DataLayout(root)
    private_dir(root)
    if only:
        private_dir(layout.secrets_dir)
        for name in only:
            shutil.copy2(first.secrets_dir / name, layout.secrets_dir / name)
    else:
        shutil.copytree(first.secrets_dir, layout.secrets_dir)
    return layout


def _login(layout: DataLayout, pb_env) -> Path:
    path = layout.root / "bridge-login.json"
    write_private(path, json.dumps({"email": pb_env.admin_email,
                                    "password": pb_env.admin_password}))
    return path


@pytest.mark.parametrize("missing", ["control_account.nk", "control_user.creds"])
@pytest.mark.parametrize("command", ["run", "reconcile"])
def test_a_bridge_without_the_control_account_refuses_to_start(tmp_path, nats_env, pb_env,
                                                               missing, command):
    host = _second_host(nats_env.layout, tmp_path / "host-b")
    (host.secrets_dir / missing).unlink()
    env = {**os.environ, "CAIRN_DATA_DIR": str(host.root), "CAIRN_PB_URL": pb_env.url,
           "CAIRN_NATS_URL": nats_env.url, "CAIRN_BRIDGE_LOGIN_FILE": str(_login(host, pb_env))}
    done = subprocess.run([sys.executable, "-m", "pb_hooks_bridge", command], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"refusing to start: {host.secrets_dir / missing} is missing" in done.stderr
    assert "cairn-bridge bootstrap" in done.stderr
    assert "copy secrets/control_account.nk and secrets/control_user.creds" in done.stderr
    assert not (host.secrets_dir / missing).exists(), "a bridge never makes it itself"


async def _resolver_has(nats_env, public: str) -> bool:
    nc = await nats.connect(nats_env.url, user_credentials=str(nats_env.layout.sys_user_creds))
    try:
        msg = await nc.request(f"$SYS.REQ.ACCOUNT.{public}.CLAIMS.LOOKUP", b"", timeout=3)
        return msg.data.startswith(b"eyJ")
    except nats.errors.TimeoutError:
        return False
    finally:
        await nc.close()


@pytest.mark.timeout(120)
async def test_a_second_bridge_with_its_own_control_account_refuses_to_lead(
        bridge, tmp_path, nats_env, pb_env):
    """Operator and SYS keys copied, then `cairn-bridge bootstrap` on the second host: a
    control account of its own, same operator. Leading would be split brain."""
    ours = control_account.require(nats_env.layout)
    host = _second_host(nats_env.layout, tmp_path / "host-b", only=OPERATOR_ONLY)
    theirs = bootstrap(host).control_account
    assert theirs and theirs != ours
    b = BridgeProcess("bridge-foreign", host, pb_env.url, nats_env.url, _login(host, pb_env))
    try:
        assert b.proc.proc is not None
        code = await asyncio.to_thread(b.proc.proc.wait, 60)
    finally:
        b.proc.stop()
    log = b.proc.log_tail(60)
    assert code == 1, log
    assert "refusing to lead" in log, log
    assert theirs in log and ours in log, log
    assert "secrets/control_account.nk" in log, log
    assert not await _resolver_has(nats_env, theirs), "the foreign account was pushed"
    assert await _resolver_has(nats_env, ours)
    assert bridge.bridge is not None and bridge.bridge.leadership.lease.leading


@pytest.mark.timeout(120)
async def test_a_second_bridge_with_the_first_hosts_secrets_stands_by(bridge, tmp_path,
                                                                      nats_env, pb_env):
    """The positive control: the whole secrets/ copied, the second bridge stands by."""
    host = _second_host(nats_env.layout, tmp_path / "host-b")
    b = BridgeProcess("bridge-copy", host, pb_env.url, nats_env.url, _login(host, pb_env))
    try:
        await b.until("cairn_bridge_leader", 0, 60)
        await asyncio.sleep(1.5)  # past its first lease attempts: still up, still standing by
        assert b.proc.running and b.value("cairn_bridge_leader") == 0
        assert "standing by: another bridge leads" in b.proc.log_tail(60)
    finally:
        b.proc.stop()
    assert bridge.bridge is not None and bridge.bridge.leadership.lease.leading


async def test_verify_names_both_keys_and_a_foreign_operator(nats_env):
    layout = nats_env.layout
    operator = load_operator(layout)
    ours = control_account.load(layout, operator)
    other = control_account.ControlAccount(
        nkey.create("account").public_key.decode(), "", "", "", Path("/elsewhere/x.nk"))
    stranger = nkey.create("operator").public_key.decode()
    nc = await nats.connect(nats_env.url, user_credentials=str(layout.sys_user_creds))
    try:
        await control_account.verify(nc, ours, operator.public_key.decode())
        with pytest.raises(control_account.ForeignControlAccount) as foreign:
            await control_account.verify(nc, other, operator.public_key.decode())
        assert other.public_key in str(foreign.value) and ours.public_key in str(foreign.value)
        with pytest.raises(control_account.ForeignControlAccount,
                           match=f"trusts operator {operator.public_key.decode()}, not "
                                 f"this bridge's {stranger}"):
            await control_account.verify(nc, ours, stranger)
    finally:
        await nc.close()


@pytest.mark.timeout(60)
async def test_servers_whose_operator_names_no_control_account_are_accepted_with_a_warning(
        tmp_path, caplog):
    """An operator.conf from before the check (no tag): nothing to compare, so the bridge
    goes on, and says how to turn the check on."""
    layout = DataLayout(tmp_path)
    result = bootstrap(layout)
    operator = load_operator(layout)
    untagged = natsjwt.encode(natsjwt.operator_claims(
        result.operator_public, "cairn", result.system_account), operator)
    write_private(layout.nats_include, render_include(
        untagged, result.system_account, layout.sys_account_jwt.read_text().strip()))
    port, monitor = free_port(), free_port()
    server = await asyncio.to_thread(start_nats, layout, port, monitor)
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{port}",
                                user_credentials=str(layout.sys_user_creds))
        try:
            with caplog.at_level(logging.WARNING, logger=control_account.__name__):
                await control_account.verify(nc, control_account.load(layout, operator),
                                             result.operator_public)
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(server.stop)
    assert "name no control account" in caplog.text


def test_bootstrap_for_a_running_bridge_makes_no_control_account(tmp_path):
    """`make_control=False` (the bridge's own start): refused before anything is written."""
    layout = DataLayout(tmp_path / "fresh")
    with pytest.raises(control_account.ControlAccountError, match="refusing to start"):
        bootstrap(layout, make_control=False)
    assert not layout.operator_seed.exists() and not control_account.seed_path(layout).exists()
    made = bootstrap(layout).control_account
    assert bootstrap(layout, make_control=False).control_account == made


async def test_a_copy_whose_file_times_differ_still_pushes_the_same_account(bridge, nats_env):
    """secrets/ copied without file times: the same account with another iat. Pushing it
    must not stop a bridge from standing (whether the server keeps the newer copy and
    refuses this one, or takes it: same account, same claims)."""
    import dataclasses

    layout = nats_env.layout
    operator = load_operator(layout)
    ours = control_account.load(layout, operator)
    claims = natsjwt.decode(ours.jwt)
    older = dataclasses.replace(ours, jwt=natsjwt.encode(
        {**claims, "iat": int(claims["iat"]) - 100}, operator))
    nc = await nats.connect(nats_env.url, user_credentials=str(layout.sys_user_creds))
    try:
        await control_account.push(nc, older)
        await control_account.push(nc, ours)  # and back: later tests see the usual copy
        held = await nc.request(f"$SYS.REQ.ACCOUNT.{ours.public_key}.CLAIMS.LOOKUP", b"",
                                timeout=5)
        assert natsjwt.decode(held.data.decode())["nats"] == claims["nats"]
    finally:
        await nc.close()


async def test_more_lease_replicas_than_a_lone_server_has_is_a_clear_error(bridge, nats_env):
    """CAIRN_NATS_REPLICAS=3 against one nats-server: the bridge says what to set, no
    traceback and no endless wait (pb_hooks_bridge/leader.py `Lease.open`). The running
    bridge has pushed the control account the lease lives in."""
    import asyncio

    import pytest

    from pb_hooks_bridge import control_account
    from pb_hooks_bridge.bootstrap import load_operator
    from pb_hooks_bridge.errors import BridgeError
    from pb_hooks_bridge.leader import Lease
    from tests.live import connect

    control = control_account.load(nats_env.layout, load_operator(nats_env.layout))
    nc = await connect(nats_env.url, control.user_jwt, control.user_seed)
    try:
        with pytest.raises(BridgeError, match="CAIRN_NATS_REPLICAS=1"):
            await asyncio.wait_for(Lease(bucket="cairn_lease_r3_probe").open(
                nc, 3, asyncio.Event()), 20)
        assert await asyncio.wait_for(Lease(bucket="cairn_lease_r1_probe").open(
            nc, 1, asyncio.Event()), 20)  # control: one replica opens
        await nc.jetstream().delete_stream("KV_cairn_lease_r1_probe")
    finally:
        await nc.close()
