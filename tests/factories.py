"""Create Cairn records through PocketBase's real REST API (tenants, users, devices, ...).

The superuser client (`pb_admin` fixture) creates the records; users and devices then log in
with their passwords and get their own clients, so API rules are exercised for real. Every name
carries a random suffix: the PocketBase is shared by the whole test session.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from cairn_common import audit_key, nkey

USERS = "users"
DEVICES = "devices"
ROLES = ("owner", "admin", "operator", "viewer")


def uid(prefix: str = "t") -> str:
    """A unique, slug-safe name: lowercase letters, digits and dashes."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# Any nkey seed: "S" + key-type letter + 56 base32 characters (58 in all).
SEED_RE = re.compile(r"(?<![A-Z2-7])S[OAUNC][A-Z2-7]{56}(?![A-Z2-7])")


def new_key(kind: str = "account") -> tuple[str, str]:
    """A real nkey pair ("account" or "user"): (seed, public key). Real keys, so a bridge
    running in the same session can load what the tests store."""
    kp = nkey.create(kind)
    return kp.seed.decode(), kp.public_key.decode()


def creds_text(seed: str, jwt: str = "eyJ0eXAiOiJKV1QifQ.e30.sig") -> str:
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )


def records_url(collection: str, record_id: str | None = None) -> str:
    base = f"/api/collections/{collection}/records"
    return base if record_id is None else f"{base}/{record_id}"


def check(resp: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 2xx response; otherwise fail with PocketBase's error body."""
    if resp.status_code >= 300:
        raise AssertionError(
            f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}: {resp.text}"
        )
    return resp.json() if resp.content else {}


def create(client: httpx.Client, collection: str, **data: Any) -> dict[str, Any]:
    return check(client.post(records_url(collection), json=data))


def list_ids(client: httpx.Client, collection: str, **params: Any) -> set[str]:
    resp = client.get(records_url(collection), params={"perPage": 500, **params})
    return {item["id"] for item in check(resp)["items"]}


@dataclass
class Principal:
    """A logged-in user or device with its own REST client."""

    collection: str
    record: dict[str, Any]
    password: str
    token: str
    client: httpx.Client = field(repr=False)

    @property
    def id(self) -> str:
        return self.record["id"]

    def close(self) -> None:
        self.client.close()


def client(base_url: str, token: str | None = None) -> httpx.Client:
    """A REST client, anonymous or with a token. Plain HTTP on loopback: no TLS context."""
    headers = {"Authorization": token} if token else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=10, verify=False)


def login(base_url: str, collection: str, identity: str, password: str) -> httpx.Response:
    with client(base_url) as anon:
        return anon.post(
            f"/api/collections/{collection}/auth-with-password",
            json={"identity": identity, "password": password},
        )


def _principal(base_url: str, collection: str, identity: str, password: str) -> Principal:
    body = check(login(base_url, collection, identity, password))
    return Principal(
        collection, body["record"], password, body["token"], client(base_url, body["token"])
    )


def make_tenant(
    admin: httpx.Client, created: list[str] | None = None, **fields: Any
) -> dict[str, Any]:
    """A tenant; its id is appended to `created` (for `delete_tenants` at teardown)."""
    slug = fields.pop("slug", None) or uid("tenant")
    data = {"name": f"Tenant {slug}", "slug": slug, "active": True, **fields}
    tenant = create(admin, "tenants", **data)
    if created is not None:
        created.append(tenant["id"])
    return tenant


def delete_tenants(admin: httpx.Client, tenant_ids: list[str]) -> None:
    """Remove test tenants (their rows cascade) from the shared PocketBase."""
    for tenant_id in tenant_ids:
        resp = admin.delete(records_url("tenants", tenant_id))
        assert resp.status_code in (204, 404), resp.text


def make_membership(
    admin: httpx.Client, user_id: str, tenant_id: str, role: str
) -> dict[str, Any]:
    return create(admin, "memberships", user=user_id, tenant=tenant_id, role=role)


def make_user_record(
    admin: httpx.Client, roles: dict[str, str] | None = None, name: str = ""
) -> tuple[dict[str, Any], str]:
    """A user with memberships `{tenant_id: role}`; returns (record, password)."""
    email = f"{uid('user')}@cairn.test"
    password = secrets.token_urlsafe(12)
    record = create(
        admin, USERS, email=email, password=password, passwordConfirm=password,
        name=name or email, verified=True,
    )
    for tenant_id, role in (roles or {}).items():
        make_membership(admin, record["id"], tenant_id, role)
    return record, password


def make_user(
    admin: httpx.Client, roles: dict[str, str] | None = None, name: str = ""
) -> Principal:
    """A user with memberships `{tenant_id: role}`, logged in."""
    record, password = make_user_record(admin, roles, name)
    return _principal(str(admin.base_url), USERS, record["email"], password)


def make_device_record(
    admin: httpx.Client, tenant_id: str, password: str | None = None, **fields: Any
) -> tuple[dict[str, Any], str]:
    """A device row created by the superuser; returns (record, enrollment password)."""
    password = password or secrets.token_urlsafe(12)
    data = {
        "code": fields.pop("code", None) or uid("dev"),
        "tenant": tenant_id,
        "password": password,
        "passwordConfirm": password,
        **fields,
    }
    return create(admin, DEVICES, **data), password


def device_login(admin: httpx.Client, record: dict[str, Any], password: str) -> Principal:
    identity = record.get("login") or record["code"]  # <tenant slug>/<code> since 1764000008
    return _principal(str(admin.base_url), DEVICES, identity, password)


def make_device(admin: httpx.Client, tenant_id: str, **fields: Any) -> Principal:
    """A device row (status pending unless given), logged in as itself."""
    record, password = make_device_record(admin, tenant_id, **fields)
    return device_login(admin, record, password)


def make_command(
    admin: httpx.Client, device: dict[str, Any], command: str = "ping", **fields: Any
) -> dict[str, Any]:
    return create(
        admin, "commands", tenant=device["tenant"], device=device["id"], command=command,
        requested_by=fields.pop("requested_by", "superuser"), **fields,
    )


def make_rule(admin: httpx.Client, tenant_id: str, **fields: Any) -> dict[str, Any]:
    data = {"tenant": tenant_id, "name": uid("rule"), "enabled": True, "yaml": "rules: []\n"}
    return create(admin, "rules", **{**data, **fields})


# the session PocketBase's audit key (set by tests/conftest.py): audit rows, like the
# bridge's, carry it, or pb_hooks/audit.pb.js refuses them
AUDIT_KEY = ""


def make_audit(admin: httpx.Client, tenant_id: str, key: str | None = None,
               **fields: Any) -> dict[str, Any]:
    """`key`: the audit key of the PocketBase `admin` talks to (default: the session's)."""
    data = {"tenant": tenant_id, "actor": "superuser", "action": "test", "target": "x"}
    return check(admin.post(records_url("audit_log"), json={**data, **fields},
                            headers={audit_key.HEADER: key or AUDIT_KEY}))


def make_nats_user(admin: httpx.Client, tenant_id: str, **fields: Any) -> dict[str, Any]:
    data = {"tenant": tenant_id, "name": uid("svc"), "role": "service", "active": True}
    return create(admin, "nats_users", **{**data, **fields})


def make_nats_role(admin: httpx.Client, tenant_id: str, **fields: Any) -> dict[str, Any]:
    data = {
        "tenant": tenant_id, "name": uid("role"), "publish_allow": ["x.>"],
        "subscribe_allow": ["x.>"], "publish_deny": [], "subscribe_deny": [],
    }
    return create(admin, "nats_roles", **{**data, **fields})
