"""systemd: one `systemctl show` answers both "does the unit exist" and "is it running"."""

from __future__ import annotations

from agent.services import ServiceState, first_line, run_tool

TOOL = "systemctl"
_RUNNING = {"active", "reloading", "refreshing", "activating"}
_STOPPED = {"inactive", "deactivating", "maintenance"}


def show_argv(name: str) -> list[str]:
    """LoadState tells a missing unit (not-found) apart; ActiveState is what is-active prints.

    One call instead of `is-active` + `show`: is-active exits non-zero for a stopped unit,
    which cannot be told apart from systemd itself failing.
    """
    return [TOOL, "show", "--property=LoadState", "--property=ActiveState", "--", name]


def action_argv(name: str, action: str) -> list[str]:
    if action not in {"start", "stop", "restart"}:
        raise ValueError(f"not a service action: {action!r}")
    return [TOOL, action, "--no-ask-password", "--", name]


def parse_show(output: str) -> str:
    """`LoadState=...` / `ActiveState=...` lines → a status of agent.services.STATUSES."""
    props = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    load, active = props.get("LoadState", ""), props.get("ActiveState", "")
    if load == "not-found" and active in {"", "inactive"}:
        return "not-found"
    if active in _RUNNING:
        return "running"
    if active in _STOPPED:
        return "stopped"
    if active == "failed":
        return "failed"
    return "unknown"


async def query(name: str, timeout: float) -> ServiceState:
    result = await run_tool(show_argv(name), timeout, TOOL)
    if isinstance(result, str):
        return ServiceState("unknown", error=result)
    if result.timed_out:
        return ServiceState("unknown", result.output, f"{TOOL} did not answer in time")
    if result.exit_code != 0 or "LoadState=" not in result.output:
        # e.g. "System has not been booted with systemd as init system (PID 1)."
        reason = first_line(result.output) or f"{TOOL} exited with code {result.exit_code}"
        return ServiceState("unknown", result.output, reason)
    return ServiceState(parse_show(result.output), result.output)
