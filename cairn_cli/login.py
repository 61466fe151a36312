"""`cairn login`: a person's own NATS identity in every tenant they belong to.

The person signs in to PocketBase, a fresh user nkey is made here (its seed never leaves
this machine), its public key is registered once per membership (`person_keys`), and the
bridge answers each row with a JWT carrying that membership's role. The result is a
`.creds` file and a `nats` CLI context per tenant. Every login makes a new key; the rows of
the previous login (remembered in `login.json`) are deleted once the new ones work, which
revokes the old key. `cairn logout` deletes them without a new login.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn_cli.nats_context import remove_context, write_context
from cairn_common import creds, natsjwt, nkey
from cairn_common.filemodes import private_dir, write_private
from cairn_common.natsauth import person_inbox
from cairn_common.pocketbase import PocketBase, PocketBaseError

STATE_FILE = "login.json"  # which rows and files this machine's login made (no secret)
WAIT = 15.0  # seconds for the bridge to answer every row


class LoginError(Exception):
    """Login failed; the message says why, in words."""


@dataclass(frozen=True)
class LoginSettings:
    server: str
    nats_url: str
    directory: Path  # creds files and login.json (0700)
    context_dir: Path | None  # None: write no nats CLI contexts
    label: str  # shown on the person_keys rows ("cli@host")
    wait: float = WAIT


@dataclass
class TenantLogin:
    slug: str
    name: str
    role: str
    creds: Path | None = None
    context: Path | None = None
    expires: int | None = None
    error: str = ""


@dataclass
class LoginResult:
    email: str
    tenants: list[TenantLogin] = field(default_factory=list)

    @property
    def ok(self) -> list[TenantLogin]:
        return [t for t in self.tenants if not t.error]


async def sign_in(pb: PocketBase, email: str | None, password: str | None,
                  token: str | None) -> dict[str, Any]:
    try:
        if token:
            return await pb.auth_refresh("users", token)
        if not email or password is None:
            raise LoginError("an email and a password (or --token) are needed")
        return await pb.auth_with_password("users", email, password)
    except PocketBaseError as exc:
        if exc.status == 400:
            raise LoginError("wrong email or password") from None
        if exc.status in (401, 404):
            raise LoginError("the token is not valid (expired, or not a person's)") from None
        if exc.status == 403:
            raise LoginError("this account is disabled: ask a Cairn administrator") from None
        if exc.status == 429:
            raise LoginError("too many attempts: wait a minute and try again") from None
        raise LoginError(str(exc)) from None


async def login(settings: LoginSettings, email: str | None = None,
                password: str | None = None, token: str | None = None,
                progress: Callable[[str], None] = lambda _: None) -> LoginResult:
    async with PocketBase(settings.server) as pb:
        user = await sign_in(pb, email, password, token)
        memberships = await pb.list("memberships", filter=f'user = "{user["id"]}"',
                                    expand="tenant")
        if not memberships:
            raise LoginError(f"{user.get('email')} is a member of no tenant: ask an owner or "
                             "admin of one to add you")
        progress(f"signed in as {user.get('email')}; {len(memberships)} tenant(s)")
        directory = private_dir(settings.directory)
        previous = read_state(directory)
        person = nkey.create("user")
        public_key = person.public_key.decode()
        rows = {}
        for membership in memberships:
            rows[membership["id"]] = await pb.create("person_keys", {
                "user": user["id"], "membership": membership["id"],
                "tenant": membership["tenant"], "public_key": public_key,
                "label": settings.label[:100]})
        answered = await _answers(pb, rows, settings.wait)
        result = LoginResult(email=str(user.get("email") or ""))
        seed = person.seed.decode()
        for membership in memberships:
            tenant = (membership.get("expand") or {}).get("tenant") or {}
            one = TenantLogin(slug=tenant.get("slug", membership["tenant"]),
                              name=tenant.get("name", ""), role=membership.get("role", ""))
            row = answered.get(membership["id"]) or {}
            if not row.get("jwt"):
                one.error = row.get("error") or (
                    f"no answer from the bridge in {settings.wait:.0f}s: is cairn-bridge "
                    "running?")
            else:
                one.role = row.get("role") or one.role
                one.expires = natsjwt.decode(row["jwt"]).get("exp")
                one.creds = directory / f"{one.slug}.creds"
                creds.write(one.creds, row["jwt"], seed)
                if settings.context_dir is not None:
                    one.context = write_context(
                        settings.context_dir, one.slug, settings.nats_url, one.creds,
                        person_inbox(user["id"]),
                        f"Cairn tenant {one.name or one.slug} as {result.email} ({one.role})")
            result.tenants.append(one)
        kept = {m: r["id"] for m, r in rows.items() if (answered.get(m) or {}).get("jwt")}
        await _delete(pb, [r for m, r in previous.get("rows", {}).items()])
        await _delete(pb, [r["id"] for m, r in rows.items() if m not in kept])
        write_state(directory, {"server": settings.server, "email": result.email,
                                "user": user["id"], "rows": kept,
                                "tenants": [t.slug for t in result.ok]})
        return result


async def logout(settings: LoginSettings, email: str | None = None,
                 password: str | None = None, token: str | None = None) -> int:
    """Delete this machine's login rows (revoking its key) and its files; returns rows gone.
    Signs in again (no PocketBase token is kept on disk: it would outlive the session)."""
    state = read_state(settings.directory)
    if not state:
        return 0
    async with PocketBase(settings.server) as pb:
        await sign_in(pb, email or state.get("email"), password, token)
        gone = await _delete(pb, list(state.get("rows", {}).values()))
    for slug in state.get("tenants", []):
        (settings.directory / f"{slug}.creds").unlink(missing_ok=True)
        if settings.context_dir is not None:
            remove_context(settings.context_dir, slug)
    (settings.directory / STATE_FILE).unlink(missing_ok=True)
    return gone


async def _answers(pb: PocketBase, rows: dict[str, dict[str, Any]],
                   wait: float) -> dict[str, dict[str, Any]]:
    """Each row as it stands once the bridge has answered it (a JWT or an error)."""
    deadline = time.monotonic() + wait
    answered: dict[str, dict[str, Any]] = {}
    while True:
        for membership_id, row in rows.items():
            if membership_id in answered:
                continue
            current = await pb.get("person_keys", row["id"])
            if current.get("jwt") or current.get("error"):
                answered[membership_id] = current
        if len(answered) == len(rows) or time.monotonic() >= deadline:
            return answered
        await asyncio.sleep(0.2)


async def _delete(pb: PocketBase, row_ids: list[str]) -> int:
    gone = 0
    for row_id in row_ids:
        try:
            await pb.delete("person_keys", row_id)
            gone += 1
        except PocketBaseError as exc:
            if exc.status != 404:
                raise LoginError(f"could not delete login {row_id}: {exc}") from None
    return gone


def read_state(directory: Path) -> dict[str, Any]:
    try:
        body = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LoginError(f"{directory / STATE_FILE} is unreadable ({exc}): delete it and log "
                         "in again") from None
    return body if isinstance(body, dict) else {}


def write_state(directory: Path, state: dict[str, Any]) -> None:
    write_private(directory / STATE_FILE, json.dumps(state, indent=2) + "\n")
