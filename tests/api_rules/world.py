"""The shared "world" for the API-rule tests: who exists, in which tenant, with which rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.factories import (
    SEED_RE,
    Principal,
    check,
    creds_text,
    make_nats_user,
    make_tenant,
    new_key,
    records_url,
    uid,
)

NULL_CREATE = {"audit_log", "tenants", "nats_accounts", "users"}


def refused_create(collection: str) -> int:
    """A create rule that fails answers 400; a null (superusers only) rule answers 403."""
    return 403 if collection in NULL_CREATE else 400


@dataclass
class World:
    admin: httpx.Client
    a: dict[str, Any]
    b: dict[str, Any]
    x: dict[str, Any]
    owner_a: Principal
    admin_a: Principal
    operator_a: Principal
    viewer_a: Principal  # viewer of A, owner of X
    owner_b: Principal
    dev_a: Principal
    dev_b: Principal
    rows: dict[str, dict[str, dict[str, Any]]]  # collection -> "a"/"b" -> record
    account: dict[str, Any]  # tenant A's nats_accounts row
    anon: httpx.Client
    tenants: list[str]  # every tenant this module created; deleted at teardown

    def get(self, collection: str, record_id: str) -> dict[str, Any]:
        return check(self.admin.get(records_url(collection, record_id)))

    def exists(self, collection: str, record_id: str) -> bool:
        return self.admin.get(records_url(collection, record_id)).status_code == 200

    def tenant(self) -> dict[str, Any]:
        return make_tenant(self.admin, self.tenants)

    def secrets(self) -> set[str]:
        """Every seed stored right now for A and B (seeds, signing seeds, seeds in creds).
        Read fresh: a bridge running in the same session may have replaced them."""
        rows = [self.get("nats_accounts", self.account["id"])]
        rows += [self.get("nats_users", self.rows["nats_users"][k]["id"]) for k in "ab"]
        found: set[str] = set()
        for row in rows:
            for field in ("seed", "signing_seed", "creds"):
                found |= set(SEED_RE.findall(row.get(field) or ""))
        return found


def account_row(admin: httpx.Client, tenant_id: str) -> dict[str, Any]:
    """Tenant A's account row with real keys; if a running bridge created it first, that one."""
    (seed, public), (signing_seed, signing_public) = new_key(), new_key()
    resp = admin.post(records_url("nats_accounts"), json={
        "tenant": tenant_id, "public_key": public, "signing_public_key": signing_public,
        "seed": seed, "signing_seed": signing_seed, "revocations": {},
    })
    if resp.status_code == 200:
        return resp.json()
    assert "tenant" in resp.json()["data"], resp.text  # unique: it exists already
    return check(admin.get(records_url("nats_accounts"),
                           params={"filter": f'tenant = "{tenant_id}"'}))["items"][0]


def nats_user_row(admin: httpx.Client, tenant_id: str) -> dict[str, Any]:
    seed, public = new_key("user")
    return make_nats_user(admin, tenant_id, public_key=public, seed=seed,
                          creds=creds_text(seed))


TENANT_OWNED = ["devices", "rules", "commands", "memberships", "audit_log", "nats_users",
                "nats_roles", "tenants"]

# A harmless, otherwise-valid change per collection.
PATCHES = {
    "devices": {"name": "pwned"},
    "rules": {"yaml": "pwned: true\n"},
    "commands": {"payload": {"pwned": True}},
    "memberships": {"role": "viewer"},
    "audit_log": {"action": "pwned"},
    "nats_users": {"active": False},
    "nats_roles": {"publish_allow": [">"]},
    "tenants": {"name": "pwned"},
}


def create_bodies(
    tenant: dict[str, Any], device: dict[str, Any], me: Principal
) -> dict[str, dict[str, Any]]:
    return {
        "devices": {"code": uid("dev"), "tenant": tenant["id"], "password": "x" * 12,
                    "passwordConfirm": "x" * 12},
        "rules": {"tenant": tenant["id"], "name": uid("rule"), "yaml": "a: 1\n"},
        "commands": {"tenant": tenant["id"], "device": device["id"], "command": "exec",
                     "requested_by": me.id, "payload": {"command": uid("m")}},
        "memberships": {"tenant": tenant["id"], "user": me.id, "role": "owner"},
        "audit_log": {"tenant": tenant["id"], "action": "pwned"},
        "nats_users": {"tenant": tenant["id"], "name": uid("svc"), "role": "service"},
        "nats_roles": {"tenant": tenant["id"], "name": uid("role")},
        "tenants": {"name": "pwned", "slug": uid("pwned")},
    }


def match_filter(collection: str, body: dict[str, Any]) -> str:
    key = {"devices": "code", "rules": "name", "nats_users": "name", "nats_roles": "name",
           "tenants": "slug"}.get(collection)
    if key:
        return f'{key} = "{body[key]}"'
    if collection == "commands":
        return f'payload.command = "{body["payload"]["command"]}"'
    if collection == "memberships":
        return f'user = "{body["user"]}" && tenant = "{body["tenant"]}"'
    return f'action = "{body["action"]}"'
