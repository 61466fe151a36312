"""Roles inside a tenant (owner, admin, operator, viewer) and the tenants collection."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_rules.world import (
    PATCHES,
    World,
    create_bodies,
    match_filter,
    refused_create,
)
from tests.factories import (
    Principal,
    list_ids,
    make_device_record,
    make_membership,
    make_user,
    make_user_record,
    records_url,
    uid,
)

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
    body = create_bodies(world.a, world.dev_a.record, me)[collection]
    if collection == "memberships":
        body = {"tenant": world.a["id"], "user": _new_user(world), "role": "operator"}
    resp = me.client.post(records_url(collection), json=body)
    if allowed:
        assert resp.status_code == 200, resp.text
    else:
        assert resp.status_code == refused_create(collection), resp.text
        assert not list_ids(world.admin, collection, filter=match_filter(collection, body))


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
    assert bool(list_ids(world.admin, "memberships", filter=match_filter("memberships", body))) \
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
        ({"limits": {"max_connections": 10}}, False),  # quotas are the MSP's (SPEC §11)
        ({"limits": {"jetstream_storage": -1}}, False),
        ({"name": "Renamed", "limits": {"max_connections": 10}}, False),
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
