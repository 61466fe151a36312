"""`cairn-bridge restore --from DIR`: a backup laid out into a fresh data directory.

1. The backup is verified first (manifest, size and sha256 of every file, nothing added);
   on any mismatch nothing is written.
2. The target data directory must be missing or empty: nothing is ever overwritten.
3. Files are laid out before any server runs: `secrets/`, `superuser.json`,
   `nats/operator.conf`, the account JWTs into the full resolver's directory
   (`nats/resolver/<account>.jwt`, how nats-server's dir store keeps them), and
   PocketBase's backup zip unpacked into `pocketbase/`. Unpacking is what PocketBase's own
   restore does (extract, swap pb_data, restart), minus the need for a running PocketBase
   and its restart.
4. Streams: the command starts nats-server and PocketBase itself on free loopback ports
   (cairn_stack's `start_nats` / `start_pocketbase`, logs under `logs/`), and uploads each
   tenant's TELEMETRY and ALERTS snapshot in the tenant's account, as a one-off user
   (5 minutes) signed with the account's signing key from PocketBase: the backup's
   `cairn-bridge` creds may have expired by the time a backup is restored. Restored
   streams are R1; on a cluster the bridge scales them up on its next pass. Then both
   servers are stopped and the next step is printed: `make run` on that directory.

Agents keep their own seeds and JWTs: the restored resolver holds the same account JWTs
(with their revocations), so an agent's existing creds connect again and a device
revoked before the backup stays refused. The bridge, once started, re-signs from
PocketBase with an `iat` above the server's copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cairn_common import natsjwt, nkey
from cairn_common.filemodes import private_dir
from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.superuser import LoginMissing, superuser_login
from cairn_stack.nats import start_nats
from cairn_stack.pocketbase import start_pocketbase
from cairn_stack.processes import ManagedProcess, ProcessError, free_port
from pb_hooks_bridge import js_snapshot
from pb_hooks_bridge.backup import PB_ZIP, connect_nats
from pb_hooks_bridge.backup_files import (
    BackupError,
    copy_private,
    copy_tree,
    fresh_dir,
    unzip_private,
    verify,
)

RESTORE_USER = "cairn-restore"
RESTORE_USER_TTL = 300


def say(message: str) -> None:
    print(f"restore: {message}", file=sys.stderr, flush=True)


def lay_out(source: Path, layout: DataLayout, manifest: dict[str, Any]) -> None:
    """Every file of the backup into its place in the (fresh) data directory."""
    includes = manifest.get("includes") or {}
    copied = copy_tree(source / "secrets", layout.secrets_dir)
    copy_private(source / includes.get("nats_include", "nats/operator.conf"),
                 layout.nats_include)
    if (source / layout.superuser_file.name).is_file():
        copy_private(source / layout.superuser_file.name, layout.superuser_file)
    say(f"{len(copied)} files into {layout.secrets_dir}, {layout.nats_include}")
    private_dir(layout.nats_resolver_dir)
    for account in includes.get("accounts") or []:
        copy_private(source / "resolver" / f"{account}.jwt",
                     layout.nats_resolver_dir / f"{account}.jwt")
    say(f"{len(includes.get('accounts') or [])} account JWTs into {layout.nats_resolver_dir}")
    count = unzip_private(source / PB_ZIP, layout.pb_dir)
    say(f"PocketBase data: {count} files into {layout.pb_dir}")
    operator = nkey.from_seed(layout.operator_seed.read_bytes(), "operator")
    if operator.public_key.decode() != manifest.get("operator"):
        raise BackupError(f"{layout.operator_seed} is not the operator the manifest names")


def _restore_user(account_public: str, signing_seed: str) -> tuple[str, str]:
    signing = nkey.from_seed(signing_seed, "account")
    user = nkey.create("user")
    token = natsjwt.encode(natsjwt.user_claims(
        user.public_key.decode(), RESTORE_USER, issuer_account=account_public,
        pub_allow=["$JS.API.>", "$JS.SNAPSHOT.RESTORE.>"], sub_allow=["_INBOX.>"],
        expires=int(time.time()) + RESTORE_USER_TTL), signing)
    return token, user.seed.decode()


async def _restore_tenant(pb: PocketBase, nats_url: str, source: Path,
                          tenant: dict[str, Any]) -> None:
    slug, account = tenant["slug"], tenant["account"]
    row = await pb.first("nats_accounts", f"public_key = {json.dumps(account)}")
    if row is None or not row.get("signing_seed"):
        raise BackupError(f"tenant {slug}: the restored PocketBase has no keys for account "
                          f"{account}")
    jwt, seed = _restore_user(account, row["signing_seed"])
    nc = await connect_nats((nats_url,), jwt, seed, RESTORE_USER)
    try:
        for stream, expected in (tenant.get("streams") or {}).items():
            meta = json.loads((source / "streams" / slug / f"{stream}.json").read_text())
            config = dict(meta["config"])
            config["num_replicas"] = 1  # one server here; the bridge scales it up later
            current = await js_snapshot.stream_info(nc, stream)
            if current is not None:
                if int(current["state"].get("messages") or 0):
                    raise BackupError(f"tenant {slug}: stream {stream} already holds "
                                      "messages; not restoring over it")
                await js_snapshot.delete_stream(nc, stream)  # an empty one made meanwhile
            info = await js_snapshot.restore(nc, config, meta.get("state") or {},
                                             source / "streams" / slug / f"{stream}.snap")
            got = int((info.get("state") or {}).get("messages") or 0)
            if got != int(expected.get("messages") or 0):
                raise BackupError(f"tenant {slug}: stream {stream} restored with {got} "
                                  f"messages, the backup had {expected.get('messages')}")
            say(f"tenant {slug}: {stream} {got} msgs")
    finally:
        await nc.close()


async def restore_streams(source: Path, layout: DataLayout, manifest: dict[str, Any],
                          env: dict[str, str]) -> int:
    tenants = [t for t in (manifest.get("includes") or {}).get("tenants") or []
               if t.get("streams")]
    if not tenants:
        return 0
    try:
        email, password = superuser_login(env, layout.root)
    except LoginMissing as exc:
        raise BackupError(f"streams need the PocketBase superuser of the backup: {exc}"
                          ) from exc
    running: list[ManagedProcess] = []
    try:
        nats_port, monitor, pb_port = free_port(), free_port(), free_port()
        say("starting nats-server and PocketBase on the restored data (loopback, "
            f"ports {nats_port} and {pb_port})")
        try:
            running.append(await asyncio.to_thread(start_nats, layout, nats_port, monitor))
            running.append(await asyncio.to_thread(start_pocketbase, layout, pb_port))
        except ProcessError as exc:
            raise BackupError(f"could not start the restored servers: {exc}") from exc
        async with PocketBase(f"http://127.0.0.1:{pb_port}") as pb:
            try:
                await pb.auth_superuser(email, password)
            except PocketBaseError as exc:
                raise BackupError(f"the restored PocketBase refused the superuser login "
                                  f"({exc}); set CAIRN_ADMIN_EMAIL/CAIRN_ADMIN_PASSWORD to "
                                  "the backup's superuser") from exc
            for tenant in tenants:
                await _restore_tenant(pb, f"nats://127.0.0.1:{nats_port}", source, tenant)
    finally:
        for proc in reversed(running):
            await asyncio.to_thread(proc.stop)
    return sum(len(t["streams"]) for t in tenants)


async def run_restore(source: Path, layout: DataLayout, env: dict[str, str] | None = None,
                      ) -> dict[str, Any]:
    """Verify `source` (absolute), lay it out into `layout.root` (missing or empty),
    restore the streams."""
    env = dict(os.environ if env is None else env)
    if source == layout.root or layout.root in source.parents:
        raise BackupError(f"--from {source} is inside the target data directory")
    manifest = verify(source)
    say(f"backup {source} verified: {len(manifest['files'])} files, made "
        f"{manifest.get('created')} by cairn {manifest.get('versions', {}).get('cairn')}")
    fresh_dir(layout.root, "target data directory")
    try:
        lay_out(source, layout, manifest)
        streams = await restore_streams(source, layout, manifest, env)
    except BackupError as exc:
        raise BackupError(f"{exc}\n(the partly restored {layout.root} was fresh: delete it "
                          "and run the restore again)") from exc
    say(f"done: {streams} streams restored. Next: CAIRN_DATA_DIR={layout.root} make run "
        "(or start nats-server, PocketBase and cairn-bridge on it as usual)")
    return manifest
