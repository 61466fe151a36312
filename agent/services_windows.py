"""Windows: `sc.exe query` for the state, PowerShell's *-Service cmdlets for actions
(they wait for the service to settle, where `sc start` returns at START_PENDING)."""

from __future__ import annotations

import re

from agent.services import ServiceState, first_line, name_problem, run_tool

TOOL = "sc.exe"
POWERSHELL = "powershell.exe"
_CMDLETS = {"start": "Start-Service", "stop": "Stop-Service", "restart": "Restart-Service"}
_STATE = re.compile(r"^\s*STATE\s*:\s*(\d+)\s+(\w+)", re.MULTILINE)
_STATES = {"RUNNING": "running", "START_PENDING": "running", "CONTINUE_PENDING": "running",
           "STOPPED": "stopped", "STOP_PENDING": "stopped", "PAUSED": "stopped",
           "PAUSE_PENDING": "stopped"}


def query_argv(name: str) -> list[str]:
    return [TOOL, "query", name]


def action_argv(name: str, action: str) -> list[str]:
    """PowerShell reads -Command as script text, so the name is re-checked here: the
    allowed characters ([A-Za-z0-9@._-]) cannot close the quotes or form a wildcard."""
    if action not in _CMDLETS:
        raise ValueError(f"not a service action: {action!r}")
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    script = f"{_CMDLETS[action]} -Name '{name}' -ErrorAction Stop"
    return [POWERSHELL, "-NoProfile", "-NonInteractive", "-Command", script]


def parse_sc_query(output: str) -> str:
    """`STATE : 4 RUNNING` → running; error 1060 means the service does not exist."""
    if "1060" in output:
        return "not-found"
    match = _STATE.search(output)
    if not match:
        return "unknown"
    return _STATES.get(match.group(2).upper(), "unknown")


async def query(name: str, timeout: float) -> ServiceState:
    result = await run_tool(query_argv(name), timeout, TOOL)
    if isinstance(result, str):
        return ServiceState("unknown", error=result)
    if result.timed_out:
        return ServiceState("unknown", result.output, f"{TOOL} did not answer in time")
    status = parse_sc_query(result.output)
    if status == "unknown":
        reason = first_line(result.output) or f"{TOOL} exited with code {result.exit_code}"
        return ServiceState(status, result.output, reason)
    return ServiceState(status, result.output)
