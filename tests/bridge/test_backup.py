"""`cairn-bridge backup` / `restore` against the real servers: a restore on a fresh data
directory brings agents back with their own creds and keeps a revocation made before the
backup; a corrupt backup and a non-empty target are refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest

from cairn_common import creds
from cairn_common.layout import DataLayout
from cairn_common.natsauth import device_inbox, service_inbox
from cairn_common.pocketbase import PocketBase
from cairn_stack.nats import start_nats
from cairn_stack.pocketbase import start_pocketbase
from cairn_stack.processes import free_port
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant

TELEMETRY_DOCS = 5


def _cli(pb_env, nats_env, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAIRN_DATA_DIR": str(nats_env.layout.root), "CAIRN_PB_URL": pb_env.url,
           "CAIRN_NATS_URL": nats_env.url, "CAIRN_ADMIN_EMAIL": pb_env.admin_email,
           "CAIRN_ADMIN_PASSWORD": pb_env.admin_password}
    env.pop("CAIRN_BRIDGE_LOGIN_FILE", None)
    return subprocess.run([sys.executable, "-m", "pb_hooks_bridge", *args], env=env,
                          capture_output=True, text=True, timeout=90)


async def _refused(url: str, jwt: str, seed: str) -> bool:
    errors: list[Exception] = []
    try:
        nc = await connect(url, jwt, seed, errors=errors, max_reconnect_attempts=0)
    except nats.errors.Error:
        return any("authorization" in str(e).lower() for e in errors)
    await nc.close()
    return False


async def _bridge_creds(pb: PocketBase, tenant_id: str) -> tuple[str, str]:
    row = await eventually(lambda: pb.first(
        "nats_users", f'tenant = "{tenant_id}" && name = "cairn-bridge" && creds != ""'),
        10, "cairn-bridge creds")
    return creds.parse(row["creds"])


async def _telemetry(url: str, jwt: str, seed: str, code: str) -> list[dict]:
    nc = await connect(url, jwt, seed, inbox_prefix=service_inbox("cairn-bridge"))
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info("TELEMETRY")
        docs = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("TELEMETRY", seq)
            if msg.subject.startswith(f"agents.{code}."):
                docs.append(json.loads(msg.data))
        return docs
    finally:
        await nc.close()


def _modes(root: Path) -> set[str]:
    """Every entry of the backup that is open to group/other."""
    loose = {str(root)} if stat.S_IMODE(root.stat().st_mode) & 0o077 else set()
    for path in root.rglob("*"):
        if stat.S_IMODE(path.lstat().st_mode) & 0o077:
            loose.add(str(path))
    return loose


@pytest.mark.timeout(120)
async def test_restore_brings_agents_back_and_keeps_revocations(
        bridge, admin, pb_env, nats_env, tmp_path):
    tenant = await account_ready(admin, await new_tenant(admin))
    good = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    bad = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = good.device["code"]

    nc = await connect(nats_env.url, good.jwt, good.seed, inbox_prefix=device_inbox(code))
    js = nc.jetstream(timeout=5)
    for i in range(TELEMETRY_DOCS):
        await js.publish(f"agents.{code}.telemetry.system", json.dumps({"n": i}).encode())
    await nc.close()
    await admin.update("devices", bad.device["id"], {"status": "disabled"})
    await eventually(lambda: _refused(nats_env.url, bad.jwt, bad.seed), 10, "revocation")

    backup = tmp_path / "backup"
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "backup", "--out", str(backup))
    assert done.returncode == 0, done.stderr
    assert "backup: done" in done.stderr
    manifest = json.loads((backup / "manifest.json").read_text())
    assert {"pocketbase.zip", "secrets/operator.nk", "secrets/sys_account.nk",
            "secrets/control_account.nk", "nats/operator.conf"} <= set(manifest["files"])
    mine = next(t for t in manifest["includes"]["tenants"] if t["slug"] == tenant["slug"])
    assert mine["streams"]["TELEMETRY"]["messages"] == TELEMETRY_DOCS
    assert _modes(backup) == set()
    operator_seed = (nats_env.layout.operator_seed.read_text()).strip()
    assert operator_seed not in done.stderr + done.stdout  # progress never shows a seed

    # a fresh data directory, restored, then a fresh nats-server and PocketBase on it
    target = tmp_path / "restored"
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "--data-dir", str(target),
                                   "restore", "--from", str(backup))
    assert done.returncode == 0, done.stderr
    assert "TELEMETRY 5 msgs" in done.stderr
    layout = DataLayout(target)
    nats_port, monitor, pb_port = free_port(), free_port(), free_port()
    servers = [await asyncio.to_thread(start_nats, layout, nats_port, monitor)]
    try:
        servers.append(await asyncio.to_thread(start_pocketbase, layout, pb_port))
        url = f"nats://127.0.0.1:{nats_port}"
        back = await connect(url, good.jwt, good.seed)  # the agent's own, untouched creds
        await back.close()
        assert await _refused(url, bad.jwt, bad.seed), "revoked device connected again"
        async with PocketBase(f"http://127.0.0.1:{pb_port}") as pb:
            await pb.auth_superuser(pb_env.admin_email, pb_env.admin_password)
            row = await pb.get("devices", bad.device["id"])
            assert row["status"] == "disabled"
            jwt, seed = await _bridge_creds(pb, tenant["id"])
        docs = await _telemetry(url, jwt, seed, code)
        assert [d["n"] for d in docs] == list(range(TELEMETRY_DOCS))
        # a full bridge pass on the restored stack re-signs every account from PocketBase:
        # the revocation holds and the agent's creds still work
        restored_env = SimpleNamespace(url=f"http://127.0.0.1:{pb_port}",
                                       admin_email=pb_env.admin_email,
                                       admin_password=pb_env.admin_password)
        passed = await asyncio.to_thread(_cli, restored_env, SimpleNamespace(
            url=url, layout=layout), "reconcile")
        assert passed.returncode == 0, passed.stderr
        back = await connect(url, good.jwt, good.seed)
        await back.close()
        assert await _refused(url, bad.jwt, bad.seed), "a bridge pass undid the revocation"
    finally:
        for proc in reversed(servers):
            await asyncio.to_thread(proc.stop)

    # the target is no longer empty: refused, naming what is in the way
    again = await asyncio.to_thread(_cli, pb_env, nats_env, "--data-dir", str(target),
                                    "restore", "--from", str(backup))
    assert again.returncode == 1 and "is not empty" in again.stderr
    assert "secrets/" in again.stderr

    # an edited file: refused before anything is written, naming the file
    corrupt = tmp_path / "corrupt"
    shutil.copytree(backup, corrupt)
    edited = corrupt / "resolver" / f"{mine['account']}.jwt"
    edited.write_text(edited.read_text()[:-4] + "AAAA")
    fresh = tmp_path / "fresh"
    bad_run = await asyncio.to_thread(_cli, pb_env, nats_env, "--data-dir", str(fresh),
                                      "restore", "--from", str(corrupt))
    assert bad_run.returncode == 1
    assert str(edited) in bad_run.stderr and "corrupt" in bad_run.stderr
    assert not fresh.exists()


async def test_backup_refuses_a_down_pocketbase_and_a_used_out_dir(
        bridge, pb_env, nats_env, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    done = await asyncio.to_thread(_cli, pb_env, nats_env, "backup", "--out", str(used))
    assert done.returncode == 1 and "is not empty (something)" in done.stderr

    down = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}",
                           admin_email=pb_env.admin_email, admin_password=pb_env.admin_password)
    out = tmp_path / "out"
    done = await asyncio.to_thread(_cli, down, nats_env, "backup", "--out", str(out))
    assert done.returncode == 1 and "PocketBase unreachable" in done.stderr
    assert not out.exists()  # nothing half-written (with seeds) is left behind
    nats_down = SimpleNamespace(url=f"nats://127.0.0.1:{free_port()}", layout=nats_env.layout)
    done = await asyncio.to_thread(_cli, pb_env, nats_down, "backup", "--out", str(out))
    assert done.returncode == 1 and "unreachable" in done.stderr and "NATS" in done.stderr
    assert not out.exists()
