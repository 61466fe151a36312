"""`cairn-bridge`: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cairn_common import logs
from cairn_common.layout import DataLayout
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.errors import BridgeError


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
    sub.add_parser("run", help="follow PocketBase and keep NATS in step (the service)")
    sub.add_parser("reconcile", help="one reconciliation pass, print a summary, exit")
    creds = sub.add_parser("creds", help="print a service user's .creds")
    creds.add_argument("tenant", help="tenant slug")
    creds.add_argument("name", help="nats_users name")
    return parser


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
        print(f"cairn-bridge {args.command}: not built yet", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
