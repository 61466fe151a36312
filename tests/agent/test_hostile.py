"""Hostile requests to exec, logs and service: every one is refused with a message naming
the problem, and nothing runs or is read. A canary proves it: every exec attempt that could
run something would create CANARY (the shell metacharacters through a shell, the traversal
and symlink cases through evil.sh, which lives outside the scripts directory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import process
from agent.commands import exec as exec_command
from agent.commands import logs as logs_command
from agent.commands import service as service_command
from agent.config import from_dict
from agent.context import Context
from agent.errors import CommandError

pytestmark = pytest.mark.timeout(30)

HANDLERS = {"exec": exec_command.handle, "logs": logs_command.handle,
            "service": service_command.handle}
LONG = "a" * 100_000


@dataclass(frozen=True)
class Case:
    id: str
    command: str
    # Built per test from the arena's root, so paths point into tmp_path.
    request: Callable[[Path], Any]
    match: str


def case(id: str, command: str, request: Any, match: str) -> Case:
    build = request if callable(request) else (lambda root, r=request: r)
    return Case(id, command, build, match)


def touch(root: Path) -> str:
    return f"touch {root}/CANARY"


CASES = [
    # exec: traversal and escapes out of the scripts directory (evil.sh creates the canary)
    case("exec-traversal", "exec", {"command": "../evil.sh"}, "path separators"),
    case("exec-encoded-traversal", "exec", {"command": "..%2fevil.sh"}, r"'\.\.'"),
    case("exec-backslash-traversal", "exec", {"command": "..\\evil.sh"}, "path separators"),
    case("exec-absolute", "exec", lambda r: {"command": f"{r}/evil.sh"}, "absolute"),
    case("exec-symlink-escape", "exec", {"command": "escape.sh"}, "resolves outside"),
    case("exec-symlink-escape-absolute", "exec", {"command": "escape-abs.sh"},
         "resolves outside"),
    case("exec-dir-symlink", "exec", {"command": "dirlink/evil.sh"}, "path separators"),
    case("exec-dotdot-alone", "exec", {"command": ".."}, r"'\.\.'"),
    case("exec-outside-name", "exec", {"command": "evil.sh"}, "no script of that name"),
    # exec: shell metacharacters (they would need a shell to do harm)
    case("exec-semicolon", "exec", lambda r: {"command": f"true; {touch(r)}"},
         "not a whitelisted command"),
    case("exec-pipe-sh", "exec", lambda r: {"command": f"echo {touch(r)} | sh"},
         "not a whitelisted command"),
    case("exec-and-and", "exec", lambda r: {"command": f"true && {touch(r)}"},
         "not a whitelisted command"),
    case("exec-subshell", "exec", lambda r: {"command": f"$({touch(r)})"},
         "not a whitelisted command"),
    case("exec-backticks", "exec", lambda r: {"command": f"`{touch(r)}`"},
         "not a whitelisted command"),
    case("exec-appended-to-whitelisted", "exec",
         lambda r: {"command": f"echo hello; {touch(r)}"}, "not a whitelisted command"),
    case("exec-whitelisted-extra-token", "exec", {"command": "echo hello world"},
         "not a whitelisted command"),
    case("exec-whitelisted-with-args", "exec",
         lambda r: {"command": "echo hello", "args": [f"; {touch(r)}"]}, "takes no args"),
    case("exec-glob-star", "exec", {"command": "*"}, "wildcards"),
    case("exec-glob-question", "exec", {"command": "ok.s?"}, "wildcards"),
    # exec: bytes and characters that do not belong in a command
    case("exec-nul", "exec", lambda r: {"command": f"ok.sh\x00; {touch(r)}"}, "NUL"),
    case("exec-newline", "exec", lambda r: {"command": f"true\n{touch(r)}"}, "line break"),
    case("exec-carriage-return", "exec", {"command": "true\recho"}, "line break"),
    case("exec-tab", "exec", {"command": "echo\thello"}, "U\\+0009"),
    case("exec-rtl-override", "exec", {"command": "ok\u202ehs.sh"}, "U\\+202E"),
    case("exec-fullwidth-solidus", "exec", {"command": "..\uff0fevil.sh"}, r"'\.\.'"),
    case("exec-division-slash", "exec", {"command": "scripts\u2215evil.sh"}, "look-alike"),
    case("exec-fullwidth-letters", "exec", {"command": "ｕｐｔｉｍｅ"}, "look-alike"),
    case("exec-leading-dash", "exec", {"command": "-rf"}, "must not start with '-'"),
    case("exec-empty", "exec", {"command": ""}, "empty"),
    case("exec-blank", "exec", {"command": "   "}, "empty"),
    case("exec-100kb", "exec", {"command": LONG}, "too long"),
    # exec: wrong JSON types and shapes
    case("exec-command-list", "exec", {"command": ["true"]}, "'command' must be a string"),
    case("exec-command-number", "exec", {"command": 42}, "'command' must be a string"),
    case("exec-command-null", "exec", {"command": None}, "'command' must be a string"),
    case("exec-command-dict", "exec", {"command": {"x": 1}}, "'command' must be a string"),
    case("exec-missing-command", "exec", {}, "missing field 'command'"),
    case("exec-unknown-key", "exec", {"command": "true", "shell": True}, "unknown field"),
    case("exec-args-string", "exec", {"command": "ok.sh", "args": "a b"},
         "'args' must be a list"),
    case("exec-args-number-item", "exec", {"command": "ok.sh", "args": [1]},
         r"args\[0\] must be a string"),
    case("exec-args-nul", "exec", {"command": "ok.sh", "args": ["a\x00b"]}, "NUL"),
    case("exec-args-too-many", "exec", {"command": "ok.sh", "args": ["x"] * 65},
         "too many args"),
    case("exec-args-too-long", "exec", {"command": "ok.sh", "args": ["x" * 4097]},
         "too long"),
    case("exec-timeout-negative", "exec", {"command": "true", "timeout": -1},
         "greater than 0"),
    case("exec-timeout-zero", "exec", {"command": "true", "timeout": 0}, "greater than 0"),
    case("exec-timeout-nan", "exec", {"command": "true", "timeout": float("nan")},
         "finite number"),
    case("exec-timeout-string", "exec", {"command": "true", "timeout": "5"},
         "'timeout' must be"),
    case("exec-timeout-bool", "exec", {"command": "true", "timeout": True},
         "'timeout' must be"),
    # logs
    case("logs-relative", "logs", {"log_path": "logs/app.log"}, "absolute"),
    case("logs-traversal", "logs", lambda r: {"log_path": f"{r}/logs/../secret.txt"},
         r"'\.\.'"),
    case("logs-encoded-traversal", "logs",
         lambda r: {"log_path": f"{r}/logs/..%2fsecret.txt"}, "not in logs.allowed_paths"),
    case("logs-symlink-smuggle", "logs", lambda r: {"log_path": f"{r}/logs/link.log"},
         "resolves to"),
    case("logs-outside", "logs", {"log_path": "/etc/passwd"}, "not in logs.allowed_paths"),
    case("logs-glob-in-request", "logs", lambda r: {"log_path": f"{r}/logs/*.log"},
         "wildcard"),
    case("logs-question-in-request", "logs", lambda r: {"log_path": f"{r}/logs/ap?.log"},
         "wildcard"),
    case("logs-nul", "logs", lambda r: {"log_path": f"{r}/logs/app.log\x00.txt"}, "NUL"),
    case("logs-newline", "logs", lambda r: {"log_path": f"{r}/logs/app.log\n"},
         "line break"),
    case("logs-rtl-override", "logs", lambda r: {"log_path": f"{r}/logs/gol.\u202eapp"},
         "control or format"),
    case("logs-fullwidth-solidus", "logs",
         lambda r: {"log_path": f"{r}/logs\uff0f..\uff0fsecret.log"},
         "not in logs.allowed_paths"),
    case("logs-100kb", "logs", {"log_path": "/" + LONG}, "too long"),
    case("logs-path-list", "logs", {"log_path": ["/var/log/syslog"]},
         "'log_path' must be a string"),
    case("logs-path-null", "logs", {"log_path": None}, "'log_path' must be a string"),
    case("logs-lines-string", "logs", lambda r: {"log_path": f"{r}/logs/app.log",
                                                 "lines": "10"}, "'lines' must be"),
    case("logs-lines-float", "logs", lambda r: {"log_path": f"{r}/logs/app.log",
                                                "lines": 1.5}, "'lines' must be"),
    case("logs-lines-bool", "logs", lambda r: {"log_path": f"{r}/logs/app.log",
                                               "lines": True}, "'lines' must be"),
    case("logs-lines-negative", "logs", lambda r: {"log_path": f"{r}/logs/app.log",
                                                   "lines": -1}, "between 1 and"),
    case("logs-lines-huge", "logs", lambda r: {"log_path": f"{r}/logs/app.log",
                                               "lines": 10**12}, "between 1 and"),
    case("logs-unknown-key", "logs", lambda r: {"log_path": f"{r}/logs/app.log",
                                                "follow": True}, "unknown field"),
    # service
    case("service-not-whitelisted", "service", {"action": "restart", "service_name": "sshd"},
         "not in services.allowed"),
    case("service-semicolon", "service",
         {"action": "start", "service_name": "nginx; reboot"}, "may contain only"),
    case("service-subshell", "service",
         lambda r: {"action": "start", "service_name": f"$({touch(r)})"}, "may contain only"),
    case("service-traversal", "service", {"action": "start", "service_name": "../nginx"},
         "may contain only"),
    case("service-absolute", "service",
         {"action": "start", "service_name": "/etc/init.d/nginx"}, "may contain only"),
    case("service-option", "service", {"action": "start", "service_name": "-H"},
         "must not start with '-'"),
    case("service-newline", "service", {"action": "start", "service_name": "nginx\n"},
         "may contain only"),
    case("service-fullwidth", "service", {"action": "start", "service_name": "ｎｇｉｎｘ"},
         "may contain only"),
    case("service-rtl-override", "service",
         {"action": "start", "service_name": "nginx\u202e"}, "may contain only"),
    case("service-glob", "service", {"action": "stop", "service_name": "*"},
         "may contain only"),
    case("service-100kb", "service", {"action": "stop", "service_name": LONG}, "too long"),
    case("service-name-list", "service", {"action": "stop", "service_name": ["nginx"]},
         "'service_name' must be a string"),
    case("service-action-injection", "service",
         {"action": "start; reboot", "service_name": "nginx"}, "action must be one of"),
    case("service-action-list", "service", {"action": ["start"], "service_name": "nginx"},
         "'action' must be a string"),
    case("service-unknown-key", "service",
         {"action": "start", "service_name": "nginx", "user": "root"}, "unknown field"),
]


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """A scripts directory, an evil.sh outside it (creates the canary), symlinks that try
    to reach it, and a logs folder with a symlink to a secret."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "ok.sh").write_text("echo ok\n")
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch '{tmp_path}/CANARY'\n")
    evil.chmod(0o755)
    (scripts / "escape.sh").symlink_to(Path("..") / "evil.sh")
    (scripts / "escape-abs.sh").symlink_to(evil)
    (scripts / "dirlink").symlink_to(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").write_text("fine\n")
    (tmp_path / "secret.txt").write_text("password=hunter2\n")
    (tmp_path / "logs" / "link.log").symlink_to(tmp_path / "secret.txt")
    return tmp_path


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every process start and every log read is recorded (and still performed, so that a
    missed refusal would show up as a canary too)."""
    calls: list[Any] = []
    real_run, real_read = process.run, logs_command.read_tail_of

    async def run(argv: list[str], **kwargs: Any) -> process.RunResult:
        calls.append(("run", argv))
        return await real_run(argv, **kwargs)

    def read(*args: Any) -> Any:
        calls.append(("read", args))
        return real_read(*args)

    monkeypatch.setattr(process, "run", run)
    monkeypatch.setattr(logs_command, "read_tail_of", read)
    return calls


def make_ctx(root: Path) -> Context:
    raw = {
        "device": {"code": "test-device"},
        "commands": {"allowed": ["true", "echo hello"], "scripts_directory": "scripts",
                     "timeout": 5},
        "services": {"allowed": ["nginx"]},
        "logs": {"allowed_paths": [f"{root}/logs/*.log"]},
    }
    return Context(config=from_dict(raw, base_dir=root))


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert {c.command for c in CASES} == set(HANDLERS)
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("hostile", CASES, ids=[c.id for c in CASES])
async def test_hostile_request_is_refused_and_nothing_runs(
        hostile: Case, arena: Path, spies: list[Any]) -> None:
    request = hostile.request(arena)
    with pytest.raises(CommandError, match=hostile.match) as refused:
        await HANDLERS[hostile.command](request, make_ctx(arena))
    assert len(str(refused.value)) < 500, "error messages stay short"
    assert spies == []
    assert not (arena / "CANARY").exists()


async def test_the_canary_works(arena: Path) -> None:
    """Control: the same evil.sh, run on purpose, does create the canary."""
    result = await process.run([str(arena / "evil.sh")], timeout=5, max_output=1024)
    assert result.exit_code == 0 and (arena / "CANARY").exists()


async def test_legitimate_requests_in_the_same_arena_pass(arena: Path) -> None:
    ctx = make_ctx(arena)
    assert (await exec_command.handle({"command": "ok.sh"}, ctx))["output"] == "ok\n"
    assert (await exec_command.handle({"command": "echo  hello"}, ctx))["output"] == "hello\n"
    reply = await logs_command.handle({"log_path": f"{arena}/logs/app.log"}, ctx)
    assert reply["lines"] == ["fine"]
    assert not (arena / "CANARY").exists()
