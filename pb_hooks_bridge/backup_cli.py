"""`cairn-bridge backup` and `cairn-bridge restore`: their arguments and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBaseError
from pb_hooks_bridge.bootstrap import check_secrets
from pb_hooks_bridge.config import load as load_config
from pb_hooks_bridge.errors import BridgeError

COMMANDS = ("backup", "restore")

BACKUP_HELP = """\
Writes a complete backup of a running stack into DIR (missing or empty; made 0700, every
file 0600): the data directory's secrets/ (operator, SYS and cairn-control seeds, JWTs,
creds), superuser.json, nats/operator.conf, PocketBase's data (its backup API), every
account JWT the NATS server holds (over $SYS with the SYS creds), a JetStream snapshot of
every active tenant's TELEMETRY and ALERTS, and manifest.json (versions, time, contents,
sha256 of every file). Needs PocketBase and nats-server up (CAIRN_PB_URL/CAIRN_PB_PORT,
CAIRN_NATS_URL/CAIRN_NATS_PORT) and the superuser login the bridge uses. The backup holds
every seed: keep it like the keys themselves."""

RESTORE_HELP = """\
Restores a backup made by `cairn-bridge backup` into the data directory (--data-dir or
CAIRN_DATA_DIR), which must be missing or empty: nothing is overwritten. The manifest and
every checksum are verified before anything is written. Files are laid out, then the
command starts nats-server and PocketBase itself on free loopback ports to upload the
JetStream snapshots, and stops them. Then run the stack on that directory as usual
(`CAIRN_DATA_DIR=DIR make run`): agents connect with their existing creds, devices revoked
before the backup stay refused. The superuser login comes from the backup's
superuser.json, else CAIRN_ADMIN_EMAIL/CAIRN_ADMIN_PASSWORD."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    backup = sub.add_parser("backup", help="back up secrets, PocketBase, account JWTs and "
                            "JetStream streams into a new directory", description=BACKUP_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    backup.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="backup directory to create (missing or empty)")
    restore = sub.add_parser("restore", help="restore a backup into a fresh data directory",
                             description=RESTORE_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    restore.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR",
                         help="backup directory made by `cairn-bridge backup`")


def main(args: argparse.Namespace, layout: DataLayout) -> int:
    from pb_hooks_bridge.backup import run_backup
    from pb_hooks_bridge.restore import run_restore

    try:
        if args.command == "backup":
            check_secrets(layout)
            config = load_config(data_dir=args.data_dir)
            manifest = asyncio.run(run_backup(config, args.out.resolve()))
            print(f"{args.out.resolve()}: {len(manifest['files'])} files")
        else:
            asyncio.run(run_restore(args.source.resolve(), layout))
            print(f"{layout.root}: restored")
        return 0
    except (BridgeError, PocketBaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
