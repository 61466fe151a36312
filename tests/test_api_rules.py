"""API rules of the Cairn collections, exercised with real user and device tokens.

One module-scoped "world" on the shared PocketBase:
  tenant A: owner_a, admin_a, operator_a, viewer_a (who also OWNS tenant X), device dev_a
  tenant B: owner_b, device dev_b
and rows of every tenant-owned collection in A and B. Failed writes are double-checked
through the superuser: nothing was created or changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.factories import (
    SEED_RE,
    Principal,
    check,
    client,
    creds_text,
    delete_tenants,
    device_login,
    list_ids,
    login,
    make_audit,
    make_command,
    make_device,
    make_device_record,
    make_membership,
    make_nats_role,
    make_nats_user,
    make_rule,
    make_tenant,
    make_user,
    make_user_record,
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


def _account_row(admin: httpx.Client, tenant_id: str) -> dict[str, Any]:
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


def _nats_user(admin: httpx.Client, tenant_id: str) -> dict[str, Any]:
    seed, public = new_key("user")
    return make_nats_user(admin, tenant_id, public_key=public, seed=seed,
                          creds=creds_text(seed))


@pytest.fixture(scope="module")
def world(pb_admin: httpx.Client) -> Iterator[World]:
    admin = pb_admin
    tenants: list[str] = []
    a, b, x = (make_tenant(admin, tenants) for _ in range(3))
    owner_a = make_user(admin, {a["id"]: "owner"})
    admin_a = make_user(admin, {a["id"]: "admin"})
    operator_a = make_user(admin, {a["id"]: "operator"})
    viewer_a = make_user(admin, {a["id"]: "viewer", x["id"]: "owner"})
    owner_b = make_user(admin, {b["id"]: "owner"})
    dev_a = make_device(admin, a["id"], status="active")
    dev_b = make_device(admin, b["id"], status="active")

    account = _account_row(admin, a["id"])
    rows: dict[str, dict[str, dict[str, Any]]] = {
        "devices": {"a": dev_a.record, "b": dev_b.record},
        "commands": {
            "a": make_command(admin, dev_a.record), "b": make_command(admin, dev_b.record),
        },
        "rules": {"a": make_rule(admin, a["id"]), "b": make_rule(admin, b["id"])},
        "audit_log": {"a": make_audit(admin, a["id"]), "b": make_audit(admin, b["id"])},
        "nats_users": {"a": _nats_user(admin, a["id"]), "b": _nats_user(admin, b["id"])},
        "nats_roles": {"a": make_nats_role(admin, a["id"]), "b": make_nats_role(admin, b["id"])},
        "tenants": {"a": a, "b": b},
    }
    memberships = check(admin.get(
        records_url("memberships"),
        params={"filter": f'tenant = "{b["id"]}" || tenant = "{a["id"]}"', "perPage": 100},
    ))["items"]
    rows["memberships"] = {
        "a": next(m for m in memberships if m["user"] == viewer_a.id and m["tenant"] == a["id"]),
        "b": next(m for m in memberships if m["tenant"] == b["id"]),
    }
    anon = client(str(admin.base_url))
    w = World(admin, a, b, x, owner_a, admin_a, operator_a, viewer_a, owner_b, dev_a, dev_b,
              rows, account, anon, tenants)
    yield w
    for p in (owner_a, admin_a, operator_a, viewer_a, owner_b, dev_a, dev_b):
        p.close()
    anon.close()
    delete_tenants(admin, tenants)


# --------------------------------------------------------------------------- isolation


TENANT_OWNED = ["devices", "rules", "commands", "memberships", "audit_log", "nats_users",
                "nats_roles", "tenants"]


@pytest.mark.parametrize("collection", TENANT_OWNED)
def test_member_of_a_lists_only_a(world: World, collection: str) -> None:
    ids = list_ids(world.owner_a.client, collection)
    assert world.rows[collection]["a"]["id"] in ids  # positive control
    assert world.rows[collection]["b"]["id"] not in ids
    b_ids = list_ids(world.admin, collection, filter=f'tenant = "{world.b["id"]}"') \
        if collection != "tenants" else {world.b["id"]}
    assert not ids & b_ids


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
# A rule that does not match hides the row (404); a null rule answers 403 to non-superusers.
NULL_UPDATE = {"commands", "audit_log"}
NULL_DELETE = {"commands", "audit_log", "tenants"}


@pytest.mark.parametrize("collection", TENANT_OWNED)
def test_member_of_a_cannot_view_update_delete_b(world: World, collection: str) -> None:
    target = world.rows[collection]["b"]
    c = world.owner_a.client
    url = records_url(collection, target["id"])
    assert c.get(url).status_code == 404
    resp = c.patch(url, json=PATCHES[collection])
    assert resp.status_code == (403 if collection in NULL_UPDATE else 404), resp.text
    resp = c.delete(url)
    assert resp.status_code == (403 if collection in NULL_DELETE else 404), resp.text
    after = world.get(collection, target["id"])
    for key, value in PATCHES[collection].items():
        assert after[key] == target[key] != value


def _create_bodies(
    tenant: dict[str, Any], device: dict[str, Any], me: Principal
) -> dict[str, dict[str, Any]]:
    return {
        "devices": {"code": uid("dev"), "tenant": tenant["id"], "password": "x" * 12,
                    "passwordConfirm": "x" * 12},
        "rules": {"tenant": tenant["id"], "name": uid("rule"), "yaml": "a: 1\n"},
        "commands": {"tenant": tenant["id"], "device": device["id"], "command": "ping",
                     "requested_by": me.id, "payload": {"marker": uid("m")}},
        "memberships": {"tenant": tenant["id"], "user": me.id, "role": "owner"},
        "audit_log": {"tenant": tenant["id"], "action": "pwned"},
        "nats_users": {"tenant": tenant["id"], "name": uid("svc"), "role": "service"},
        "nats_roles": {"tenant": tenant["id"], "name": uid("role")},
        "tenants": {"name": "pwned", "slug": uid("pwned")},
    }


@pytest.mark.parametrize("collection", TENANT_OWNED)
def test_member_of_a_cannot_create_in_b(world: World, collection: str) -> None:
    body = _create_bodies(world.b, world.dev_b.record, world.owner_a)[collection]
    resp = world.owner_a.client.post(records_url(collection), json=body)
    assert resp.status_code == refused_create(collection), resp.text
    assert not list_ids(world.admin, collection, filter=_match_filter(collection, body))


def _match_filter(collection: str, body: dict[str, Any]) -> str:
    key = {"devices": "code", "rules": "name", "nats_users": "name", "nats_roles": "name",
           "tenants": "slug"}.get(collection)
    if key:
        return f'{key} = "{body[key]}"'
    if collection == "commands":
        return f'payload.marker = "{body["payload"]["marker"]}"'
    if collection == "memberships":
        return f'user = "{body["user"]}" && tenant = "{body["tenant"]}"'
    return f'action = "{body["action"]}"'


@pytest.mark.parametrize("device_of", ["a", "b"])
def test_command_device_and_tenant_must_match(world: World, device_of: str) -> None:
    """owner of A: A's device filed under tenant B, or B's device filed under tenant A."""
    device = world.dev_a.record if device_of == "a" else world.dev_b.record
    tenant = world.b if device_of == "a" else world.a
    marker = uid("m")
    body = {"tenant": tenant["id"], "device": device["id"], "command": "ping",
            "requested_by": world.owner_a.id, "payload": {"marker": marker}}
    resp = world.owner_a.client.post(records_url("commands"), json=body)
    assert resp.status_code == 400, resp.text
    assert not list_ids(world.admin, "commands", filter=f'payload.marker = "{marker}"')


# --------------------------------------------------------------------------- roles


def _new_user(world: World) -> str:
    return make_user_record(world.admin)[0]["id"]


@pytest.mark.parametrize(
    ("actor", "collection", "allowed"),
    [
        ("viewer_a", "commands", False),
        ("viewer_a", "rules", False),
        ("viewer_a", "devices", False),
        ("viewer_a", "memberships", False),
        ("viewer_a", "nats_users", False),
        ("viewer_a", "nats_roles", False),
        ("operator_a", "commands", True),
        ("operator_a", "rules", True),
        ("operator_a", "devices", True),
        ("operator_a", "memberships", False),
        ("operator_a", "nats_users", False),
        ("operator_a", "nats_roles", False),
        ("admin_a", "commands", True),
        ("admin_a", "memberships", True),
        ("admin_a", "nats_users", True),
        ("admin_a", "nats_roles", True),
        ("owner_a", "memberships", True),
    ],
)
def test_role_matrix_create(world: World, actor: str, collection: str, allowed: bool) -> None:
    me: Principal = getattr(world, actor)
    body = _create_bodies(world.a, world.dev_a.record, me)[collection]
    if collection == "memberships":
        body = {"tenant": world.a["id"], "user": _new_user(world), "role": "operator"}
    resp = me.client.post(records_url(collection), json=body)
    if allowed:
        assert resp.status_code == 200, resp.text
    else:
        assert resp.status_code == refused_create(collection), resp.text
        assert not list_ids(world.admin, collection, filter=_match_filter(collection, body))


@pytest.mark.parametrize(
    ("actor", "role", "allowed"),
    [
        ("admin_a", "admin", True),
        ("admin_a", "viewer", True),
        ("admin_a", "owner", False),
        ("owner_a", "owner", True),
        ("owner_a", "admin", True),
    ],
)
def test_only_owner_grants_owner(world: World, actor: str, role: str, allowed: bool) -> None:
    me: Principal = getattr(world, actor)
    body = {"tenant": world.a["id"], "user": _new_user(world), "role": role}
    resp = me.client.post(records_url("memberships"), json=body)
    assert resp.status_code == (200 if allowed else 400), resp.text
    assert bool(list_ids(world.admin, "memberships", filter=_match_filter("memberships", body))) \
        is allowed


def test_owner_membership_changes(world: World) -> None:
    other_owner = make_membership(world.admin, _new_user(world), world.a["id"], "owner")
    operator = make_membership(world.admin, _new_user(world), world.a["id"], "operator")
    admin_c, owner_c = world.admin_a.client, world.owner_a.client
    # admin: cannot demote, delete an owner, nor promote to owner
    assert admin_c.patch(records_url("memberships", other_owner["id"]),
                         json={"role": "viewer"}).status_code == 404
    assert admin_c.delete(records_url("memberships", other_owner["id"])).status_code == 404
    assert admin_c.patch(records_url("memberships", operator["id"]),
                         json={"role": "owner"}).status_code == 404
    assert world.get("memberships", other_owner["id"])["role"] == "owner"
    assert world.get("memberships", operator["id"])["role"] == "operator"
    # admin: manages the rest
    assert admin_c.patch(records_url("memberships", operator["id"]),
                         json={"role": "admin"}).status_code == 200
    # membership rows cannot move to another user or tenant
    for field, value in (("user", world.owner_b.id), ("tenant", world.x["id"])):
        resp = owner_c.patch(records_url("memberships", operator["id"]), json={field: value})
        assert resp.status_code == 404, field
    assert world.get("memberships", operator["id"])["tenant"] == world.a["id"]
    # owner: may do all of it
    assert owner_c.patch(records_url("memberships", operator["id"]),
                         json={"role": "owner"}).status_code == 200
    assert owner_c.delete(records_url("memberships", other_owner["id"])).status_code == 204
    assert not world.exists("memberships", other_owner["id"])


def test_cross_tenant_role_attack(world: World) -> None:
    """viewer of A who owns X must act as a viewer on A, and as an owner only on X."""
    me = world.viewer_a
    c = me.client
    # control: as owner of X everything works
    assert c.patch(records_url("tenants", world.x["id"]), json={"name": "x!"}).status_code == 200
    dev_x, _ = make_device_record(world.admin, world.x["id"])
    ok = c.post(records_url("commands"), json={
        "tenant": world.x["id"], "device": dev_x["id"], "command": "ping",
        "requested_by": me.id})
    assert ok.status_code == 200, ok.text
    assert c.post(records_url("memberships"), json={
        "tenant": world.x["id"], "user": _new_user(world), "role": "owner",
    }).status_code == 200
    assert c.delete(records_url("devices", dev_x["id"])).status_code == 204
    # attack on A
    a = world.a["id"]
    assert c.patch(records_url("tenants", a), json={"name": "pwned"}).status_code == 404
    for collection, body in {
        "memberships": {"tenant": a, "user": _new_user(world), "role": "admin"},
        "devices": {"code": uid("dev"), "tenant": a, "password": "x" * 12,
                    "passwordConfirm": "x" * 12},
        "commands": {"tenant": a, "device": world.dev_a.id, "command": "exec",
                     "requested_by": me.id},
        "rules": {"tenant": a, "name": uid("rule")},
        "nats_users": {"tenant": a, "name": uid("svc"), "role": "service"},
        "nats_roles": {"tenant": a, "name": uid("role")},
    }.items():
        resp = c.post(records_url(collection), json=body)
        assert resp.status_code == refused_create(collection), (collection, resp.text)
    own = world.rows["memberships"]["a"]  # viewer_a's own membership of A
    assert c.patch(records_url("memberships", own["id"]), json={"role": "owner"}).status_code \
        == 404
    assert world.get("memberships", own["id"])["role"] == "viewer"
    for collection in ("devices", "rules", "nats_users", "nats_roles"):
        row = world.rows[collection]["a"]
        assert c.patch(records_url(collection, row["id"]),
                       json=PATCHES[collection]).status_code == 404, collection
        assert c.delete(records_url(collection, row["id"])).status_code == 404, collection
        assert world.exists(collection, row["id"])
    # managers-only reads stay closed too
    assert world.rows["nats_users"]["a"]["id"] not in list_ids(c, "nats_users")


# --------------------------------------------------------------------------- tenants


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({"name": "Renamed"}, True),
        ({"limits": {"max_connections": 10}}, True),
        ({"slug": "stolen-slug"}, False),
        ({"active": False}, False),
        ({"nats_account_public_key": "A" * 56}, False),
        ({"error": "nope"}, False),
    ],
)
def test_tenant_update_guards(world: World, body: dict[str, Any], allowed: bool) -> None:
    tenant = world.tenant()
    manager = make_user(world.admin, {tenant["id"]: "admin"})
    try:
        resp = manager.client.patch(records_url("tenants", tenant["id"]), json=body)
        assert resp.status_code == (200 if allowed else 404), resp.text
        after = world.get("tenants", tenant["id"])
        for key, value in body.items():
            assert (after[key] == value) is allowed
    finally:
        manager.close()


@pytest.mark.parametrize("actor", ["viewer_a", "operator_a"])
def test_non_manager_cannot_update_tenant(world: World, actor: str) -> None:
    resp = getattr(world, actor).client.patch(
        records_url("tenants", world.a["id"]), json={"name": "nope"})
    assert resp.status_code == 404


def test_nobody_creates_or_deletes_tenants(world: World) -> None:
    c = world.owner_a.client
    assert c.post(records_url("tenants"), json={"name": "n", "slug": uid()}).status_code == 403
    assert c.delete(records_url("tenants", world.a["id"])).status_code == 403
    assert world.exists("tenants", world.a["id"])


# --------------------------------------------------------------------------- devices


def test_device_sees_only_itself(world: World) -> None:
    sibling, _ = make_device_record(world.admin, world.a["id"])
    c = world.dev_a.client
    assert list_ids(c, "devices") == {world.dev_a.id}
    assert c.get(records_url("devices", world.dev_a.id)).status_code == 200
    assert c.get(records_url("devices", sibling["id"])).status_code == 404
    assert c.get(records_url("devices", world.dev_b.id)).status_code == 404


@pytest.mark.parametrize(
    "collection",
    ["tenants", "memberships", "commands", "rules", "audit_log", "nats_users", "nats_roles",
     "users"],
)
def test_device_sees_nothing_else(world: World, collection: str) -> None:
    resp = world.dev_a.client.get(records_url(collection))
    assert resp.status_code == 200
    assert resp.json()["items"] == []
    row = world.rows.get(collection, {}).get("a")
    if row:
        assert world.dev_a.client.get(records_url(collection, row["id"])).status_code == 404


def _active_device(world: World) -> Principal:
    return make_device(world.admin, world.a["id"], status="active", role="agent",
                       config={"interval": 10}, name="fresh")


@pytest.fixture
def fresh_device(world: World) -> Iterator[Principal]:
    device = _active_device(world)
    yield device
    device.close()


@pytest.fixture(scope="module")
def self_device(world: World) -> Iterator[Principal]:
    """Shared by the refused-update cases: each asserts the row did not change at all."""
    device = _active_device(world)
    yield device
    device.close()


@pytest.fixture(scope="module")
def target_device(world: World) -> dict[str, Any]:
    """A device row of A that operator_a edits (no login needed)."""
    record, _ = make_device_record(world.admin, world.a["id"], status="active", name="t")
    return record


def test_device_sets_its_own_key_and_facts(world: World, fresh_device: Principal) -> None:
    body = {"nats_public_key": "U" + "A" * 55, "hostname": "host-1", "os": "linux",
            "agent_version": "0.1.0"}
    resp = fresh_device.client.patch(records_url("devices", fresh_device.id), json=body)
    assert resp.status_code == 200, resp.text
    after = world.get("devices", fresh_device.id)
    assert {k: after[k] for k in body} == body


DEVICE_FORBIDDEN = [
    {"tenant": "B"},
    {"status": "disabled"},
    {"status": "active"},
    {"nats_jwt": "eyJ.forged"},
    {"nats_jwt_expires": "2099-01-01 00:00:00.000Z"},
    {"role": "service"},
    {"code": "renamed-device"},
    {"name": "renamed"},
    {"config": {"interval": 1}},
    {"password": "new-password-1", "passwordConfirm": "new-password-1"},
    {"password": "new-password-1", "passwordConfirm": "new-password-1",
     "oldPassword": "WRONG"},
    {"email": "dev@example.com"},
    {"emailVisibility": True},
    {"verified": True},
    {"last_seen": "2030-01-01 00:00:00.000Z"},
    {"online": True},
    {"error": "x"},
    {"hostname": "ok", "tenant": "B"},  # an allowed field does not smuggle a forbidden one
]


@pytest.mark.parametrize("body", DEVICE_FORBIDDEN, ids=lambda b: "+".join(b))
def test_device_cannot_change_anything_else(
    world: World, self_device: Principal, body: dict[str, Any]
) -> None:
    body = {k: (world.b["id"] if v == "B" else v) for k, v in body.items()}
    before = world.get("devices", self_device.id)
    resp = self_device.client.patch(records_url("devices", self_device.id), json=body)
    assert resp.status_code == 404, resp.text
    assert world.get("devices", self_device.id) == before
    if "password" in body:  # unchanged password; the token (tokenKey) still works
        assert login(str(world.admin.base_url), "devices", self_device.record["code"],
                     self_device.password).status_code == 200
        assert self_device.client.get(records_url("devices", self_device.id)).status_code \
            == 200


def test_device_cannot_create_or_delete(world: World) -> None:
    me = world.dev_a
    for collection, body in _create_bodies(world.a, me.record, me).items():
        resp = me.client.post(records_url(collection), json=body)
        assert resp.status_code == refused_create(collection), collection
        assert not list_ids(world.admin, collection, filter=_match_filter(collection, body))
    assert me.client.delete(records_url("devices", me.id)).status_code == 404
    assert world.exists("devices", me.id)


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({"name": "renamed"}, True),
        ({"status": "disabled"}, True),
        ({"role": "service"}, True),
        ({"config": {"interval": 5}}, True),
        ({"code": uid("dev")}, False),
        ({"tenant": "X"}, False),
        ({"nats_public_key": "U" + "B" * 55}, False),
        ({"nats_jwt": "eyJ.forged"}, False),
        ({"nats_jwt_expires": "2099-01-01 00:00:00.000Z"}, False),
        ({"last_seen": "2030-01-01 00:00:00.000Z"}, False),
        ({"online": True}, False),
        ({"error": "x"}, False),
        ({"hostname": "h"}, False),
        ({"os": "o"}, False),
        ({"agent_version": "9"}, False),
        ({"email": "d@example.com"}, False),
        ({"emailVisibility": True}, False),
        ({"verified": True}, False),
        ({"password": "new-password-1", "passwordConfirm": "new-password-1"}, False),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, dict) else str(v),
)
def test_operator_device_update_guards(
    world: World, target_device: dict[str, Any], body: dict[str, Any], allowed: bool
) -> None:
    body = {k: (world.x["id"] if v == "X" else v) for k, v in body.items()}
    before = world.get("devices", target_device["id"])
    resp = world.operator_a.client.patch(records_url("devices", target_device["id"]), json=body)
    assert resp.status_code == (200 if allowed else 404), resp.text
    after = world.get("devices", target_device["id"])
    if allowed:
        assert {k: after[k] for k in body} == body
    else:
        assert after == before


@pytest.mark.parametrize(
    ("extra", "allowed"),
    [
        ({}, True),
        ({"status": "pending"}, True),
        ({"status": "disabled"}, True),
        ({"status": "active"}, False),
        ({"nats_public_key": "U" + "C" * 55}, False),
        ({"nats_jwt": "eyJ.forged"}, False),
        ({"nats_jwt_expires": "2099-01-01 00:00:00.000Z"}, False),
        ({"last_seen": "2030-01-01 00:00:00.000Z"}, False),
        ({"online": True}, False),
        ({"error": "x"}, False),
        ({"hostname": "h"}, False),
        ({"os": "o"}, False),
        ({"agent_version": "9"}, False),
        ({"email": "d@example.com"}, False),
        ({"emailVisibility": True}, False),
        ({"verified": True}, False),
    ],
    ids=lambda v: "+".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v),
)
def test_operator_device_create_guards(
    world: World, extra: dict[str, Any], allowed: bool
) -> None:
    code = uid("dev")
    body = {"code": code, "tenant": world.a["id"], "password": "enroll-secret-1",
            "passwordConfirm": "enroll-secret-1", **extra}
    resp = world.operator_a.client.post(records_url("devices"), json=body)
    assert resp.status_code == (200 if allowed else 400), resp.text
    assert bool(list_ids(world.admin, "devices", filter=f'code = "{code}"')) is allowed


def test_disabled_device_cannot_authenticate(world: World) -> None:
    record, password = make_device_record(world.admin, world.a["id"], status="disabled")
    resp = login(str(world.admin.base_url), "devices", record["code"], password)
    assert resp.status_code == 403  # the authRule refuses; the password was right
    assert "token" not in resp.json()


def test_pending_device_can_authenticate(world: World) -> None:
    record, password = make_device_record(world.admin, world.a["id"])  # status empty
    assert login(str(world.admin.base_url), "devices", record["code"], password).status_code \
        == 200
    record, password = make_device_record(world.admin, world.a["id"], status="pending")
    assert login(str(world.admin.base_url), "devices", record["code"], password).status_code \
        == 200


def test_disabling_cuts_off_an_issued_token(world: World, fresh_device: Principal) -> None:
    c = fresh_device.client
    url = records_url("devices", fresh_device.id)
    assert c.get(url).status_code == 200
    resp = world.operator_a.client.patch(url, json={"status": "disabled"})
    assert resp.status_code == 200
    assert c.get(url).status_code == 404
    assert list_ids(c, "devices") == set()
    assert c.patch(url, json={"hostname": "still-here"}).status_code == 404
    assert world.get("devices", fresh_device.id)["hostname"] == ""
    assert login(str(world.admin.base_url), "devices", fresh_device.record["code"],
                 fresh_device.password).status_code == 403


def test_device_login_uses_code_not_email(world: World) -> None:
    record, password = make_device_record(world.admin, world.a["id"])
    assert record["email"] == ""
    other = device_login(world.admin, record, password)
    try:
        assert other.record["id"] == record["id"]
    finally:
        other.close()


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("extra", "allowed"),
    [
        ({}, True),
        ({"status": "queued"}, True),
        ({"status": "succeeded"}, False),
        ({"status": "sent"}, False),
        ({"response": {"ok": True}}, False),
        ({"sent_at": "2030-01-01 00:00:00.000Z"}, False),
        ({"completed_at": "2030-01-01 00:00:00.000Z"}, False),
        ({"error": "x"}, False),
        ({"duration_ms": 5}, False),
        ({"requested_by": "OTHER"}, False),
        ({"requested_by": ""}, False),
    ],
    ids=lambda v: "+".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v),
)
def test_command_create_guards(world: World, extra: dict[str, Any], allowed: bool) -> None:
    me = world.operator_a
    marker = uid("m")
    body = {"tenant": world.a["id"], "device": world.dev_a.id, "command": "ping",
            "requested_by": me.id, "payload": {"marker": marker}, **extra}
    if body["requested_by"] == "OTHER":
        body["requested_by"] = world.owner_a.id
    resp = me.client.post(records_url("commands"), json=body)
    assert resp.status_code == (200 if allowed else 400), resp.text
    found = list_ids(world.admin, "commands", filter=f'payload.marker = "{marker}"')
    assert bool(found) is allowed


def test_nobody_but_superuser_updates_or_deletes_commands(world: World) -> None:
    cmd = world.rows["commands"]["a"]
    for who in (world.owner_a, world.operator_a, world.dev_a):
        url = records_url("commands", cmd["id"])
        assert who.client.patch(url, json={"status": "succeeded"}).status_code == 403
        assert who.client.delete(url).status_code == 403
    assert world.get("commands", cmd["id"])["status"] != "succeeded"
    assert world.exists("commands", cmd["id"])


def test_members_read_commands_of_their_devices(world: World) -> None:
    ids = list_ids(world.viewer_a.client, "commands")
    assert world.rows["commands"]["a"]["id"] in ids
    assert world.rows["commands"]["b"]["id"] not in ids


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("extra", [{"status": "valid"}, {"error": "line 1: bad"}],
                         ids=["status", "error"])
def test_rule_status_is_router_only(world: World, extra: dict[str, Any]) -> None:
    c = world.operator_a.client
    name = uid("rule")
    resp = c.post(records_url("rules"), json={"tenant": world.a["id"], "name": name, **extra})
    assert resp.status_code == 400, resp.text
    rule = make_rule(world.admin, world.a["id"])
    resp = c.patch(records_url("rules", rule["id"]), json=extra)
    assert resp.status_code == 404
    resp = c.patch(records_url("rules", rule["id"]), json={"tenant": world.x["id"]})
    assert resp.status_code == 404
    assert c.patch(records_url("rules", rule["id"]), json={"yaml": "b: 2\n"}).status_code == 200
    after = world.get("rules", rule["id"])
    assert (after["status"], after["error"], after["tenant"]) == ("", "", world.a["id"])


# ------------------------------------------------------------------- nats_roles / nats_users


def test_nats_roles_global_are_read_only(world: World) -> None:
    c = world.viewer_a.client
    roles = check(c.get(records_url("nats_roles"), params={"perPage": 500}))["items"]
    names = {r["name"] for r in roles if r["tenant"] == ""}
    assert {"agent", "service", "viewer"} <= names
    agent = next(r for r in roles if r["name"] == "agent" and r["tenant"] == "")
    resp = world.owner_a.client.patch(records_url("nats_roles", agent["id"]),
                                      json={"publish_allow": [">"]})
    assert resp.status_code == 404
    assert world.owner_a.client.delete(records_url("nats_roles", agent["id"])).status_code == 404
    resp = world.owner_a.client.post(records_url("nats_roles"), json={"name": uid("glob")})
    assert resp.status_code == 400
    assert world.get("nats_roles", agent["id"])["publish_allow"] == ["agents.{code}.>"]
    own = world.rows["nats_roles"]["a"]
    resp = world.admin_a.client.patch(records_url("nats_roles", own["id"]),
                                      json={"tenant": world.x["id"]})
    assert resp.status_code == 404
    resp = world.admin_a.client.patch(records_url("nats_roles", own["id"]),
                                      json={"allow_responses": True})
    assert resp.status_code == 200


@pytest.mark.parametrize(
    "extra",
    [{"public_key": "U" + "D" * 55}, {"jwt": "eyJ.forged"}, {"error": "x"}],
    ids=lambda v: next(iter(v)),
)
def test_nats_users_bridge_fields(world: World, extra: dict[str, Any]) -> None:
    c = world.admin_a.client
    resp = c.post(records_url("nats_users"),
                  json={"tenant": world.a["id"], "name": uid("svc"), "role": "service", **extra})
    assert resp.status_code == 400, resp.text
    row = world.rows["nats_users"]["a"]
    assert c.patch(records_url("nats_users", row["id"]), json=extra).status_code == 404


@pytest.mark.parametrize("field", ["seed", "creds"])
def test_nats_users_hidden_fields_cannot_be_written(world: World, field: str) -> None:
    """seed/creds are bridge-only. PocketBase drops hidden fields from a non-superuser's body
    before the rules run (so the `:isset` guards on them never fire): the write goes through
    without them."""
    c = world.admin_a.client
    seed, _ = new_key("user")
    value = seed if field == "seed" else creds_text(seed)
    resp = c.post(records_url("nats_users"), json={
        "tenant": world.a["id"], "name": uid("svc"), "role": "service", field: value})
    assert resp.status_code == 200, resp.text
    assert seed not in world.get("nats_users", resp.json()["id"])[field]
    row = world.rows["nats_users"]["a"]
    c.patch(records_url("nats_users", row["id"]), json={field: value})
    assert seed not in world.get("nats_users", row["id"])[field]
    resp = c.patch(records_url("nats_users", row["id"]), json={"tenant": world.x["id"]})
    assert resp.status_code == 404


# --------------------------------------------------------------------------- secrets


def _reads(w: World) -> list[tuple[str, dict[str, Any]]]:
    """Reads that would carry a seed if hidden fields leaked (as list, view and expand)."""
    nu_a, nu_b = w.rows["nats_users"]["a"]["id"], w.rows["nats_users"]["b"]["id"]
    ab = f'tenant = "{w.a["id"]}" || tenant = "{w.b["id"]}"'
    page = {"perPage": 500}
    return [
        (records_url("tenants"), page),
        (records_url("tenants"),
         {**page, "expand": "nats_accounts_via_tenant,memberships_via_tenant"}),
        (records_url("tenants", w.a["id"]), {"expand": "nats_accounts_via_tenant"}),
        (records_url("devices"), {**page, "expand": "tenant"}),
        (records_url("devices", w.dev_a.id), {"expand": "tenant"}),
        (records_url("nats_users"), {**page, "expand": "tenant"}),
        (records_url("nats_users"), {**page, "filter": ab}),
        (records_url("nats_users", nu_a), {"expand": "tenant"}),
        (records_url("nats_users", nu_b), {}),
        (records_url("nats_accounts"), {**page, "filter": f'tenant = "{w.a["id"]}"'}),
        (records_url("nats_accounts", w.account["id"]), {}),
        (records_url("memberships"), {**page, "expand": "tenant,user"}),
        (records_url("audit_log"), {**page, "expand": "tenant"}),
        (records_url("nats_users"), {**page, "filter": "seed != ''"}),
    ]


@pytest.mark.parametrize("who", ["owner_a", "admin_a", "viewer_a", "dev_a", "anonymous"])
def test_no_seed_ever_leaves_for_non_superusers(world: World, who: str) -> None:
    stored = world.secrets()
    assert len(stored) >= 4  # account seed + signing seed, and a user seed in A and in B
    c = world.anon if who == "anonymous" else getattr(world, who).client
    for url, params in _reads(world):
        text = c.get(url, params=params).text
        assert not SEED_RE.search(text), (who, url, params)  # no seed-shaped string at all
        for seed in stored:
            assert seed not in text, (who, url, params)


def test_superuser_does_see_seeds(world: World) -> None:
    """Control for the test above: the seeds are really stored, and reads would show them."""
    stored = world.secrets()
    assert len(stored) >= 4
    text = "".join(world.admin.get(url, params=params).text for url, params in _reads(world))
    for seed in stored:
        assert seed in text


def test_admin_sees_nats_users_but_not_their_secrets(world: World) -> None:
    row_id = world.rows["nats_users"]["a"]["id"]
    row = check(world.admin_a.client.get(records_url("nats_users", row_id)))
    assert "seed" not in row
    assert "creds" not in row


@pytest.mark.parametrize("who", ["owner_a", "dev_a", "anonymous"])
def test_nats_accounts_invisible(world: World, who: str) -> None:
    c = world.anon if who == "anonymous" else getattr(world, who).client
    account = world.account
    # null rules: "Only superusers can perform this action." (403) for every verb
    url = records_url("nats_accounts", account["id"])
    assert c.get(records_url("nats_accounts")).status_code == 403
    assert c.get(url).status_code == 403
    assert c.post(records_url("nats_accounts"), json={"tenant": world.a["id"]}).status_code \
        == 403
    assert c.patch(url, json={"jwt": "x"}).status_code == 403
    assert c.delete(url).status_code == 403
    assert world.get("nats_accounts", account["id"])["jwt"] != "x"


# --------------------------------------------------------------------------- audit_log


@pytest.mark.parametrize("who", ["owner_a", "admin_a", "dev_a"])
def test_audit_log_is_superuser_write_only(world: World, who: str) -> None:
    c = getattr(world, who).client
    row = world.rows["audit_log"]["a"]
    action = uid("forged")
    resp = c.post(records_url("audit_log"), json={"tenant": world.a["id"], "action": action})
    assert resp.status_code == 403
    assert c.patch(records_url("audit_log", row["id"]), json={"action": "x"}).status_code == 403
    assert c.delete(records_url("audit_log", row["id"])).status_code == 403
    assert not list_ids(world.admin, "audit_log", filter=f'action = "{action}"')
    assert world.get("audit_log", row["id"])["action"] == row["action"]


def test_audit_rows_survive_tenant_deletion(world: World) -> None:
    tenant = world.tenant()
    device = make_device(world.admin, tenant["id"])
    device.close()
    audit = make_audit(world.admin, tenant["id"])
    rule = make_rule(world.admin, tenant["id"])
    assert world.admin.delete(records_url("tenants", tenant["id"])).status_code == 204
    assert not world.exists("devices", device.id)  # cascade
    assert not world.exists("rules", rule["id"])
    kept = world.get("audit_log", audit["id"])
    assert kept["tenant"] == ""


# --------------------------------------------------------------------------- anonymous / users


@pytest.mark.parametrize("collection", [*TENANT_OWNED, "users"])
def test_anonymous_sees_nothing(world: World, collection: str) -> None:
    anon = world.anon
    resp = anon.get(records_url(collection))
    assert resp.status_code == 200 and resp.json()["items"] == []
    row = world.rows.get(collection, {}).get("a")
    if row:
        assert anon.get(records_url(collection, row["id"])).status_code == 404
    # global roles (empty tenant) are not anonymous-readable either
    assert anon.get(records_url(collection), params={"filter": "id != ''"}).json()["items"] == []


def test_public_sign_up_is_refused(world: World) -> None:
    email = f"{uid('signup')}@cairn.test"
    resp = world.anon.post(records_url("users"), json={
        "email": email, "password": "password-123", "passwordConfirm": "password-123"})
    assert resp.status_code == 403
    resp = world.owner_a.client.post(records_url("users"), json={
        "email": email, "password": "password-123", "passwordConfirm": "password-123"})
    assert resp.status_code == 403
    assert not list_ids(world.admin, "users", filter=f'email = "{email}"')


def test_users_see_and_edit_only_themselves(world: World) -> None:
    me = world.viewer_a
    assert list_ids(me.client, "users") == {me.id}
    assert me.client.get(records_url("users", world.owner_a.id)).status_code == 404
    url = records_url("users", me.id)
    assert me.client.patch(url, json={"name": "Viewer"}).status_code == 200
    assert me.client.patch(url, json={"email": "new@cairn.test"}).status_code == 404
    assert me.client.patch(url, json={"verified": False}).status_code == 404
    assert me.client.patch(url, json={"emailVisibility": True}).status_code == 404
    assert world.get("users", me.id)["verified"] is True
    assert me.client.patch(records_url("users", world.owner_a.id),
                           json={"name": "x"}).status_code == 404
    # a device token is not a user, even with a colliding id check
    assert world.dev_a.client.get(url).status_code == 404


@pytest.mark.parametrize(
    ("collection", "field"),
    [("nats_users", "seed"), ("nats_users", "creds"), ("devices", "password"),
     ("devices", "tokenKey")],
)
def test_hidden_fields_are_no_filter_oracle(world: World, collection: str, field: str) -> None:
    """A manager cannot probe a hidden field through filters (e.g. guess a seed prefix)."""
    c = world.admin_a.client if collection == "nats_users" else world.operator_a.client
    probe = next(iter(world.secrets()))
    for expr in (f"{field} != ''", f"{field} ~ 'S'", f'{field} = "{probe}"'):
        resp = c.get(records_url(collection), params={"filter": expr})
        assert resp.status_code == 400, (expr, resp.text)  # hidden: not filterable
