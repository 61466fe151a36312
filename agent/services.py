"""Service control and status, the same on every OS: the platform module builds the argv.

`service_status` never raises (telemetry polls it); `service_action` reports failures in
its result, and raises CommandError only for a name or action that should never have
reached it. The service manager runs through agent.process (argv, never a shell).
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from agent import process
from agent.errors import CommandError

ACTIONS = ("start", "stop", "restart", "status")
STATUSES = ("running", "stopped", "failed", "unknown", "not-found")
MAX_NAME_CHARS = 256
QUERY_TIMEOUT = 10.0
MAX_OUTPUT = 64 * 1024
# Unit/service names only: no spaces, quotes, wildcards or separators, nothing a service
# manager (or PowerShell) could read as syntax; a leading '-' would read as an option.
_NAME = re.compile(r"[A-Za-z0-9@._][A-Za-z0-9@._-]*")


@dataclass(frozen=True)
class ServiceState:
    """A status from STATUSES; `error` says why the service manager gave no answer."""

    status: str
    output: str = ""
    error: str | None = None


def name_problem(name: str) -> str | None:
    """Why `name` is not an acceptable service name, or None."""
    if not name:
        return "service_name is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"service_name is too long (at most {MAX_NAME_CHARS} characters)"
    if not _NAME.fullmatch(name):
        return ("service_name may contain only ASCII letters, digits and @ . _ - "
                "and must not start with '-'")
    return None


def platform_module(platform: str = sys.platform) -> ModuleType:
    """The variant for this OS, by suffix like node_exporter's collectors."""
    if platform.startswith("linux"):
        suffix = "linux"
    elif platform.startswith("freebsd"):
        suffix = "freebsd"
    elif platform == "win32":
        suffix = "windows"
    else:
        raise CommandError(f"service control is not supported on {platform}")
    return importlib.import_module(f"agent.services_{suffix}")


async def run_tool(argv: list[str], timeout: float, tool: str) -> process.RunResult | str:
    """Run a service-manager command; a tool that cannot start becomes a message."""
    try:
        return await process.run(argv, timeout=timeout, max_output=MAX_OUTPUT)
    except CommandError as exc:
        return f"{tool} is not available on this machine ({exc})"


async def service_query(name: str, timeout: float = QUERY_TIMEOUT) -> ServiceState:
    """The service's state, with the service manager's words when it could not answer."""
    problem = name_problem(name)
    if problem:
        raise CommandError(problem)
    try:
        return await platform_module().query(name, timeout)
    except CommandError as exc:
        return ServiceState("unknown", error=str(exc))


async def service_status(name: str) -> str:
    """running | stopped | failed | unknown | not-found; never raises for a valid name."""
    return (await service_query(name)).status


async def service_action(name: str, action: str, timeout: float) -> dict[str, Any]:
    """Run `action` on `name`: {"ok", "output", "service_status"} (+ "error" when not ok).

    A missing service or an unreachable service manager is reported before anything is
    started; the state after the action is queried again.
    """
    if action not in ACTIONS:
        raise CommandError(f"action must be one of {', '.join(ACTIONS)}")
    state = await service_query(name, min(timeout, QUERY_TIMEOUT))
    if state.status == "not-found":
        return _result(False, state.output, "not-found", f"service {name!r} not found")
    if state.error is not None:
        return _result(False, state.output, state.status,
                       f"cannot query service {name!r}: {state.error}")
    if action == "status":
        return _result(True, state.output, state.status)
    platform = platform_module()
    result = await run_tool(platform.action_argv(name, action), timeout, platform.TOOL)
    if isinstance(result, str):
        return _result(False, "", state.status, result)
    after = await service_query(name, QUERY_TIMEOUT)
    if result.timed_out:
        return _result(False, result.output, after.status,
                       f"{action} of service {name!r} timed out after {timeout:g} s")
    if result.exit_code != 0:
        return _result(False, result.output, after.status,
                       f"{action} of service {name!r} failed (exit code {result.exit_code})")
    return _result(True, result.output, after.status)


def _result(ok: bool, output: str, status: str, error: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": ok, "output": output, "service_status": status}
    if error is not None:
        result["error"] = error
    return result


def first_line(text: str, limit: int = 300) -> str:
    """The service manager's message, short enough for an error reply."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line[:limit]
