"""`cairn-stack`: run the local Cairn stack (what `make run` calls)."""

from __future__ import annotations

import argparse
import os
import sys

from cairn_common import logs
from cairn_stack import app, settings
from cairn_stack.sidecars import SECRET_ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cairn-stack",
        description="Start nats-server, PocketBase and the Cairn sidecars on loopback, with "
        "state under $CAIRN_DATA_DIR (default ./data). Stop with Ctrl-C.",
        epilog="Settings (environment): CAIRN_DATA_DIR, CAIRN_NATS_PORT (4222), "
        "CAIRN_NATS_MONITOR_PORT (8222), CAIRN_NATS_WS_PORT (9222), CAIRN_PB_PORT (8090), "
        "CAIRN_ADMIN_EMAIL, "
        "CAIRN_ADMIN_PASSWORD, CAIRN_DEMO (1), CAIRN_NATS_NODES (1; 3 runs a local "
        "cluster, node i on each NATS port + i-1), CAIRN_NATS_CLUSTER_PORT (6222).",
    )
    parser.parse_args(argv)
    logs.setup("stack")
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in SECRET_ENV:  # read once into `config`; no child process inherits them
        os.environ.pop(name, None)
    return app.run(config)


if __name__ == "__main__":
    sys.exit(main())
