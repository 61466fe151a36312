"""FreeBSD rc(8): `service NAME onestatus|start|stop|restart`."""

from __future__ import annotations

from agent.services import ServiceState, first_line, run_tool

TOOL = "service"


def status_argv(name: str) -> list[str]:
    # onestatus answers even when NAME_enable is not set in rc.conf.
    return [TOOL, name, "onestatus"]


def action_argv(name: str, action: str) -> list[str]:
    if action not in {"start", "stop", "restart"}:
        raise ValueError(f"not a service action: {action!r}")
    return [TOOL, name, action]


def parse_status(exit_code: int | None, output: str) -> str:
    """rc.subr: 0 "is running as pid N"; 1 "is not running"; unknown names "does not exist"."""
    if "does not exist" in output:
        return "not-found"
    if exit_code == 0:
        return "running"
    if exit_code == 1 and "not running" in output:
        return "stopped"
    return "unknown"


async def query(name: str, timeout: float) -> ServiceState:
    result = await run_tool(status_argv(name), timeout, TOOL)
    if isinstance(result, str):
        return ServiceState("unknown", error=result)
    if result.timed_out:
        return ServiceState("unknown", result.output, f"{TOOL} did not answer in time")
    status = parse_status(result.exit_code, result.output)
    if status == "unknown":
        reason = first_line(result.output) or f"{TOOL} exited with code {result.exit_code}"
        return ServiceState(status, result.output, reason)
    return ServiceState(status, result.output)
