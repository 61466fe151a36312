"""`cairn login` / `cairn logout` as a person runs them, against the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import nats
import pytest

from cairn_common import creds, natsjwt
from tests.live import account_ready, connect, new_tenant
from tests.people.world import new_person


@pytest.fixture(scope="module")
async def tenant(bridge, admin):
    """One tenant per module (every test makes its own people): the session's router
    follows every tenant there is, and each one more slows its start."""
    return await account_ready(admin, await new_tenant(admin))


async def _cairn(tmp_path: Path, *args: str, password: str = "") -> tuple[int, str, str]:
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("CAIRN_PASSWORD", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cairn_cli", *args, "--dir", str(tmp_path / "cairn"),
        "--password-file", str(secret),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def _works(url: str, path: Path, inbox: str) -> None:
    jwt, seed = creds.read(path)
    nc = await connect(url, jwt, seed, inbox_prefix=inbox)
    await nc.flush(timeout=2)
    await nc.close()


async def _refused(url: str, path: Path) -> None:
    jwt, seed = creds.read(path)
    with pytest.raises(nats.errors.Error):
        await connect(url, jwt, seed, max_reconnect_attempts=0)


async def test_login_writes_creds_and_a_context_and_a_new_login_revokes_the_old(
        tenant, admin, pb_env, nats_env, tmp_path):
    person = await new_person(admin, tenant, "operator")
    inbox = f"_INBOX_person_{person.user['id']}"
    args = ("login", "--server", pb_env.url, "--email", person.email,
            "--nats-url", nats_env.url)
    code, out, err = await _cairn(tmp_path, *args, password=person.password)
    assert code == 0, err
    path = tmp_path / "cairn" / f"{tenant['slug']}.creds"
    assert str(path) in out and "operator" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    context = json.loads(
        (tmp_path / "config" / "nats" / "context" / f"cairn-{tenant['slug']}.json").read_text())
    assert context == {"description": context["description"], "url": nats_env.url,
                       "creds": str(path), "inbox_prefix": inbox}
    await _works(nats_env.url, path, inbox)
    first = path.read_text()
    first_copy = tmp_path / "first.creds"
    first_copy.write_text(first)

    code, _, err = await _cairn(tmp_path, *args, password=person.password)
    assert code == 0, err
    assert natsjwt.decode(creds.parse(path.read_text())[0])["sub"] != \
        natsjwt.decode(creds.parse(first)[0])["sub"]  # a new key for every login
    await _works(nats_env.url, path, inbox)
    await _refused(nats_env.url, first_copy)
    rows = await admin.list("person_keys", filter=f'user = "{person.user["id"]}"')
    assert len(rows) == 1

    kept = tmp_path / "last.creds"
    kept.write_text(path.read_text())
    code, out, err = await _cairn(tmp_path, "logout", "--server", pb_env.url,
                                  password=person.password)
    assert code == 0 and "1 key registration" in out, err
    assert not path.exists()
    await _refused(nats_env.url, kept)
    state = tmp_path / "cairn" / "login.json"
    assert not state.exists()


async def test_a_wrong_password_says_so(tenant, admin, pb_env, tmp_path):
    person = await new_person(admin, tenant, "viewer")
    code, _out, err = await _cairn(tmp_path, "login", "--server", pb_env.url, "--email",
                                  person.email, password="not-" + person.password)
    assert code == 1 and "wrong email or password" in err and "Traceback" not in err
    assert not (tmp_path / "cairn" / f"{tenant['slug']}.creds").exists()
    # control: the right one works
    code, _, err = await _cairn(tmp_path, "login", "--server", pb_env.url, "--email",
                                person.email, "--no-context", password=person.password)
    assert code == 0, err


async def test_a_person_of_no_tenant_is_told_so(tenant, admin, pb_env, tmp_path):
    person = await new_person(admin, tenant, "viewer")
    await admin.delete("memberships", person.membership["id"])
    code, _, err = await _cairn(tmp_path, "login", "--server", pb_env.url, "--email",
                                person.email, password=person.password)
    assert code == 1 and "member of no tenant" in err


async def test_a_server_that_is_not_there_is_named(tmp_path):
    code, _, err = await _cairn(tmp_path, "login", "--server", "http://127.0.0.1:9",
                                "--email", "a@b.c", password="x")
    assert code == 1 and "unreachable" in err and "Traceback" not in err
    code, _, err = await _cairn(tmp_path, "login", "--server", "ftp://x", "--email", "a@b.c",
                                password="x")
    assert code == 1 and "must be an http(s) URL" in err
