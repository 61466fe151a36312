"""`cairn-agent`: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from agent import config as config_mod
from agent.context import VERSION
from agent.errors import AgentError
from cairn_common import logs
from cairn_common.filemodes import NotPrivateError, WritableByOthersError


def default_dir() -> Path:
    if os.environ.get("CAIRN_AGENT_DIR"):
        return Path(os.environ["CAIRN_AGENT_DIR"])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/etc/cairn-agent")
    return Path.home() / ".config" / "cairn-agent"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn-agent",
        description="Cairn edge agent: enrolls with its own key, answers whitelisted commands "
        "over NATS, publishes heartbeat and telemetry. Opens no listening port.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    enroll = sub.add_parser("enroll", help="register this machine as a device and get creds")
    enroll.add_argument("--server", required=True, help="PocketBase URL, e.g. http://cp:8090")
    enroll.add_argument("--tenant", default="", metavar="SLUG",
                        help="the tenant's slug: the login is <tenant>/<code>, since codes "
                        "are unique per tenant (needed for every device made since; only a "
                        "device made before may log in by its bare code)")
    enroll.add_argument("--code", required=True, help="the device code an admin created")
    enroll.add_argument("--dir", type=Path, default=default_dir(),
                        help=f"where agent.yaml, the key and creds go ({default_dir()})")
    enroll.add_argument("--nats", action="append", default=[], metavar="URL",
                        help="NATS server URL (repeatable; default nats://<server host>:4222)")
    enroll.add_argument("--secret-file", help="file holding the enrollment secret (else "
                        "$CAIRN_ENROLL_SECRET, else a prompt)")
    enroll.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the credentials (60)")
    config_help = f"path of agent.yaml ({default_dir() / 'agent.yaml'})"
    run = sub.add_parser("run", help="run the agent (the service)")
    run.add_argument("--config", type=Path, default=default_dir() / "agent.yaml", help=config_help)
    check = sub.add_parser("check-config", help="validate agent.yaml, print the effective config")
    check.add_argument("--config", type=Path, default=default_dir() / "agent.yaml",
                       help=config_help)
    install = sub.add_parser("install-service", help="install a systemd/rc.d/Windows service")
    install.add_argument("--config", type=Path, default=default_dir() / "agent.yaml",
                         help=config_help)
    install.add_argument("--dry-run", action="store_true", help="print, write nothing")
    sub.add_parser("version", help="print the agent version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"cairn-agent {VERSION}")
            return 0
        if args.command == "enroll":
            return _enroll(args)
        config = config_mod.load(args.config)
        if args.command == "check-config":
            print(json.dumps(config_mod.to_dict(config), indent=2))
            return 0
        if args.command == "install-service":
            from agent.service_install import install
            print(install(args.config, args.dry_run), end="")
            return 0
        from agent.credentials import check_secret_files
        from agent.trust import check_run_files

        check_secret_files(config)  # refuse before anything reads the seed or creds
        check_run_files(args.config, config)  # nobody else may change what we run
        logs.setup("agent", config.logging.level, config.logging.json)
        _add_file_log(config)
        asyncio.run(_run(config))
        return 0
    except (AgentError, NotPrivateError, WritableByOthersError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (PermissionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _enroll(args: argparse.Namespace) -> int:
    from agent.enrollment import EnrollRequest, default_nats_urls, enroll, read_secret

    logs.setup("agent")
    problem = _unwritable(args.dir)
    if problem:  # said before the secret is asked for
        print(f"error: {problem}", file=sys.stderr)
        return 1
    secret = read_secret(args.secret_file, interactive=sys.stdin.isatty())
    request = EnrollRequest(
        server=args.server.rstrip("/"), code=args.code, tenant=args.tenant, directory=args.dir,
        nats_urls=tuple(args.nats) or default_nats_urls(args.server), secret=secret,
        timeout=args.timeout)
    path = asyncio.run(enroll(request))
    print(f"enrolled {request.login}; config in {path}\nstart it with: cairn-agent run --config "
          f"{path}")
    return 0


def _unwritable(directory: Path) -> str | None:
    """Why enroll could not write its files into `directory` (None: it can)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the nearest folder that exists must let us make the rest
    if os.access(probe, os.W_OK | os.X_OK) and (probe == directory or probe.is_dir()):
        return None
    hint = ("run as root, or pass --dir with a folder you own" if os.geteuid() != 0
            else "pass --dir with a writable folder") if hasattr(os, "geteuid") else \
        "pass --dir with a writable folder"
    return (f"cannot write to {directory} ({probe} is not writable by this user): {hint} "
            f"(without root the default is {Path.home() / '.config' / 'cairn-agent'})")


def _add_file_log(config: config_mod.AgentConfig) -> None:
    if not config.logging.file:
        return
    import logging
    from logging.handlers import RotatingFileHandler

    handler = RotatingFileHandler(config.path(config.logging.file),
                                  maxBytes=config.logging.max_bytes,
                                  backupCount=config.logging.backups)
    handler.setFormatter(logs.JsonFormatter("agent"))
    logging.getLogger().addHandler(handler)


async def _run(config: config_mod.AgentConfig) -> None:
    from agent.app import AgentApp

    app = AgentApp(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    start = asyncio.create_task(app.start())
    await asyncio.wait({start, asyncio.create_task(stop.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    if not start.done():  # stopped while still connecting
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    else:
        start.result()
        await stop.wait()
    await app.stop()


if __name__ == "__main__":
    sys.exit(main())
