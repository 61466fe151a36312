"""`python -m bench fleet-chaos`'s settings (`ChaosConfig`) and its command line, every
field a flag of the same name with its help text."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass, fields

from bench.fleet_chaos_drills import DRILLS


@dataclass(frozen=True)
class ChaosConfig:
    agents: int = 2000
    processes: int = 2  # simulator processes (drill g kills one)
    heartbeat: float = 30.0
    telemetry: float = 10.0
    drills: tuple[str, ...] = tuple(DRILLS)
    down: float = 5.0  # seconds a killed component stays down
    stop_seconds: float = 30.0  # SIGSTOP duration
    timeout: float = 120.0  # bound of every wait of a drill
    ping_timeout: float = 3.0  # one broadcast ping attempt
    setup_timeout: float = 600.0  # stack start, enrollment, connect
    nats_urls: tuple[str, ...] = ()
    pb_url: str = ""  # empty: a private stack
    monitor_urls: tuple[str, ...] = ()
    stack_pid: int = 0
    enroll_concurrency: int = 32
    connect_concurrency: int = 200
    keep_stack: bool = False


HELP = {  # ChaosConfig's fields on the command line, in this order
    "agents": "simulated agents",
    "processes": "simulator processes (drill g kills one of them)",
    "heartbeat": "seconds between an agent's heartbeats (0 = none)",
    "telemetry": "seconds between an agent's telemetry publishes (0 = none)",
    "drills": "which drills, in this order, by letter or name, comma-separated",
    "down": "seconds a killed component stays down before it is started again",
    "stop_seconds": "how long drill c keeps a node SIGSTOPped",
    "timeout": "bound of every wait of a drill: healthy before, agents back, the ping, the "
               "revocation, routing",
    "ping_timeout": "one broadcast ping attempt, repeated until all answer (so ping_all_s is "
                    "as fine as this)",
    "setup_timeout": "bound of the stack's start and of the agents' connect",
    "nats_urls": "an existing stack's NATS URLs, comma-separated (with --pb-url; there only "
                 "drills c and g run: the launcher restarts nothing)",
    "pb_url": "an existing stack's PocketBase, superuser from CAIRN_ADMIN_EMAIL / "
              "CAIRN_ADMIN_PASSWORD (default: a private stack)",
    "monitor_urls": "the existing stack's monitoring URLs in --nats-url's order (default: "
                    "each client port + 4000, as the launcher does)",
    "stack_pid": "the existing stack's launcher pid: drill c SIGSTOPs one of its nodes",
    "enroll_concurrency": "enrollments at once",
    "connect_concurrency": "connects at once per simulator process",
    "keep_stack": "keep the private stack's directory (its logs)",
}
FLAGS = {"nats_urls": "--nats-url", "monitor_urls": "--monitor-url"}  # one flag, a list


def parse(argv: list[str] | None = None) -> ChaosConfig:
    from bench import fleet_chaos  # its docstring is the help's description (at call time)

    table = "\n".join(textwrap.fill(d.what, 88, initial_indent=f"  {k} {d.name:<14} ",
                                    subsequent_indent=" " * 19) for k, d in DRILLS.items())
    about = (fleet_chaos.__doc__ or "").split("\n\n", 1)[1]
    p = argparse.ArgumentParser(
        prog="python -m bench fleet-chaos", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=about + "\n\ndrills (--drills):\n" + table)
    defaults = {f.name: f.default for f in fields(ChaosConfig)}
    for name, text in HELP.items():
        flag, default = FLAGS.get(name, "--" + name.replace("_", "-")), defaults[name]
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action="store_true", help=text)
            continue
        shown = ",".join(default) if isinstance(default, tuple) else default
        p.add_argument(flag, dest=name, metavar=flag[2:].upper().replace("-", "_"),
                       type=str if isinstance(default, tuple) else type(default),
                       default=shown, help=f"{text} ({shown})" if shown else text)
    values = vars(p.parse_args(argv))
    for name, default in defaults.items():
        if isinstance(default, tuple):
            values[name] = tuple(v.strip() for v in values[name].split(",") if v.strip())
    names = {d.name: k for k, d in DRILLS.items()}
    values["drills"] = tuple(names.get(d, d) for d in values["drills"])
    unknown = [d for d in values["drills"] if d not in DRILLS]
    if unknown:
        p.error(f"unknown drill {unknown[0]!r}; choose from {', '.join(DRILLS)} or "
                f"{', '.join(names)}")
    if values["agents"] < 1 or values["processes"] < 1:
        p.error("--agents and --processes must be at least 1")
    return ChaosConfig(**values)
