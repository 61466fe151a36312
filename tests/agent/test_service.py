"""service: refusals run nothing; missing units and missing systemd give clean errors;
each platform builds the right argv and parses its service manager's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent import process, services, services_freebsd, services_linux, services_windows
from agent.commands import service as service_command
from agent.config import from_dict
from agent.context import Context
from agent.errors import CommandError

pytestmark = pytest.mark.timeout(30)


def make_ctx(allowed: list[str]) -> Context:
    raw = {"device": {"code": "test-device"}, "services": {"allowed": allowed}}
    return Context(config=from_dict(raw))


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records (and blocks) every attempt to start a process."""
    calls: list[Any] = []

    async def refuse(argv: list[str], **kwargs: Any) -> process.RunResult:
        calls.append(argv)
        raise AssertionError(f"a process was started: {argv}")

    monkeypatch.setattr(process, "run", refuse)
    return calls


class FakeSystemctl:
    """A `systemctl` on the PATH the agent gives its children, scripted per test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        bin_dir = root / "bin"
        bin_dir.mkdir()
        script = bin_dir / "systemctl"
        script.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$*\" >> '{root}/calls'\n"
            f"case \"$1\" in show) cat '{root}/show' ;;\n"
            f"  *) cat '{root}/out'; exit $(cat '{root}/rc') ;; esac\n")
        script.chmod(0o755)
        self.set(show="LoadState=loaded\nActiveState=active\n", out="", rc=0)

    def set(self, *, show: str, out: str = "", rc: int = 0) -> None:
        (self.root / "show").write_text(show)
        (self.root / "out").write_text(out)
        (self.root / "rc").write_text(str(rc))

    @property
    def calls(self) -> list[str]:
        path = self.root / "calls"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystemctl:
    fake = FakeSystemctl(tmp_path)
    monkeypatch.setattr(services, "platform_module", lambda: services_linux)
    monkeypatch.setattr(process, "DEFAULT_ENV",
                        {"PATH": f"{tmp_path}/bin:{process.DEFAULT_PATH}", "LANG": "C.UTF-8"})
    return fake


@pytest.mark.parametrize("request_", [
    {"action": "restart", "service_name": "sshd"},
    {"action": "stop", "service_name": "nginx.service"},
    {"action": "status", "service_name": "NGINX"},
    {"action": "start", "service_name": "nginx; reboot"},
    {"action": "start", "service_name": "-H"},
    {"action": "start", "service_name": ""},
    {"action": "reload", "service_name": "nginx"},
    {"action": "Start", "service_name": "nginx"},
    {"action": "start", "service_name": "nginx", "force": True},
    {"action": "start"},
    {"action": "start", "service_name": ["nginx"]},
], ids=["not-whitelisted", "suffix-variant", "case-variant", "metachar", "option", "empty",
        "unknown-action", "action-case", "unknown-key", "missing-name", "name-as-list"])
async def test_refused_requests_run_nothing(request_: dict[str, Any], no_run: list[Any]) -> None:
    with pytest.raises(CommandError):
        await service_command.handle(request_, make_ctx(["nginx"]))
    assert no_run == []


async def test_missing_unit_on_this_machine_is_a_clean_error() -> None:
    """Whatever this machine is (systemd, no systemd, no systemctl): a reply, no traceback."""
    name = "cairn-no-such-unit-4b1d"
    reply = await service_command.handle({"action": "status", "service_name": name},
                                         make_ctx([name]))
    assert reply["status"] == "error"
    assert reply["service_status"] in {"not-found", "unknown"}
    assert name in reply["error"] and "Traceback" not in reply["error"]
    assert set(reply) == {"status", "service_name", "action", "output", "service_status",
                          "error"}
    assert await services.service_status(name) in {"not-found", "unknown"}


async def test_not_found_unit_is_reported_and_the_action_never_runs(
        systemctl: FakeSystemctl) -> None:
    systemctl.set(show="LoadState=not-found\nActiveState=inactive\n")
    reply = await service_command.handle({"action": "restart", "service_name": "ghost"},
                                         make_ctx(["ghost"]))
    assert reply["status"] == "error"
    assert reply["error"] == "service 'ghost' not found"
    assert reply["service_status"] == "not-found"
    assert systemctl.calls == ["show --property=LoadState --property=ActiveState -- ghost"]


async def test_status_and_restart_of_a_running_unit(systemctl: FakeSystemctl) -> None:
    ctx = make_ctx(["web@1.service"])
    reply = await service_command.handle({"action": "status", "service_name": "web@1.service"},
                                         ctx)
    assert reply["status"] == "success"
    assert reply["service_status"] == "running"
    systemctl.set(show="LoadState=loaded\nActiveState=active\n", out="restarted\n")
    reply = await service_command.handle(
        {"action": "restart", "service_name": "web@1.service"}, ctx)
    assert reply == {"status": "success", "service_name": "web@1.service",
                     "action": "restart", "output": "restarted\n",
                     "service_status": "running"}
    assert "restart --no-ask-password -- web@1.service" in systemctl.calls


async def test_failed_action_is_an_error_reply(systemctl: FakeSystemctl) -> None:
    systemctl.set(show="LoadState=loaded\nActiveState=failed\n",
                  out="Job for db.service failed.\n", rc=1)
    reply = await service_command.handle({"action": "start", "service_name": "db"},
                                         make_ctx(["db"]))
    assert reply["status"] == "error"
    assert reply["service_status"] == "failed"
    assert reply["output"] == "Job for db.service failed.\n"
    assert "exit code 1" in reply["error"]


async def test_systemd_not_running_is_a_clean_error(systemctl: FakeSystemctl) -> None:
    systemctl.set(show="", out="", rc=0)
    (systemctl.root / "bin" / "systemctl").write_text(
        "#!/bin/sh\necho 'System has not been booted with systemd as init system (PID 1).'"
        "\nexit 1\n")
    reply = await service_command.handle({"action": "stop", "service_name": "db"},
                                         make_ctx(["db"]))
    assert reply["status"] == "error"
    assert reply["service_status"] == "unknown"
    assert "not been booted with systemd" in reply["error"]


async def test_missing_systemctl_is_a_clean_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(services, "platform_module", lambda: services_linux)
    monkeypatch.setattr(process, "DEFAULT_ENV", {"PATH": str(tmp_path), "LANG": "C.UTF-8"})
    reply = await service_command.handle({"action": "status", "service_name": "db"},
                                         make_ctx(["db"]))
    assert reply["status"] == "error"
    assert reply["service_status"] == "unknown"
    assert "systemctl is not available" in reply["error"]
    assert await services.service_status("db") == "unknown"


def test_unsupported_platform_is_a_clear_error() -> None:
    with pytest.raises(CommandError, match="not supported on darwin"):
        services.platform_module("darwin")
    assert services.platform_module("freebsd14") is services_freebsd
    assert services.platform_module("win32") is services_windows
    assert services.platform_module("linux") is services_linux


@pytest.mark.parametrize(("show", "status"), [
    ("LoadState=loaded\nActiveState=active\n", "running"),
    ("LoadState=loaded\nActiveState=reloading\n", "running"),
    ("LoadState=loaded\nActiveState=inactive\n", "stopped"),
    ("LoadState=masked\nActiveState=inactive\n", "stopped"),
    ("LoadState=loaded\nActiveState=failed\n", "failed"),
    ("LoadState=not-found\nActiveState=inactive\n", "not-found"),
    ("LoadState=not-found\nActiveState=active\n", "running"),  # unit file removed, still up
    ("ActiveState=something-new\n", "unknown"),
])
def test_linux_parse_show(show: str, status: str) -> None:
    assert services_linux.parse_show(show) == status


def test_linux_argv() -> None:
    assert services_linux.show_argv("nginx") == [
        "systemctl", "show", "--property=LoadState", "--property=ActiveState", "--", "nginx"]
    assert services_linux.action_argv("nginx", "stop") == [
        "systemctl", "stop", "--no-ask-password", "--", "nginx"]
    with pytest.raises(ValueError):
        services_linux.action_argv("nginx", "status")


def test_freebsd_argv_and_parse() -> None:
    assert services_freebsd.status_argv("nginx") == ["service", "nginx", "onestatus"]
    assert services_freebsd.action_argv("nginx", "restart") == ["service", "nginx", "restart"]
    with pytest.raises(ValueError):
        services_freebsd.action_argv("nginx", "enable")
    parse = services_freebsd.parse_status
    assert parse(0, "nginx is running as pid 812.\n") == "running"
    assert parse(1, "nginx is not running.\n") == "stopped"
    assert parse(1, "nginx does not exist in /etc/rc.d or the local startup\n"
                    "directories (/usr/local/etc/rc.d), or is not executable\n") == "not-found"
    assert parse(3, "weird\n") == "unknown"


SC_RUNNING = """
SERVICE_NAME: Spooler
        TYPE               : 110  WIN32_OWN_PROCESS  (interactive)
        STATE              : 4  RUNNING
                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)
        WIN32_EXIT_CODE    : 0  (0x0)
"""
SC_STOPPED = SC_RUNNING.replace("4  RUNNING", "1  STOPPED")
SC_MISSING = ("[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\n"
              "The specified service does not exist as an installed service.\n")


def test_windows_argv_and_parse() -> None:
    assert services_windows.query_argv("Spooler") == ["sc.exe", "query", "Spooler"]
    assert services_windows.action_argv("Spooler", "restart") == [
        "powershell.exe", "-NoProfile", "-NonInteractive", "-Command",
        "Restart-Service -Name 'Spooler' -ErrorAction Stop"]
    for bad in ("x'; Stop-Computer; '", "a*", "-x"):
        with pytest.raises(ValueError):
            services_windows.action_argv(bad, "start")
    assert services_windows.parse_sc_query(SC_RUNNING) == "running"
    assert services_windows.parse_sc_query(SC_STOPPED) == "stopped"
    assert services_windows.parse_sc_query(SC_MISSING) == "not-found"
    assert services_windows.parse_sc_query("gibberish") == "unknown"
