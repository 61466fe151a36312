"""Tenant isolation: a member of one tenant never sees or touches another's rows."""

from __future__ import annotations

import pytest

from tests.api_rules.world import (
    PATCHES,
    TENANT_OWNED,
    World,
    create_bodies,
    match_filter,
    refused_create,
)
from tests.factories import (
    list_ids,
    records_url,
    uid,
)

# --------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("collection", TENANT_OWNED)
def test_member_of_a_lists_only_a(world: World, collection: str) -> None:
    ids = list_ids(world.owner_a.client, collection)
    assert world.rows[collection]["a"]["id"] in ids  # positive control
    assert world.rows[collection]["b"]["id"] not in ids
    b_ids = list_ids(world.admin, collection, filter=f'tenant = "{world.b["id"]}"') \
        if collection != "tenants" else {world.b["id"]}
    assert not ids & b_ids


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


@pytest.mark.parametrize("collection", TENANT_OWNED)
def test_member_of_a_cannot_create_in_b(world: World, collection: str) -> None:
    body = create_bodies(world.b, world.dev_b.record, world.owner_a)[collection]
    resp = world.owner_a.client.post(records_url(collection), json=body)
    assert resp.status_code == refused_create(collection), resp.text
    assert not list_ids(world.admin, collection, filter=match_filter(collection, body))


@pytest.mark.parametrize("device_of", ["a", "b"])
def test_command_device_and_tenant_must_match(world: World, device_of: str) -> None:
    """owner of A: A's device filed under tenant B, or B's device filed under tenant A."""
    device = world.dev_a.record if device_of == "a" else world.dev_b.record
    tenant = world.b if device_of == "a" else world.a
    marker = uid("m")
    body = {"tenant": tenant["id"], "device": device["id"], "command": "exec",
            "requested_by": world.owner_a.id, "payload": {"command": marker}}
    resp = world.owner_a.client.post(records_url("commands"), json=body)
    assert resp.status_code == 400, resp.text
    assert not list_ids(world.admin, "commands", filter=f'payload.command = "{marker}"')
