"""SPEC §11 "Files": the data dir is 0700, secrets and PocketBase's database are never open to
other local users, and a loose secret makes Cairn refuse to start with the fix it names.

Attack side: loose modes, links and foreign owners are refused (the bridge, the agent, the
launcher). Positive controls: the printed fix, run as a shell command, makes the same command
succeed; the launcher still brings up a working stack on a tightened data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import httpx
import pytest

from agent.enrollment import EnrollRequest, enroll
from agent.errors import EnrollmentError
from cairn_common import filemodes
from cairn_common.layout import DataLayout
from pb_hooks_bridge.bootstrap import bootstrap
from tests.live import DEVICE_PASSWORD, connect, enrolled_agent_site, eventually
from tests.stack.test_stack import _env, _stop

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _apply_fix(message: str) -> None:
    """Run the command after "fix with: " as the user would paste it."""
    command = message.rsplit("fix with: ", 1)[1].strip()
    subprocess.run(["sh", "-c", command], check=True, timeout=10)


def _loose(root: Path, links: Collection[Path] = ()) -> list[str]:
    """Everything under root (root included) with a group/other bit, or a link not allowed."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for path in [Path(dirpath), *(Path(dirpath) / n for n in dirnames + filenames)]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # a server's temp file, gone meanwhile
            if stat.S_ISLNK(st.st_mode):
                if path not in links:
                    bad.append(f"{path} (link)")
            elif st.st_mode & 0o077 or st.st_uid != os.geteuid():
                bad.append(f"{path} ({stat.S_IMODE(st.st_mode):04o})")
    return sorted(set(bad))


# -- filemodes itself ----------------------------------------------------------------------


def test_write_private_is_0600_in_0700_parents_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        target = tmp_path / "new" / "deeper" / "seed.nk"
        filemodes.write_private(target, "SUAXYZ\n")
        filemodes.write_private(target, b"SUAABC\n")  # replaced, not appended
    finally:
        os.umask(old)
    assert target.read_text() == "SUAABC\n"
    assert _mode(target) == 0o600
    assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "deeper") == 0o700
    assert sorted(p.name for p in target.parent.iterdir()) == ["seed.nk"], "no temp file left"


def test_private_dir_creates_and_tightens_but_can_leave_for_the_check(tmp_path):
    made = filemodes.private_dir(tmp_path / "a" / "b")
    assert _mode(tmp_path / "a") == _mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    filemodes.private_dir(loose, tighten=False)
    assert _mode(loose) == 0o755
    filemodes.private_dir(loose)
    assert _mode(loose) == 0o700


@pytest.mark.parametrize(("kind", "mode", "words", "fix"), [
    ("file", 0o644, "is readable by other users (mode 0644)", "chmod 600"),
    ("file", 0o604, "is readable by other users (mode 0604)", "chmod 600"),
    ("file", 0o620, "is writable by other users (mode 0620)", "chmod 600"),
    ("file", 0o700 | 0o010, "is executable by other users (mode 0710)", "chmod 600"),
    ("dir", 0o755, "is readable by other users (mode 0755)", "chmod 700"),
    ("dir", 0o711, "is searchable by other users (mode 0711)", "chmod 700"),
])
def test_loose_modes_are_refused_with_the_fix(tmp_path, kind, mode, words, fix):
    path = tmp_path / "secret"
    if kind == "dir":
        path.mkdir()
    else:
        path.write_text("SOAXYZ\n")
    os.chmod(path, mode)
    with pytest.raises(filemodes.NotPrivateError) as caught:
        filemodes.check_private(path, "the operator seed")
    message = str(caught.value)
    assert message == (f"refusing to start: {path} (the operator seed) {words}; "
                       f"fix with: {fix} {path}")
    assert "SOAXYZ" not in message, "the content is never in a message"
    _apply_fix(message)
    filemodes.check_private(path, "the operator seed")  # control: the fix is enough


def test_a_private_file_and_a_missing_one_pass(tmp_path):
    filemodes.write_private(tmp_path / "ok.nk", "x")
    filemodes.check_private(tmp_path / "ok.nk", "a seed")
    filemodes.check_private(tmp_path / "absent.nk", "a seed")
    filemodes.check_tree(tmp_path / "absent", "nothing")


def test_a_secret_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / "elsewhere" / "operator.nk"
    filemodes.write_private(real, "seed")
    link = tmp_path / "operator.nk"
    link.symlink_to(real)
    for check in (filemodes.check_private, filemodes.read_private):
        with pytest.raises(filemodes.NotPrivateError, match="is a symlink") as caught:
            check(link, "the operator seed")
    _apply_fix(str(caught.value))
    assert not link.is_symlink() and filemodes.read_private(link, "the seed") == "seed"


@ROOT_ONLY
def test_a_secret_of_another_user_is_refused_even_at_0600(tmp_path):
    path = tmp_path / "sys_user.creds"
    filemodes.write_private(path, "creds")
    os.chown(path, 65534, 65534)
    with pytest.raises(filemodes.NotPrivateError, match="is owned by ") as caught:
        filemodes.check_private(path, "the SYS user creds")
    assert "fix with: chown " in str(caught.value)
    _apply_fix(str(caught.value))
    filemodes.check_private(path, "the SYS user creds")


def test_tree_check_finds_a_nested_loose_file_and_allows_named_links(tmp_path):
    root = filemodes.private_dir(tmp_path / "nats")
    deep = root / "store" / "jetstream" / "ACC" / "1.blk"
    filemodes.write_private(deep, "msgs")
    (root / "nats-server.conf").symlink_to("/etc/hostname")
    filemodes.check_tree(root, "the NATS store", links=[root / "nats-server.conf"])
    with pytest.raises(filemodes.NotPrivateError, match=r"nats-server\.conf .* is a symlink"):
        filemodes.check_tree(root, "the NATS store")
    os.chmod(deep, 0o640)
    with pytest.raises(filemodes.NotPrivateError, match=r"1\.blk \(in the NATS store\)"):
        filemodes.check_tree(root, "the NATS store", links=[root / "nats-server.conf"])


def test_tighten_never_follows_a_link_out_of_the_tree(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("public")
    os.chmod(outside, 0o644)
    tree = tmp_path / "data"
    (tree / "pocketbase").mkdir(parents=True)
    os.chmod(tree, 0o755)
    (tree / "pocketbase" / "data.db").write_text("seeds")
    os.chmod(tree / "pocketbase" / "data.db", 0o644)
    (tree / "pocketbase" / "link").symlink_to(outside)
    changed = filemodes.tighten_tree(tree)
    assert set(changed) == {tree, tree / "pocketbase", tree / "pocketbase" / "data.db"}
    assert _mode(tree) == 0o700 and _mode(tree / "pocketbase" / "data.db") == 0o600
    assert _mode(outside) == 0o644, "the link's target is not ours to chmod"


def test_read_private_checks_the_opened_file(tmp_path):
    path = tmp_path / "router.login"
    filemodes.write_private(path, "secret")
    assert filemodes.read_private(path, "the router's login") == "secret"
    os.chmod(path, 0o640)
    with pytest.raises(filemodes.NotPrivateError, match="chmod 600"):
        filemodes.read_private(path, "the router's login")
    with pytest.raises(FileNotFoundError):
        filemodes.read_private(tmp_path / "absent", "the router's login")


# -- the bridge refuses loose secrets ------------------------------------------------------


def _bridge(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CAIRN_ADMIN_EMAIL", "CAIRN_ADMIN_PASSWORD")}
    return subprocess.run([sys.executable, "-m", "pb_hooks_bridge", "--data-dir",
                           str(data_dir), *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("name", ["secrets/operator.nk", "secrets/sys_account.nk",
                                  "secrets/sys_user.creds", "secrets/extra.key",
                                  "superuser.json", "secrets", "."])
def test_bridge_bootstrap_refuses_a_loose_secret_until_fixed(tmp_path, name):
    layout = DataLayout(tmp_path / "data")
    bootstrap(layout)
    filemodes.write_private(layout.secrets_dir / "extra.key", "k")
    filemodes.write_private(layout.superuser_file, '{"email": "a@b.c", "password": "x"}')
    path = (layout.root / name).resolve()
    os.chmod(path, 0o755 if path.is_dir() else 0o644)
    done = _bridge(layout.root, "bootstrap")
    assert done.returncode == 1, done
    assert "refusing to start:" in done.stderr
    assert f"fix with: chmod {700 if path.is_dir() else 600} {path}" in done.stderr
    _apply_fix(done.stderr)
    done = _bridge(layout.root, "bootstrap")
    assert done.returncode == 0, done.stderr
    assert "unchanged" in done.stdout


def test_bridge_run_refuses_a_loose_operator_seed_before_reading_anything(tmp_path):
    layout = DataLayout(tmp_path / "data")
    bootstrap(layout)
    os.chmod(layout.operator_seed, 0o644)
    done = _bridge(layout.root, "run")
    assert done.returncode == 1
    assert (f"{layout.operator_seed} (in the NATS operator secrets) is readable by other "
            f"users (mode 0644); fix with: chmod 600 {layout.operator_seed}") in done.stderr
    _apply_fix(done.stderr)
    done = _bridge(layout.root, "run")  # control: now it gets past the check, to the login
    assert "refusing" not in done.stderr and "no PocketBase superuser" in done.stderr


# -- the agent: enroll writes private files, run refuses loose ones -------------------------


async def test_agent_enrolls_privately_and_run_refuses_a_loose_secret(
        bridge, admin, pb_env, nats_env, tmp_path):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path / "agent")
    directory = site.directory
    assert _mode(directory) == 0o700
    for name in ("agent.nk", "agent.creds", "agent.secret"):
        assert _mode(directory / name) == 0o600, name
    argv = [sys.executable, "-m", "agent", "run", "--config", str(site.config_path)]
    for name in ("agent.nk", "agent.creds", "agent.secret"):
        os.chmod(directory / name, 0o644)
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                       timeout=60)
        assert done.returncode == 1, done
        assert f"fix with: chmod 600 {directory / name}" in done.stderr, done.stderr
        _apply_fix(done.stderr)

    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{site.tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    control = await connect(nats_env.url, svc["jwt"], svc["seed"])
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:  # control: with 0600 files the same command runs and answers
        async def pong() -> bool:
            try:
                msg = await control.request(f"agents.{site.device['code']}.cmd.ping", b"{}",
                                            timeout=1)
            except Exception:
                return False
            return b'"pong"' in msg.data
        await eventually(pong, 30, "the agent answering ping")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await control.close()


async def test_enroll_refuses_to_reuse_a_loose_seed(bridge, admin, pb_env, nats_env, tmp_path):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path / "agent")
    seed = site.directory / "agent.nk"
    os.chmod(seed, 0o644)
    os.chmod(site.directory, 0o755)
    request = EnrollRequest(server=pb_env.url, code=site.device["code"],
                            tenant=site.tenant["slug"],
                            directory=site.directory, nats_urls=(nats_env.url,),
                            secret=DEVICE_PASSWORD)
    refused = f"refusing to enroll: {re.escape(str(seed))} .*chmod 600"
    with pytest.raises(EnrollmentError, match=refused) as e:
        await enroll(request)
    assert _mode(site.directory) == 0o700, "enroll makes its directory private"
    _apply_fix(str(e.value))
    await enroll(request)


# -- the launcher: private from the start, tightens an older loose data dir ----------------


def _launch(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """The launcher under a loose user umask (022), until its banner or its exit."""
    proc = subprocess.Popen([sys.executable, "-m", "cairn_stack"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, umask=0o022)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("Press Ctrl-C"):
            return proc, lines
    proc.kill()
    proc.wait(10)
    return proc, lines


def _check_up(env: dict[str, str], data: Path) -> None:
    """Positive control: PocketBase answers the kept login, the demo agent its ping."""
    login = json.loads((data / "superuser.json").read_text())
    resp = httpx.post(f"http://127.0.0.1:{env['CAIRN_PB_PORT']}/api/collections/_superusers/"
                      "auth-with-password", timeout=10,
                      json={"identity": login["email"], "password": login["password"]})
    assert resp.status_code == 200, resp.text
    done = subprocess.run([sys.executable, "-m", "cairn_stack.request", "--server",
                           f"nats://127.0.0.1:{env['CAIRN_NATS_PORT']}", "--creds",
                           str(data / "demo" / "admin.creds"), "agents.demo-1.cmd.ping"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and '"pong"' in done.stdout, done.stderr


@pytest.mark.timeout(400)
def test_launcher_keeps_the_data_dir_private_and_tightens_an_older_one(tmp_path):
    data = tmp_path / "data"
    env = _env(data, CAIRN_DEMO="1")
    links = {data / "nats" / "nats-server.conf"}
    proc, lines = _launch(env)
    try:
        assert proc.returncode is None, "\n".join(lines)
        _check_up(env, data)
        assert _mode(data) == 0o700 and (data / "pocketbase" / "data.db").exists()
        assert _loose(data, links) == []  # while PocketBase and nats-server write
    finally:
        _stop(proc)
    assert _loose(data, links) == []

    # a secret that is a link to elsewhere: refused, and the printed fix works
    seed = data / "secrets" / "operator.nk"
    moved = tmp_path / "backup" / "operator.nk"
    moved.parent.mkdir()
    seed.rename(moved)
    seed.symlink_to(moved)
    proc, lines = _launch(env)
    assert proc.wait(30) == 1, lines
    refusal = next(line for line in lines if line.startswith("error: refusing to start:"))
    assert f"{seed} (in Cairn's secrets) is a symlink" in refusal
    _apply_fix(refusal)
    assert seed.is_file() and not seed.is_symlink()

    # an older run's data dir, all open to other users: tightened, then the stack works
    subprocess.run(["chmod", "-R", "go+rwX", str(data)], check=True)
    assert _mode(data / "pocketbase" / "data.db") == 0o666
    proc, lines = _launch(env)
    try:
        assert proc.returncode is None, "\n".join(lines)
        assert any("took group/other access off" in line for line in lines), lines
        assert _loose(data, links) == []
        _check_up(env, data)
    finally:
        _stop(proc)
