"""`cairn-request`: send one NATS request with a .creds file and print the JSON reply.

For people without the `nats` CLI: `cairn-request --creds data/demo/admin.creds
agents.demo-1.cmd.ping`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import nats

from cairn_common.nats_urls import NatsUrlError, parse_nats_urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cairn-request",
                                     description="Send a NATS request, print the reply.")
    parser.add_argument("subject", help="e.g. agents.demo-1.cmd.ping")
    parser.add_argument("payload", nargs="?", default="{}", help="JSON body ({})")
    parser.add_argument("--creds", required=True, help="a .creds file issued by Cairn")
    parser.add_argument("--server", default="nats://127.0.0.1:4222",
                        help="NATS URL, or a comma-separated list (a cluster)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")
    args = parser.parse_args(argv)
    try:
        json.loads(args.payload)
    except ValueError as exc:
        print(f"error: payload is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        args.servers = list(parse_nats_urls(args.server, "--server"))
    except NatsUrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        reply = asyncio.run(_request(args))
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(json.loads(reply), indent=2))
    except ValueError:
        print(reply.decode(errors="replace"))
    return 0


async def _request(args: argparse.Namespace) -> bytes:
    async def quiet(exc: Exception) -> None:
        return None

    nc = await nats.connect(args.servers, user_credentials=args.creds, allow_reconnect=False,
                            connect_timeout=5, error_cb=quiet)
    try:
        msg = await nc.request(args.subject, args.payload.encode(), timeout=args.timeout)
        return msg.data
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(main())
