"""Service users, the CLI around them, renewal and revocation pruning."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from cairn_common import creds, natsjwt, nkey
from pb_hooks_bridge.accounts import Account
from pb_hooks_bridge.identities import Identities
from pb_hooks_bridge.permissions import Permissions
from tests.live import account_ready, connect, eventually, new_tenant, uid


@pytest.fixture
async def tenant(bridge, admin):
    return await account_ready(admin, await new_tenant(admin))


async def test_service_user_lifecycle(tenant, admin, nats_env):
    row = await admin.create("nats_users", {"tenant": tenant["id"], "name": uid("dash"),
                                            "role": "viewer", "active": True})
    issued = await eventually(lambda: _with_creds(admin, row["id"]), 5)
    jwt, seed = creds.parse(issued["creds"])
    assert natsjwt.decode(jwt)["nats"]["pub"]["deny"] == [">"]
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await connect(nats_env.url, jwt, seed, closed_cb=on_closed)
    await admin.update("nats_users", row["id"], {"active": False})
    await asyncio.wait_for(closed.wait(), 5)
    assert nc.is_closed

    async def cleared():
        return (await admin.get("nats_users", row["id"]))["jwt"] == ""

    await eventually(cleared, 5, "jwt cleared on the row")


async def test_service_user_with_unknown_role_gets_error(tenant, admin):
    row = await admin.create("nats_users", {"tenant": tenant["id"], "name": uid("x"),
                                            "role": "no-such-role", "active": True})

    async def errored():
        got = await admin.get("nats_users", row["id"])
        return got if got["error"] else None

    got = await eventually(errored, 5)
    assert "does not exist" in got["error"] and got["jwt"] == ""


def _cli(pb_env, nats_env, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAIRN_DATA_DIR": str(nats_env.layout.root), "CAIRN_PB_URL": pb_env.url,
           "CAIRN_NATS_URL": nats_env.url, "CAIRN_ADMIN_EMAIL": pb_env.admin_email,
           "CAIRN_ADMIN_PASSWORD": pb_env.admin_password}
    return subprocess.run([sys.executable, "-m", "pb_hooks_bridge", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def test_creds_cli_prints_a_working_creds_file(tenant, admin, pb_env, nats_env, tmp_path):
    await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "creds", tenant["slug"], "cairn-bridge")
    assert done.returncode == 0, done.stderr
    jwt, seed = creds.parse(done.stdout)
    nc = await connect(nats_env.url, jwt, seed)
    await nc.close()
    missing = await asyncio.to_thread(_cli, pb_env, nats_env, "creds", "no-such-tenant", "x")
    assert missing.returncode == 1 and "no tenant with slug 'no-such-tenant'" in missing.stderr


async def test_reconcile_cli_prints_a_summary(bridge, pb_env, nats_env):
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "reconcile")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("reconciled in ")
    assert "tenant." in done.stdout


def _account() -> Account:
    return Account(tenant_id="t", slug="s", row_id="r", identity=nkey.create("account"),
                   signing=nkey.create("account"), revocations={}, limits={}, active=True)


def test_jwt_near_expiry_is_renewed():
    identities = Identities(pb=None, pusher=None, roles=None, audit=None, ttl=3600)
    account, user = _account(), nkey.create("user")
    perms = Permissions(["a.>"], [], ["b.>"], [], True)
    public = user.public_key.decode()

    def token(expires_in: int) -> dict:
        claims = natsjwt.user_claims(public, "d", issuer_account=account.public_key,
                                     pub_allow=["a.>"], sub_allow=["b.>"], allow_responses=True,
                                     expires=int(time.time()) + expires_in)
        return identities.current_grant(account, natsjwt.encode(claims, account.signing))

    assert identities.needs_new_jwt(token(3500), public, perms) is None
    assert identities.needs_new_jwt(token(600), public, perms) == "renewal"
    other = Permissions(["c.>"], [], ["b.>"], [], True)
    assert identities.needs_new_jwt(token(3500), public, other) == "permissions changed"
    assert identities.needs_new_jwt(token(3500), nkey.create("user").public_key.decode(),
                                    perms) == "key changed"


def test_old_revocations_are_pruned_and_iat_always_grows():
    account = _account()
    now = int(time.time())
    account.revocations = {"UOLD": now - 10_000, "UNEW": now - 10}
    assert account.prune_revocations(3600) == 1
    assert account.revocations == {"UNEW": now - 10}
    operator = nkey.create("operator")
    iats = []
    for _ in range(5):
        account.sign(operator)
        iats.append(account.last_iat)
    assert iats == sorted(set(iats)), "every account JWT needs a strictly greater iat"


async def _with_creds(admin, row_id):
    row = await admin.get("nats_users", row_id)
    return row if row.get("creds") else None


async def test_metrics_count_what_happened(tenant, admin, pb_env):
    from prometheus_client import generate_latest

    from tests.live import enroll, new_device

    device = await new_device(admin, tenant)
    await enroll(pb_env.url, admin, device)
    await admin.update("devices", device["id"], {"status": "disabled"})
    await eventually(lambda: _cleared(admin, device["id"]), 5)
    text = generate_latest().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['cairn_bridge_identities_issued_total{kind="device"}'] >= 1
    assert values['cairn_bridge_identities_revoked_total{kind="device"}'] >= 1
    assert values["cairn_bridge_account_pushes_total"] >= 1
    assert values["cairn_bridge_reconciliations_total"] >= 1
    assert values["cairn_bridge_event_lag_seconds_count"] >= 1


async def _cleared(admin, device_id):
    return (await admin.get("devices", device_id))["nats_jwt"] == ""
