"""`cairn-agent install-service`: a systemd unit (Linux), an rc.d script (FreeBSD), or the
`sc.exe` command for a Windows service. Writes the file and prints the enable command."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServicePlan:
    path: Path | None  # None: nothing to write (Windows: a command does it)
    content: str
    enable: str


def plan(config_path: Path, platform: str = sys.platform,
         executable: str = sys.executable) -> ServicePlan:
    config_path = config_path.resolve()
    run = f"{shlex.quote(executable)} -m agent run --config {shlex.quote(str(config_path))}"
    if platform.startswith("linux"):
        unit = f"""[Unit]
Description=Cairn agent (fleet telemetry and whitelisted commands)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={run}
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=45
WorkingDirectory={config_path.parent}

[Install]
WantedBy=multi-user.target
"""
        return ServicePlan(Path("/etc/systemd/system/cairn-agent.service"), unit,
                           "systemctl daemon-reload && systemctl enable --now cairn-agent")
    if platform.startswith("freebsd"):
        script = f"""#!/bin/sh
# PROVIDE: cairn_agent
# REQUIRE: NETWORKING
# KEYWORD: shutdown
. /etc/rc.subr
name="cairn_agent"
rcvar="cairn_agent_enable"
pidfile="/var/run/${{name}}.pid"
command="/usr/sbin/daemon"
command_args="-r -P ${{pidfile}} {run}"
load_rc_config $name
: ${{cairn_agent_enable:="NO"}}
run_rc_command "$1"
"""
        return ServicePlan(Path("/usr/local/etc/rc.d/cairn_agent"), script,
                           "sysrc cairn_agent_enable=YES && service cairn_agent start")
    if platform.startswith("win"):
        command = (f'sc.exe create CairnAgent binPath= "{executable} -m agent run --config '
                   f'{config_path}" start= auto DisplayName= "Cairn agent"')
        return ServicePlan(None, command, "sc.exe start CairnAgent")
    raise ValueError(f"no service manager support for platform {platform!r}")


def install(config_path: Path, dry_run: bool) -> str:
    """Write the unit (unless dry run); return what to tell the user."""
    p = plan(config_path)
    if p.path is None:
        return f"Run in an elevated prompt:\n  {p.content}\n  {p.enable}\n"
    if dry_run:
        return f"# would write {p.path}:\n{p.content}\n# then run:\n{p.enable}\n"
    p.path.write_text(p.content)
    if p.path.suffix != ".service":
        p.path.chmod(0o755)
    return f"wrote {p.path}\nenable and start it with:\n  {p.enable}\n"
