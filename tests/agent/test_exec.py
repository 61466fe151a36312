"""exec and agent.process: whitelisted lines, scripts with argv, JSON output, the output cap,
and a timeout that kills the whole process group (grandchildren included)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from agent import process
from agent.commands import exec as exec_command
from agent.config import from_dict
from agent.context import Context
from agent.errors import CommandError

pytestmark = pytest.mark.timeout(30)

ARGV_PY = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def make_ctx(tmp_path: Path, *, allowed: list[str] | None = None, scripts: str | None = "scripts",
             timeout: float = 10, max_output: int = 512 * 1024) -> Context:
    """A context whose scripts_directory is tmp_path/scripts (created) unless scripts=None."""
    commands: dict[str, Any] = {"allowed": allowed or [], "timeout": timeout,
                                "max_output_bytes": max_output}
    if scripts is not None:
        (tmp_path / scripts).mkdir(exist_ok=True)
        commands["scripts_directory"] = scripts
    raw = {"device": {"code": "test-device"}, "commands": commands}
    return Context(config=from_dict(raw, base_dir=tmp_path))


def write_script(directory: Path, name: str, body: str, executable: bool = False) -> Path:
    path = directory / name
    path.write_text(body)
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def alive(pid: int) -> bool:
    """A zombie counts as dead: PID 1 of a container may never reap it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


async def test_whitelisted_command_runs_and_spacing_does_not_matter(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, allowed=["echo hello", "true"])
    reply = await exec_command.handle({"command": "echo   hello"}, ctx)
    assert reply["status"] == "success"
    assert reply["output"] == "hello\n"
    assert reply["exit_code"] == 0
    assert reply["command"] == "echo   hello"
    assert isinstance(reply["duration_ms"], float)
    assert "truncated" not in reply and "timed_out" not in reply
    assert (await exec_command.handle({"command": "true"}, ctx))["status"] == "success"


async def test_whitelisted_command_nonzero_exit_is_an_error_reply(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, allowed=["false"])
    reply = await exec_command.handle({"command": "false"}, ctx)
    assert reply["status"] == "error"
    assert reply["exit_code"] == 1
    assert reply["output"] == ""
    assert "code 1" in reply["error"]


async def test_whitelisted_command_takes_no_args(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, allowed=["echo hello"])
    with pytest.raises(CommandError, match="takes no args"):
        await exec_command.handle({"command": "echo hello", "args": ["x"]}, ctx)
    reply = await exec_command.handle({"command": "echo hello", "args": []}, ctx)
    assert reply["output"] == "hello\n"


async def test_whitelisted_command_missing_from_path_is_a_clear_error(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, allowed=["no-such-program-cairn"])
    with pytest.raises(CommandError, match="not found on the PATH"):
        await exec_command.handle({"command": "no-such-program-cairn"}, ctx)


async def test_script_args_reach_argv_exactly(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_script(tmp_path / "scripts", "argv.py", ARGV_PY)
    args = ["two words", "it's \"quoted\"", "$(touch x)", "`id`", "; rm -rf /", "*", "",
            "line\nbreak", "ünïcødé", "--flag", "-"]
    reply = await exec_command.handle({"command": "argv.py", "args": args}, ctx)
    assert reply["status"] == "success", reply
    assert reply["output"] == args  # JSON stdout comes back parsed
    assert not (tmp_path / "scripts" / "x").exists()


async def test_shell_script_gets_args_as_positional_parameters(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_script(tmp_path / "scripts", "args.sh", "printf '<%s>\\n' \"$@\"\nexit 3\n")
    reply = await exec_command.handle({"command": "args.sh", "args": ["a b", "$HOME"]}, ctx)
    assert reply["status"] == "error"
    assert reply["exit_code"] == 3
    assert reply["output"] == "<a b>\n<$HOME>\n"


async def test_script_json_output_is_parsed_other_output_is_text(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    scripts = tmp_path / "scripts"
    write_script(scripts, "obj.sh", "echo '{\"disk\": {\"free_gb\": 12.5}, \"ok\": true}'\n")
    write_script(scripts, "num.sh", "echo 42\n")
    write_script(scripts, "text.sh", "echo '{not json'\n")
    reply = await exec_command.handle({"command": "obj.sh"}, ctx)
    assert reply["output"] == {"disk": {"free_gb": 12.5}, "ok": True}
    assert (await exec_command.handle({"command": "num.sh"}, ctx))["output"] == "42\n"
    assert (await exec_command.handle({"command": "text.sh"}, ctx))["output"] == "{not json\n"


async def test_executable_without_extension_runs_directly(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_script(tmp_path / "scripts", "direct", "#!/bin/sh\necho direct \"$1\"\n",
                 executable=True)
    write_script(tmp_path / "scripts", "plain", "#!/bin/sh\necho no\n")
    reply = await exec_command.handle({"command": "direct", "args": ["x"]}, ctx)
    assert reply["output"] == "direct x\n"
    with pytest.raises(CommandError, match="not executable"):
        await exec_command.handle({"command": "plain"}, ctx)


async def test_symlink_inside_scripts_directory_is_allowed(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    scripts = tmp_path / "scripts"
    (scripts / "lib").mkdir()
    write_script(scripts / "lib", "real.sh", "echo real\n")
    (scripts / "alias.sh").symlink_to(scripts / "lib" / "real.sh")
    assert (await exec_command.handle({"command": "alias.sh"}, ctx))["output"] == "real\n"


async def test_powershell_script_needs_powershell(tmp_path: Path) -> None:
    if shutil.which("pwsh") or shutil.which("powershell"):
        pytest.skip("PowerShell is installed here")
    ctx = make_ctx(tmp_path)
    write_script(tmp_path / "scripts", "Get-Disk.ps1", "Write-Output 1\n")
    with pytest.raises(CommandError, match="needs PowerShell"):
        await exec_command.handle({"command": "Get-Disk.ps1"}, ctx)


async def test_scripts_run_with_a_minimal_environment(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_script(tmp_path / "scripts", "env.py",
                 "import json, os\nprint(json.dumps(dict(os.environ)))\n")
    os.environ["CAIRN_SECRET_FOR_TEST"] = "leak"
    try:
        reply = await exec_command.handle({"command": "env.py"}, ctx)
    finally:
        del os.environ["CAIRN_SECRET_FOR_TEST"]
    assert reply["output"] == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


async def test_output_is_capped_and_flagged(tmp_path: Path) -> None:
    cap = 64 * 1024
    ctx = make_ctx(tmp_path, max_output=cap)
    write_script(tmp_path / "scripts", "big.sh",
                 "head -c 2097152 /dev/zero | tr '\\0' a\necho '{}' \n")
    reply = await exec_command.handle({"command": "big.sh"}, ctx)
    assert reply["truncated"] is True
    assert reply["status"] == "success"  # drained to the end: the script finished normally
    assert isinstance(reply["output"], str)  # truncated output is never parsed as JSON
    assert 0 < len(reply["output"].encode()) <= cap


async def test_cap_never_leaves_half_a_character() -> None:
    result = await process.run(["/bin/sh", "-c", "printf 'ééééé'"], timeout=5, max_output=5)
    assert result.truncated and result.output == "éé"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, timeout=1.5)
    pidfile = tmp_path / "grandchild.pid"
    write_script(tmp_path / "scripts", "hang.sh",
                 f"sleep 100 &\necho $! > '{pidfile}'\necho started\nsleep 100\n")
    started = time.monotonic()
    reply = await exec_command.handle({"command": "hang.sh", "timeout": 60}, ctx)
    elapsed = time.monotonic() - started
    assert reply["timed_out"] is True
    assert reply["status"] == "error"
    assert reply["exit_code"] is None
    assert reply["output"] == "started\n"
    assert "timed out" in reply["error"]
    assert elapsed < 5  # the request's 60 s is capped at the configured 1.5 s
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while alive(grandchild) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(grandchild), "the background sleep survived the timeout"


async def test_request_timeout_shortens_the_configured_one(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, timeout=30)
    write_script(tmp_path / "scripts", "slow.sh", "sleep 30\n")
    started = time.monotonic()
    reply = await exec_command.handle({"command": "slow.sh", "timeout": 0.3}, ctx)
    assert reply["timed_out"] is True
    assert time.monotonic() - started < 3


async def test_background_job_holding_the_pipe_does_not_stall_the_reply(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, timeout=20)
    pidfile = tmp_path / "bg.pid"
    write_script(tmp_path / "scripts", "bg.sh",
                 f"sleep 100 &\necho $! > '{pidfile}'\necho done\n")
    started = time.monotonic()
    reply = await exec_command.handle({"command": "bg.sh"}, ctx)
    try:
        assert reply["status"] == "success"
        assert reply["output"] == "done\n"
        assert time.monotonic() - started < process.PIPE_GRACE + 3
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_process_run_reports_unstartable_programs() -> None:
    with pytest.raises(CommandError, match="cannot start"):
        await process.run(["/nonexistent/program"], timeout=5, max_output=1024)


async def test_stderr_is_merged_and_stdin_is_empty() -> None:
    result = await process.run(["/bin/sh", "-c", "echo out; echo err >&2; cat"],
                               timeout=5, max_output=1024)
    assert result.output == "out\nerr\n"
    assert result.exit_code == 0 and not result.timed_out and not result.truncated
    assert json.loads(json.dumps(result.duration_ms)) >= 0
