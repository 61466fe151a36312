"""Logins for Cairn's least-privilege sidecars (the router): a `sidecars` row and a 0600
login file, made with the superuser login that only the bridge and the launcher hold.

Idempotent: an existing file whose password still logs in is kept; otherwise the row is
created (or its password reset) and the file written anew.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from cairn_common import creds
from cairn_common.pocketbase import PocketBase, PocketBaseError
from cairn_common.sidecar_login import COLLECTION, SidecarLogin, SidecarLoginError, read_login


async def ensure_sidecar_login(admin: PocketBase, name: str, kind: str, path: Path) -> bool:
    """Make sure `path` holds a working login for sidecar `name`; True when (re)written.

    `admin` is authenticated as a superuser.
    """
    row = await admin.first(COLLECTION, f'name = "{name}"')
    if row is not None and row.get("kind") != kind:
        await admin.update(COLLECTION, row["id"], {"kind": kind})
    if row is not None and await asyncio.to_thread(path.exists):
        try:
            login = read_login(path)
        except SidecarLoginError:
            login = None
        if login is not None and login.name == name and await _logs_in(admin.url, login):
            return False
    password = secrets.token_urlsafe(32)
    body = {"password": password, "passwordConfirm": password}
    if row is None:
        await admin.create(COLLECTION, {"name": name, "kind": kind, **body})
    else:
        await admin.update(COLLECTION, row["id"], body)
    creds.write_secret(path, SidecarLogin(name, password).to_json())
    return True


async def _logs_in(url: str, login: SidecarLogin) -> bool:
    async with PocketBase(url) as pb:
        try:
            await pb.auth_with_password(COLLECTION, login.name, login.password)
        except PocketBaseError:
            return False
    return True
