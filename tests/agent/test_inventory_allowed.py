"""The inventory's "allowed" part: the local whitelists, and the scripts exec would run,
listed from real files so a dashboard's pickers offer only what the agent accepts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.collectors.inventory import MAX_SCRIPTS, allowed, allowed_scripts, collect_inventory
from agent.commands import exec as exec_command
from agent.config import AgentConfig, from_dict
from agent.context import Context
from agent.errors import CommandError

pytestmark = pytest.mark.timeout(30)


def make_config(tmp_path: Path, scripts: str | None = "scripts", **commands: Any) -> AgentConfig:
    """A config with base_dir tmp_path; scripts_directory tmp_path/scripts unless None."""
    raw: dict[str, Any] = {
        "device": {"code": "test-device"},
        "commands": {**commands, **({"scripts_directory": scripts} if scripts else {})},
        "services": {"allowed": ["nginx", "cron"], "watch": ["nginx"]},
        "logs": {"allowed_paths": ["/var/log/syslog", "/var/log/nginx/*.log"]},
    }
    return from_dict(raw, base_dir=tmp_path)


def folder(path: Path) -> Path:
    """A directory only we can change (whatever the umask), as exec requires."""
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


def write(path: Path, body: str = "echo hi\n", executable: bool = False) -> Path:
    path.write_text(body)
    path.chmod(0o755 if executable else 0o644)
    return path


async def test_lists_match_the_config(tmp_path: Path) -> None:
    folder(tmp_path / "scripts")
    write(tmp_path / "scripts" / "disk.sh")
    config = make_config(tmp_path, allowed=["uptime", "df -h"])
    assert await allowed(config) == {
        "commands": ["uptime", "df -h"],
        "scripts": ["disk.sh"],
        "services": ["nginx", "cron"],
        "logs": ["/var/log/syslog", "/var/log/nginx/*.log"],
    }


async def test_inventory_document_carries_allowed_only_with_a_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, scripts=None, allowed=["uptime"])
    doc = await collect_inventory("1.2.3", config)
    assert doc["allowed"] == {"commands": ["uptime"], "scripts": [],
                              "services": ["nginx", "cron"],
                              "logs": ["/var/log/syslog", "/var/log/nginx/*.log"]}
    assert doc["agent_version"] == "1.2.3" and doc["hostname"]
    assert "allowed" not in await collect_inventory("1.2.3")  # existing callers unchanged


async def test_scripts_are_only_what_exec_accepts(tmp_path: Path) -> None:
    scripts = folder(tmp_path / "scripts")
    outside = write(tmp_path / "outside.sh")
    write(scripts / "b.py", "print(1)\n")
    write(scripts / "a.sh")
    write(scripts / "direct", "#!/bin/sh\necho direct\n", executable=True)
    write(scripts / "plain", "#!/bin/sh\necho no\n")  # no extension, not executable
    write(scripts / ".hidden.sh")
    folder(scripts / "lib")
    write(scripts / "lib" / "real.sh")
    (scripts / "alias.sh").symlink_to(scripts / "lib" / "real.sh")  # inside: accepted
    (scripts / "escape.sh").symlink_to(outside)
    (scripts / "dangling.sh").symlink_to(tmp_path / "missing.sh")
    write(scripts / "has space.sh")
    write(scripts / "loose.sh").chmod(0o666)  # others could rewrite it
    config = make_config(tmp_path)

    listed = (await allowed(config))["scripts"]
    assert listed == ["a.sh", "alias.sh", "b.py", "direct"]

    # the same verdicts as exec itself, for every entry of the directory
    ctx = Context(config=config)
    for name in sorted(os.listdir(scripts)):
        try:
            reply = await exec_command.handle({"command": name}, ctx)
        except CommandError:
            assert name not in listed
        else:
            assert reply["status"] == "success" and name in listed


async def test_missing_unset_or_unreadable_directory_lists_no_scripts(tmp_path: Path) -> None:
    assert (await allowed(make_config(tmp_path, scripts="nowhere")))["scripts"] == []
    assert (await allowed(make_config(tmp_path, scripts=None)))["scripts"] == []
    write(tmp_path / "file")
    assert (await allowed(make_config(tmp_path, scripts="file")))["scripts"] == []
    assert allowed_scripts("") == []
    if os.geteuid() != 0:  # root reads a 000 directory anyway
        locked = folder(tmp_path / "locked")
        write(locked / "a.sh")
        locked.chmod(0)
        try:
            assert allowed_scripts(str(locked)) == []
        finally:
            locked.chmod(0o700)


def test_scripts_are_sorted_and_capped(tmp_path: Path) -> None:
    scripts = folder(tmp_path / "scripts")
    for index in range(MAX_SCRIPTS + 25):
        write(scripts / f"s{index:03d}.sh")
    write(scripts / ".first.sh")  # refused entries do not use up the cap
    listed = allowed_scripts(str(scripts))
    assert MAX_SCRIPTS == 200 and len(listed) == MAX_SCRIPTS
    assert listed == [f"s{index:03d}.sh" for index in range(MAX_SCRIPTS)]
    assert allowed_scripts(str(scripts), limit=3) == ["s000.sh", "s001.sh", "s002.sh"]


def test_relative_scripts_directory_resolves_against_the_config_folder(tmp_path: Path) -> None:
    folder(tmp_path / "conf" / "scripts")
    write(tmp_path / "conf" / "scripts" / "x.sh")
    config = make_config(tmp_path / "conf")
    assert allowed_scripts(str(config.path(config.commands.scripts_directory))) == ["x.sh"]
