"""`cairn-bridge devices-bulk` against the real PocketBase and bridge: rows and secrets that
work for a real enrollment, the CSV's mode and no-overwrite rule, skipped duplicates, clear
refusals, and no way for a tenant admin to use it."""

from __future__ import annotations

import asyncio
import csv
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.credentials import register_key
from cairn_common import natsjwt, nkey
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge.bulk_devices import BulkError, BulkRequest, create_devices
from tests.live import account_ready, connect, new_tenant, uid


@pytest.fixture
async def tenant(bridge, admin) -> dict[str, Any]:
    return await account_ready(admin, await new_tenant(admin))


def _cli(pb_env, nats_env, *args: str, email: str = "", password: str = "",
         pb_url: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAIRN_DATA_DIR": str(nats_env.layout.root),
           "CAIRN_PB_URL": pb_url or pb_env.url, "CAIRN_NATS_URL": nats_env.url,
           "CAIRN_ADMIN_EMAIL": email or pb_env.admin_email,
           "CAIRN_ADMIN_PASSWORD": password or pb_env.admin_password}
    env.pop("CAIRN_BRIDGE_LOGIN_FILE", None)
    return subprocess.run([sys.executable, "-m", "pb_hooks_bridge", "devices-bulk", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


async def _codes_in(admin: PocketBase, tenant: dict[str, Any], prefix: str) -> set[str]:
    rows = await admin.list("devices", filter=f'tenant = "{tenant["id"]}" && code ~ "{prefix}-"',
                            fields="code")
    return {r["code"] for r in rows}


async def test_creates_rows_whose_secrets_enroll_a_real_device(tenant, admin, pb_env, nats_env,
                                                               tmp_path):
    prefix, out = uid("bk"), tmp_path / "devices.csv"
    done = await asyncio.to_thread(
        _cli, pb_env, nats_env, "--tenant", tenant["slug"], "--prefix", prefix, "--count", "60",
        "--name-prefix", "site1 ", "--out", str(out), "--chunk", "25")
    assert done.returncode == 0, done.stderr
    assert "created 60 devices" in done.stdout
    assert "devices: 60/60" in done.stderr  # the progress line
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = _rows(out)
    assert [r["code"] for r in rows] == [f"{prefix}-{i:05d}" for i in range(1, 61)]
    assert {r["tenant"] for r in rows} == {tenant["slug"]}
    assert len({r["secret"] for r in rows}) == 60 and min(len(r["secret"]) for r in rows) >= 32
    for row in rows[:3]:  # no secret in any output but the CSV
        assert row["secret"] not in done.stdout + done.stderr
    assert await _codes_in(admin, tenant, prefix) == {r["code"] for r in rows}
    stored = await admin.first("devices", f'code = "{rows[0]["code"]}"')
    assert stored["status"] == "pending" and stored["name"] == f"site1 {rows[0]['code']}"

    # positive control: the secret enrolls a device through PocketBase and the bridge
    user = nkey.create("user")
    issued = await register_key(pb_env.url, f"{rows[0]['tenant']}/{rows[0]['code']}",
                                rows[0]["secret"],
                                user.public_key.decode(), timeout=15)
    assert natsjwt.decode(issued.jwt)["sub"] == user.public_key.decode()
    nc = await connect(nats_env.url, issued.jwt, user.seed.decode())
    await nc.close()
    # ... and a secret is this device's only: another row's secret does not log it in
    async with PocketBase(pb_env.url) as pb:
        with pytest.raises(PocketBaseError) as refused:
            await pb.auth_with_password("devices", f"{tenant['slug']}/{rows[1]['code']}",
                                        rows[2]["secret"])
    assert refused.value.status == 400

    # the same CSV again: refused, file untouched, no rows made
    before = out.read_bytes()
    again = await asyncio.to_thread(
        _cli, pb_env, nats_env, "--tenant", tenant["slug"], "--prefix", uid("bk"), "--count",
        "3", "--out", str(out))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert "--force" in again.stderr and out.read_bytes() == before


async def test_existing_codes_are_skipped_not_failed(tenant, admin, pb_env, nats_env, tmp_path):
    prefix = uid("dup")
    first = await asyncio.to_thread(
        _cli, pb_env, nats_env, "--tenant", tenant["slug"], "--prefix", prefix, "--count", "5",
        "--out", str(tmp_path / "a.csv"))
    assert first.returncode == 0, first.stderr
    old = {r["code"]: r["secret"] for r in _rows(tmp_path / "a.csv")}
    codes = tmp_path / "codes.txt"
    codes.write_text("# batch 2\n" + "\n".join([*old, f"{prefix}-new1", f"{prefix}-new2"]) + "\n")
    second = await asyncio.to_thread(
        _cli, pb_env, nats_env, "--tenant", tenant["slug"], "--codes", str(codes),
        "--out", str(tmp_path / "b.csv"))
    assert second.returncode == 0, second.stderr
    assert "created 2 devices" in second.stdout and "skipped 5 existing" in second.stdout
    assert [r["code"] for r in _rows(tmp_path / "b.csv")] == [f"{prefix}-new1", f"{prefix}-new2"]
    # the existing rows keep their secrets
    async with PocketBase(pb_env.url) as pb:
        await pb.auth_with_password("devices", f"{tenant['slug']}/{prefix}-00001",
                                    old[f"{prefix}-00001"])
    # --force replaces the CSV (still 0600)
    forced = await asyncio.to_thread(
        _cli, pb_env, nats_env, "--tenant", tenant["slug"], "--prefix", uid("f"), "--count",
        "2", "--out", str(tmp_path / "a.csv"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(_rows(tmp_path / "a.csv")) == 2
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o600


async def test_a_code_of_another_tenant_is_made_here_too_and_each_logs_in(tenant, admin,
                                                                          pb_env, tmp_path):
    other = await account_ready(admin, await new_tenant(admin))
    prefix = uid("cross")
    theirs = await create_devices(admin, BulkRequest(other["slug"], [f"{prefix}-1a"],
                                                     tmp_path / "o.csv"))
    ours = await create_devices(admin, BulkRequest(
        tenant["slug"], [f"{prefix}-1a", f"{prefix}-2b"], tmp_path / "t.csv"))
    assert [c.code for c in ours.created] == [f"{prefix}-1a", f"{prefix}-2b"]
    assert ours.skipped == []
    rows = await admin.list("devices", filter=f'code = "{prefix}-1a"', fields="tenant,login")
    assert sorted(r["login"] for r in rows) == sorted(
        [f"{other['slug']}/{prefix}-1a", f"{tenant['slug']}/{prefix}-1a"])
    # each secret opens its own tenant's device, by <tenant>/<code> (and not the other's)
    async with PocketBase(pb_env.url) as pb:
        mine = await pb.auth_with_password("devices", f"{tenant['slug']}/{prefix}-1a",
                                           ours.created[0].secret)
        assert mine["tenant"] == tenant["id"]
        with pytest.raises(PocketBaseError) as refused:
            await pb.auth_with_password("devices", f"{tenant['slug']}/{prefix}-1a",
                                        theirs.created[0].secret)
        assert refused.value.status == 400
    # the same run again skips both: they exist in this tenant now
    again = await create_devices(admin, BulkRequest(
        tenant["slug"], [f"{prefix}-1a", f"{prefix}-2b"], tmp_path / "t2.csv"))
    assert again.created == [] and again.skipped == [f"{prefix}-1a", f"{prefix}-2b"]


@pytest.mark.parametrize(("args", "message"), [
    (["--prefix", "ok", "--count", "0"], "--count must be between 1 and 100000 (got 0)"),
    (["--prefix", "ok", "--count", "100001"], "between 1 and 100000"),
    (["--prefix", "Bad_Prefix", "--count", "2"], "must match [a-z0-9-]"),
    (["--prefix", "ok"], "--prefix needs --count"),
])
async def test_bad_input_is_refused_clearly(tenant, admin, pb_env, nats_env, tmp_path,
                                            args, message):
    out = tmp_path / "x.csv"
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", tenant["slug"], *args,
                                   "--out", str(out))
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not out.exists()


async def test_bad_codes_file_unknown_tenant_and_pocketbase_down(tenant, admin, pb_env,
                                                                 nats_env, tmp_path):
    codes = tmp_path / "codes.txt"
    codes.write_text("good-one\nUPPER\nx\n")
    out = tmp_path / "x.csv"
    bad = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", tenant["slug"],
                                  "--codes", str(codes), "--out", str(out))
    assert bad.returncode == 1 and "2 code(s) do not match [a-z0-9-]{3,64}" in bad.stderr
    assert "'UPPER'" in bad.stderr
    codes.write_text("# nothing yet\n\n")
    empty = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", tenant["slug"],
                                    "--codes", str(codes), "--out", str(out))
    assert empty.returncode == 1 and "lists 0 codes; it must list between 1 and 100000" \
        in empty.stderr
    codes.write_text("twice-a\ntwice-a\n")
    twice = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", tenant["slug"],
                                    "--codes", str(codes), "--out", str(out))
    assert twice.returncode == 1 and "listed twice: twice-a" in twice.stderr
    unknown = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", "no-such-tenant",
                                      "--prefix", "u", "--count", "2", "--out", str(out))
    assert unknown.returncode == 1 and "no tenant with slug 'no-such-tenant'" in unknown.stderr
    down = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", tenant["slug"],
                                   "--prefix", "u", "--count", "2", "--out", str(out),
                                   pb_url="http://127.0.0.1:9")
    assert down.returncode == 1 and "not reachable at http://127.0.0.1:9" in down.stderr
    assert not out.exists()


async def test_a_tenant_admin_cannot_use_it(tenant, admin, pb_env, nats_env, tmp_path):
    """An owner of tenant A (a real login) can neither run the CLI with their login nor call
    the bulk path with their token, for tenant B or even for A; nothing is created."""
    other = await account_ready(admin, await new_tenant(admin))
    email, password = f"{uid('owner')}@cairn.test", "owner-password-123"
    user = await admin.create("users", {"email": email, "password": password,
                                        "passwordConfirm": password, "verified": True})
    await admin.create("memberships", {"user": user["id"], "tenant": tenant["id"],
                                       "role": "owner"})
    prefix = uid("evil")
    for slug in (other["slug"], tenant["slug"]):
        done = await asyncio.to_thread(
            _cli, pb_env, nats_env, "--tenant", slug, "--prefix", prefix, "--count", "2",
            "--out", str(tmp_path / f"{slug}.csv"), email=email, password=password)
        assert done.returncode == 1 and "needs the superuser" in done.stderr, done.stderr
    async with PocketBase(pb_env.url) as as_owner:
        await as_owner.auth_with_password("users", email, password)
        with pytest.raises(BulkError, match="needs the PocketBase superuser login"):
            await create_devices(as_owner, BulkRequest(other["slug"], [f"{prefix}-00001"],
                                                       tmp_path / "direct.csv"))
        # nor through the batch API by hand: the devices createRule applies per sub-request
        with pytest.raises(PocketBaseError):
            await as_owner.batch([{"method": "POST", "url": "/api/collections/devices/records",
                                   "body": {"tenant": other["id"], "code": f"{prefix}-by-hand",
                                            "password": "x" * 20, "passwordConfirm": "x" * 20}}])
    assert await _codes_in(admin, other, prefix) == set()
    assert await _codes_in(admin, tenant, prefix) == set()
    # positive control: the superuser path creates in B
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "--tenant", other["slug"],
                                   "--prefix", prefix, "--count", "2",
                                   "--out", str(tmp_path / "ok.csv"))
    assert done.returncode == 0, done.stderr
    assert await _codes_in(admin, other, prefix) == {f"{prefix}-00001", f"{prefix}-00002"}
