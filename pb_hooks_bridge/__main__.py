"""`cairn-bridge`: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from cairn_common import logs
from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge.app import Bridge
from pb_hooks_bridge.bootstrap import bootstrap, check_secrets
from pb_hooks_bridge.config import BridgeConfig
from pb_hooks_bridge.config import load as load_config
from pb_hooks_bridge.errors import BridgeError
from pb_hooks_bridge.reconcile import Summary
from pb_hooks_bridge.sidecar_logins import ensure_sidecar_login


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn-bridge",
        description="Keeps NATS accounts and users in step with PocketBase and dispatches "
        "commands. Holds the operator and account signing keys.",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CAIRN_DATA_DIR") or "./data"),
        help="Cairn data directory holding secrets/ and nats/ (env CAIRN_DATA_DIR; ./data)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("bootstrap", help="create the operator and system account once (idempotent)")
    run = sub.add_parser("run", help="follow PocketBase and keep NATS in step (the service)")
    run.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus /metrics on 127.0.0.1:PORT "
                     "(env CAIRN_BRIDGE_METRICS_PORT; off by default)")
    sub.add_parser("reconcile", help="one reconciliation pass, print a summary, exit")
    creds = sub.add_parser("creds", help="print a service user's .creds")
    creds.add_argument("tenant", help="tenant slug")
    creds.add_argument("name", help="nats_users name")
    login = sub.add_parser(
        "sidecar-login", help="create a least-privilege sidecar login (e.g. for cairn-router) "
        "and write it to a 0600 file (idempotent: a working file is kept)")
    login.add_argument("name", help="sidecar name, e.g. cairn-router")
    login.add_argument("--kind", default="router", choices=["router"], help="(router)")
    login.add_argument("--out", type=Path, required=True,
                       help="login file to write (then CAIRN_ROUTER_LOGIN_FILE for the router)")
    return parser


async def _run(config: BridgeConfig) -> None:
    bridge = Bridge(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, bridge.stopping.set)
    try:
        await bridge.start()
        await bridge.run()
    finally:
        await bridge.stop()


async def _reconcile(config: BridgeConfig) -> Summary:
    bridge = Bridge(config)
    try:
        await bridge.start()
        return await bridge.reconcile()
    finally:
        await bridge.stop()


async def _creds(config: BridgeConfig, slug: str, name: str) -> str:
    async with PocketBase(config.pb_url) as pb:
        await pb.auth_superuser(config.admin_email, config.admin_password)
        tenant = await pb.first("tenants", f"slug = {json.dumps(slug)}")
        if tenant is None:
            raise BridgeError(f"no tenant with slug {slug!r}")
        row = await pb.first("nats_users",
                             f'tenant = "{tenant["id"]}" && name = {json.dumps(name)}')
        if row is None:
            raise BridgeError(f"tenant {slug!r} has no nats_users row named {name!r}")
        if not row.get("creds"):
            raise BridgeError(f"{slug}/{name} has no credentials yet "
                              f"({row.get('error') or 'is the bridge running?'})")
        return row["creds"]


async def _sidecar_login(config: BridgeConfig, name: str, kind: str, out: Path) -> bool:
    async with PocketBase(config.pb_url) as pb:
        await pb.auth_superuser(config.admin_email, config.admin_password)
        return await ensure_sidecar_login(pb, name, kind, out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup("bridge", args.log_level)
    layout = DataLayout(args.data_dir.resolve())
    try:
        if args.command == "bootstrap":
            result = bootstrap(layout)
            state = "created " + ", ".join(result.changed) if result.changed else "unchanged"
            print(f"operator {result.operator_public}\nsystem account {result.system_account}\n"
                  f"{state}")
            return 0
        check_secrets(layout)  # before anything reads the login or a seed
        config = load_config(data_dir=args.data_dir,
                             metrics_port=getattr(args, "metrics_port", None))
        if args.command == "run":
            asyncio.run(_run(config))
            return 0
        if args.command == "reconcile":
            summary = asyncio.run(_reconcile(config))
            print(summary.line())
            return 0
        if args.command == "sidecar-login":
            changed = asyncio.run(_sidecar_login(config, args.name, args.kind, args.out))
            print(f"{args.out}: {'written' if changed else 'unchanged (still logs in)'}")
            return 0
        print(asyncio.run(_creds(config, args.tenant, args.name)), end="")
        return 0
    except (BridgeError, PocketBaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
