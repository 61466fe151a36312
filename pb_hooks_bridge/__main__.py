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
from pb_hooks_bridge import backup_cli, control_account
from pb_hooks_bridge.app import Bridge
from pb_hooks_bridge.bootstrap import bootstrap, check_secrets
from pb_hooks_bridge.bulk_devices import (
    DEFAULT_CHUNK,
    DEFAULT_CONCURRENCY,
    MAX_COUNT,
    BulkRequest,
    codes_from_file,
    codes_from_prefix,
    run_cli,
)
from pb_hooks_bridge.config import BridgeConfig
from pb_hooks_bridge.config import load as load_config
from pb_hooks_bridge.errors import BridgeError
from pb_hooks_bridge.leader import RECONCILE
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
    sub.add_parser("bootstrap", help="create the operator, the system account and the "
                   "cairn-control account once (idempotent)")
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
    _bulk_parser(sub)
    backup_cli.add_parsers(sub)
    return parser


def _bulk_parser(sub: argparse._SubParsersAction) -> None:
    bulk = sub.add_parser(
        "devices-bulk", help="create N device rows in one tenant, each with its own random "
        "enrollment secret, and write code,secret,tenant to a 0600 CSV for the installer",
        description="Creates device rows through PocketBase's batch API (superuser login, as "
        "the bridge uses). Existing codes are reported and skipped. The CSV holds the only "
        "copy of the secrets: it is written 0600 and never overwritten without --force.")
    bulk.add_argument("--tenant", required=True, metavar="SLUG", help="tenant slug")
    which = bulk.add_mutually_exclusive_group(required=True)
    which.add_argument("--prefix", metavar="P", help="codes P-00001 ... (with --count)")
    which.add_argument("--codes", type=Path, metavar="FILE", help="one code per line")
    bulk.add_argument("--count", type=int, metavar="N",
                      help=f"how many devices with --prefix (1..{MAX_COUNT})")
    bulk.add_argument("--name-prefix", default="", help="device name = NAME_PREFIX + code")
    bulk.add_argument("--out", type=Path, required=True, metavar="CSV",
                      help="CSV to write (code,secret,tenant; mode 0600)")
    bulk.add_argument("--force", action="store_true", help="overwrite an existing --out")
    bulk.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                      help=f"rows per batch request ({DEFAULT_CHUNK}; at most PocketBase's "
                      "batch maxRequests)")
    bulk.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                      help=f"batches in flight at once ({DEFAULT_CONCURRENCY})")


def _bulk_request(args: argparse.Namespace) -> BulkRequest:
    if args.prefix is not None:
        if args.count is None:
            raise BridgeError(f"--prefix needs --count N (1..{MAX_COUNT})")
        codes = codes_from_prefix(args.prefix, args.count)
    else:
        if args.count is not None:
            raise BridgeError("--count goes with --prefix, not with --codes")
        codes = codes_from_file(args.codes)
    return BulkRequest(tenant=args.tenant, codes=codes, out=args.out, force=args.force,
                       name_prefix=args.name_prefix, chunk=args.chunk,
                       concurrency=args.concurrency)


async def _run(config: BridgeConfig) -> None:
    """Lead, or stand by until this bridge may (leader.py). A bridge that loses the lease
    stops everything it did and stands by again, as a fresh Bridge."""
    loop = asyncio.get_running_loop()
    while True:
        bridge = Bridge(config)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, bridge.stopping.set)
        try:
            await bridge.start()
            await bridge.run()
        finally:
            await bridge.stop()
        if not bridge.lost_lease:
            return


async def _reconcile(config: BridgeConfig) -> str:
    """A full pass: by the leading bridge when one runs (asked over NATS), else here."""
    bridge = Bridge(config)
    try:
        await bridge.start(standby=False)
        if bridge.leading:
            return (await bridge.reconcile()).line()
        return await bridge.leadership.ask(RECONCILE, timeout=600)
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
    if args.command in backup_cli.COMMANDS:
        return backup_cli.main(args, layout)
    try:
        if args.command == "bootstrap":
            result = bootstrap(layout)
            state = "created " + ", ".join(result.changed) if result.changed else "unchanged"
            print(f"operator {result.operator_public}\nsystem account {result.system_account}\n"
                  f"control account {result.control_account}\n{state}")
            return 0
        request = _bulk_request(args) if args.command == "devices-bulk" else None
        check_secrets(layout)  # before anything reads the login or a seed
        if args.command in ("run", "reconcile"):  # only bootstrap makes it (control_account)
            control_account.require(layout)
        config = load_config(data_dir=args.data_dir,
                             metrics_port=getattr(args, "metrics_port", None))
        if args.command == "run":
            asyncio.run(_run(config))
            return 0
        if args.command == "reconcile":
            print(asyncio.run(_reconcile(config)))
            return 0
        if args.command == "sidecar-login":
            changed = asyncio.run(_sidecar_login(config, args.name, args.kind, args.out))
            print(f"{args.out}: {'written' if changed else 'unchanged (still logs in)'}")
            return 0
        if request is not None:
            result = asyncio.run(run_cli(config.pb_url, config.admin_email,
                                         config.admin_password, request))
            print(f"{result.line()}\n{request.out}: {len(result.created)} secrets (0600)")
            return 0
        print(asyncio.run(_creds(config, args.tenant, args.name)), end="")
        return 0
    except (BridgeError, PocketBaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
