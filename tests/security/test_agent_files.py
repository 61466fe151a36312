"""SPEC §7/§11: the files that decide what the agent runs (agent.yaml with its whitelists,
its folder, `commands.scripts_directory` and each script) must not be writable by other
local users nor owned by anyone but the agent's user or root; reading them is fine.

Attack side: group/other write bits, a foreign owner and a link to a loose file are refused
by `filemodes.check_not_writable`; `cairn-agent run` refuses to start on each, naming the
fix; an exec of a script in a world-writable scripts directory (or a group-writable script)
gets an error reply and runs nothing. Positive controls: 0644/0755 pass; the printed fix,
run as a shell command, makes the same `cairn-agent run` answer a ping; the same script in
a 0755 directory runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.app import AgentApp
from agent.commands import exec as exec_command
from agent.context import Context
from agent.errors import CommandError
from cairn_common import filemodes
from tests.live import connect, enrolled_agent_site, eventually

pytestmark = pytest.mark.timeout(180)
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
NOBODY = 65534


def _apply_fix(message: str) -> None:
    """Run the command after "fix with: " as the user would paste it."""
    command = message.rsplit("fix with: ", 1)[1].strip().splitlines()[0]
    subprocess.run(["sh", "-c", command], check=True, timeout=10)


def _thing(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / ("scripts" if kind == "dir" else "agent.yaml")
    if kind == "dir":
        path.mkdir()
    else:
        path.write_text("device: {code: web-01}\n")
    return path


# -- filemodes.check_not_writable ----------------------------------------------------------


@pytest.mark.parametrize(("kind", "mode", "who"), [
    ("file", 0o664, "group"), ("file", 0o646, "other"), ("file", 0o666, "group and other"),
    ("dir", 0o775, "group"), ("dir", 0o757, "other"), ("dir", 0o1777, "group and other"),
])
def test_writable_by_others_is_refused_with_the_fix(tmp_path, kind, mode, who):
    path = _thing(tmp_path, kind)
    os.chmod(path, mode)
    with pytest.raises(filemodes.WritableByOthersError) as caught:
        filemodes.check_not_writable(path, "the thing")
    message = str(caught.value)
    assert message.startswith(f"refusing to start: {path} (the thing) is writable by {who} ")
    assert message.endswith(f"fix with: chmod go-w {shlex.quote(str(path))}")
    _apply_fix(message)
    filemodes.check_not_writable(path, "the thing")  # the fix is enough


@pytest.mark.parametrize(("kind", "mode"), [("file", 0o644), ("file", 0o600),
                                            ("file", 0o444), ("dir", 0o755), ("dir", 0o700)])
def test_readable_by_others_is_fine(tmp_path, kind, mode):
    """Control: these files are not secrets; only writing matters."""
    path = _thing(tmp_path, kind)
    os.chmod(path, mode)
    filemodes.check_not_writable(path, "the thing")
    filemodes.check_not_writable(tmp_path / "missing", "a missing thing")


@ROOT_ONLY
def test_another_users_file_is_refused_even_at_0644(tmp_path):
    path = _thing(tmp_path, "file")
    os.chmod(path, 0o644)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(filemodes.WritableByOthersError, match="is owned by ") as caught:
        filemodes.check_not_writable(path, "the config")
    _apply_fix(str(caught.value))
    filemodes.check_not_writable(path, "the config")


def test_a_link_is_judged_by_its_target(tmp_path):
    target = _thing(tmp_path, "file")
    link = tmp_path / "linked.yaml"
    link.symlink_to(target)
    os.chmod(target, 0o644)
    filemodes.check_not_writable(link, "the config")  # control: a link to a sound file
    os.chmod(target, 0o666)
    with pytest.raises(filemodes.WritableByOthersError, match="chmod go-w"):
        filemodes.check_not_writable(link, "the config")


# -- exec: a script only runs when nobody else can have changed it -------------------------


def _ctx(root: Path) -> Context:
    raw = {"device": {"code": "test-device"},
           "commands": {"scripts_directory": "scripts", "timeout": 5}}
    return Context(config=config_mod.from_dict(raw, base_dir=root))


@pytest.mark.parametrize(("where", "mode", "named"), [
    ("scripts", 0o777, "(commands.scripts_directory) is writable by group and other"),
    ("scripts", 0o775, "(commands.scripts_directory) is writable by group"),
    ("scripts/lib", 0o757, "(a folder in commands.scripts_directory) is writable by other"),
    ("scripts/lib/real.sh", 0o664, "(the script) is writable by group"),
])
async def test_a_script_others_could_change_does_not_run(tmp_path, where, mode, named):
    scripts = tmp_path / "scripts"
    (scripts / "lib").mkdir(parents=True)
    canary = tmp_path / "CANARY"
    (scripts / "lib" / "real.sh").write_text(f"#!/bin/sh\ntouch '{canary}'\necho ok\n")
    (scripts / "run.sh").symlink_to(scripts / "lib" / "real.sh")
    ctx = _ctx(tmp_path)
    assert (await exec_command.handle({"command": "run.sh"}, ctx))["output"] == "ok\n"
    canary.unlink()  # control done: the same script in 0755 folders ran
    os.chmod(tmp_path / where, mode)
    with pytest.raises(CommandError, match=r"refusing to run script 'run\.sh'") as refused:
        await exec_command.handle({"command": "run.sh"}, ctx)
    assert named in str(refused.value)
    assert str(refused.value).endswith(f"fix with: chmod go-w {tmp_path / where}")
    assert not canary.exists(), "the script ran"


@ROOT_ONLY
async def test_another_users_script_does_not_run(tmp_path):
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "theirs.sh"
    script.write_text("echo ran\n")
    os.chown(script, NOBODY, NOBODY)
    with pytest.raises(CommandError, match=r"\(the script\) is owned by .*fix with: chown"):
        await exec_command.handle({"command": "theirs.sh"}, _ctx(tmp_path))


@pytest.fixture(scope="module")
async def running(bridge, admin, pb_env, nats_env, tmp_path_factory):
    """An enrolled agent running in this process, and the tenant's service connection."""
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url,
                                     tmp_path_factory.mktemp("agent-files"))
    app = AgentApp(config_mod.load(site.config_path))
    await app.start()
    control = await connect(nats_env.url, *await _service(admin, site))
    yield site, control
    await control.close()
    await app.stop()


async def _service(admin, site) -> tuple[str, str]:
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{site.tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    return row["jwt"], row["seed"]


async def test_exec_over_the_bus_is_refused_in_a_world_writable_scripts_dir(running):
    site, control = running
    scripts = site.directory / "scripts"
    canary = site.directory / "canary-files.txt"
    request = json.dumps({"command": "canary.sh", "args": [str(canary)]}).encode()
    subject = f"agents.{site.device['code']}.cmd.exec"
    os.chmod(scripts, 0o777)
    try:
        reply = json.loads((await control.request(subject, request, timeout=15)).data)
    finally:
        os.chmod(scripts, 0o755)
    assert reply["status"] == "error" and not canary.exists()
    assert reply["error"].startswith("refusing to run script 'canary.sh': ")
    assert reply["error"].endswith(f"fix with: chmod go-w {scripts}")
    reply = json.loads((await control.request(subject, request, timeout=15)).data)
    assert reply["status"] == "success" and canary.read_text() == "ran\n"  # control: 0755


# -- cairn-agent run refuses to start ------------------------------------------------------


async def test_run_refuses_a_config_or_scripts_dir_others_can_write(bridge, admin, pb_env,
                                                                    nats_env, tmp_path):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path / "agent")
    config = config_mod.load(site.config_path)
    scripts = config.path(config.commands.scripts_directory)
    argv = [sys.executable, "-m", "agent", "run", "--config", str(site.config_path)]
    for path, extra, what in ((site.config_path, 0o020, "the agent's config"),
                              (site.directory, 0o002, "the folder of the agent's config"),
                              (scripts, 0o002, "commands.scripts_directory")):
        os.chmod(path, os.stat(path).st_mode | extra)
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                       timeout=60)
        assert done.returncode == 1, done
        assert f"{path} ({what}" in done.stderr, done.stderr
        assert done.stderr.rstrip().endswith(f"fix with: chmod go-w {path}"), done.stderr
        _apply_fix(done.stderr)

    control = await connect(nats_env.url, *await _service(admin, site))
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:  # control: with the fixes applied the same command runs and answers
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
