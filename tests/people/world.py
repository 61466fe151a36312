"""People of a tenant, as the tests need them: a user, a membership, a login on the bus."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import nats

from cairn_common import nkey
from cairn_common.natsauth import person_inbox
from cairn_common.pocketbase import PocketBase
from tests.live import connect, eventually, uid


@dataclass
class Person:
    user: dict[str, Any]
    password: str
    membership: dict[str, Any]

    @property
    def email(self) -> str:
        return self.user["email"]


@dataclass
class Login:
    row: dict[str, Any]
    key: Any  # nkeys.KeyPair

    @property
    def jwt(self) -> str:
        return self.row["jwt"]

    @property
    def seed(self) -> str:
        return self.key.seed.decode()


async def new_person(admin: PocketBase, tenant: dict[str, Any], role: str) -> Person:
    password = secrets.token_urlsafe(12)
    user = await admin.create("users", {
        "email": f"{uid('p')}@cairn.test", "password": password, "passwordConfirm": password,
        "verified": True})
    membership = await admin.create("memberships", {
        "user": user["id"], "tenant": tenant["id"], "role": role})
    return Person(user, password, membership)


async def as_person(pb_url: str, person: Person) -> PocketBase:
    pb = PocketBase(pb_url)
    await pb.auth_with_password("users", person.email, person.password)
    return pb


async def register(pb_url: str, person: Person, key: Any = None,
                   **extra: Any) -> dict[str, Any]:
    """The person creates their own person_keys row (what `cairn login` does)."""
    key = key or nkey.create("user")
    async with await as_person(pb_url, person) as pb:
        return await pb.create("person_keys", {
            "user": person.user["id"], "membership": person.membership["id"],
            "tenant": person.membership["tenant"], "public_key": key.public_key.decode(),
            "label": "test", **extra})


async def log_in(pb_url: str, admin: PocketBase, person: Person) -> Login:
    key = nkey.create("user")
    row = await register(pb_url, person, key)

    async def answered() -> dict[str, Any] | None:
        current = await admin.get("person_keys", row["id"])
        return current if current.get("jwt") or current.get("error") else None

    row = await eventually(answered, 10, f"JWT for {person.email}")
    assert row.get("jwt"), row
    return Login(row, key)


async def on_bus(url: str, person: Person, login: Login,
                 errors: list[Exception] | None = None) -> tuple[nats.NATS, asyncio.Event]:
    """The person's connection, with its own inbox prefix; the event is set once it closes."""
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await connect(url, login.jwt, login.seed, errors=errors, closed_cb=on_closed,
                       inbox_prefix=person_inbox(person.user["id"]))
    return nc, closed
