"""`cairn login --server URL` / `cairn logout --server URL`: argument parsing only."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from cairn_cli.login import LoginError, LoginSettings, login, logout, read_state
from cairn_cli.nats_context import context_dir
from cairn_common.pocketbase import PocketBaseError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn", description="A person's own access to a Cairn fleet.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("login", "sign in, make a key here, get a NATS identity per tenant"),
                       ("logout", "revoke this machine's key and remove its files")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--server", default=os.environ.get("CAIRN_SERVER", ""),
                         help="PocketBase URL, e.g. http://127.0.0.1:8090 (env CAIRN_SERVER)")
        sub.add_argument("--dir", type=Path, default=None,
                         help="where creds files go (default ~/.config/cairn/<server>)")
        sub.add_argument("--no-context", action="store_true",
                         help="write no `nats` CLI contexts")
        sub.add_argument("--email", default=os.environ.get("CAIRN_EMAIL", ""),
                         help="your login (env CAIRN_EMAIL; asked when missing)")
        sub.add_argument("--password-file", type=Path,
                         help="read the password from this file (else env CAIRN_PASSWORD, "
                              "else asked; or env CAIRN_TOKEN, a PocketBase auth token)")
        if name == "login":
            sub.add_argument("--nats-url", default=os.environ.get("CAIRN_NATS_URL", ""),
                             help="NATS URL written into the contexts (default: the "
                                  "server's host, port 4222)")
            sub.add_argument("--label", default=f"cli@{socket.gethostname()}",
                             help="how this login is named on your person_keys rows")
    return parser


def _settings(args: argparse.Namespace) -> LoginSettings:
    server = args.server.rstrip("/")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoginError(f"--server {args.server!r} must be an http(s) URL, e.g. "
                         "http://127.0.0.1:8090")
    where = f"{parts.hostname}_{parts.port or (443 if parts.scheme == 'https' else 80)}"
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    nats_url = getattr(args, "nats_url", "") or f"nats://{parts.hostname}:4222"
    return LoginSettings(
        server=server, nats_url=nats_url,
        directory=(args.dir or config / "cairn" / where).expanduser(),
        context_dir=None if args.no_context else context_dir(),
        label=getattr(args, "label", "cli"))


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            return args.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise LoginError(f"--password-file {args.password_file}: {exc.strerror}") from None
    if os.environ.get("CAIRN_PASSWORD"):
        return os.environ["CAIRN_PASSWORD"]
    if not sys.stdin.isatty():
        raise LoginError("no password: use --password-file, CAIRN_PASSWORD or a terminal")
    return getpass.getpass("Password: ")


def _credentials(args: argparse.Namespace, known_email: str = "") -> tuple[str, str | None,
                                                                          str | None]:
    """(email, password, token): a token only from the environment (never argv)."""
    token = os.environ.get("CAIRN_TOKEN") or None
    if token:
        return "", None, token
    email = args.email or known_email
    if not email:
        if not sys.stdin.isatty():
            raise LoginError("no email: use --email or CAIRN_EMAIL")
        email = input("Email: ").strip()
    return email, _password(args), None


def _warn_cleartext(server: str) -> None:
    parts = urlsplit(server)
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {server} is plain http: your password crosses the network "
              "unencrypted (use https)", file=sys.stderr)


def _do_login(args: argparse.Namespace, settings: LoginSettings) -> int:
    _warn_cleartext(settings.server)
    email, password, token = _credentials(args)
    result = asyncio.run(login(settings, email, password, token,
                               progress=lambda line: print(line, file=sys.stderr)))
    for one in result.tenants:
        if one.error:
            print(f"  {one.slug}: refused: {one.error}", file=sys.stderr)
            continue
        ends = time.strftime("%Y-%m-%d %H:%M", time.localtime(one.expires or 0))
        print(f"  {one.slug} ({one.role}, until {ends}): {one.creds}")
        if one.context:
            print(f"      nats --context {one.context.stem} sub 'agents.*.heartbeat'")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not args.server:
            raise LoginError("--server is required (or set CAIRN_SERVER)")
        settings = _settings(args)
        if args.command == "login":
            return _do_login(args, settings)
        state = read_state(settings.directory)
        if not state:
            print("not logged in here: nothing to do")
            return 0
        email, password, token = _credentials(args, str(state.get("email") or ""))
        gone = asyncio.run(logout(settings, email, password, token))
        print(f"logged out: {gone} key registration(s) deleted")
        return 0
    except (LoginError, PocketBaseError) as exc:
        print(f"cairn {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
