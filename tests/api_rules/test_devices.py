"""What a device token may do (only itself) and what operators may do to devices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_rules.world import (
    World,
    create_bodies,
    match_filter,
    refused_create,
)
from tests.factories import (
    Principal,
    device_login,
    list_ids,
    login,
    make_device,
    make_device_record,
    records_url,
    uid,
)

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
        assert login(str(world.admin.base_url), "devices", self_device.record["login"],
                     self_device.password).status_code == 200
        assert self_device.client.get(records_url("devices", self_device.id)).status_code \
            == 200


def test_device_cannot_create_or_delete(world: World) -> None:
    me = world.dev_a
    for collection, body in create_bodies(world.a, me.record, me).items():
        resp = me.client.post(records_url(collection), json=body)
        assert resp.status_code == refused_create(collection), collection
        assert not list_ids(world.admin, collection, filter=match_filter(collection, body))
    assert me.client.delete(records_url("devices", me.id)).status_code == 404
    assert world.exists("devices", me.id)


# Fields only the bridge, the agent or PocketBase itself set: an operator may neither
# write them on an update nor preset them on a create.
NOT_FOR_OPERATORS = [
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
]


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({"name": "renamed"}, True),
        ({"status": "disabled"}, True),
        ({"role": "service"}, False),  # only owners/admins pick a device's role (SPEC §11)
        ({"role": "agent"}, False),
        ({"name": "renamed", "role": "agent"}, False),
        ({"config": {"interval": 5}}, True),
        ({"code": uid("dev")}, False),
        ({"tenant": "X"}, False),
        ({"nats_public_key": "U" + "B" * 55}, False),
        *NOT_FOR_OPERATORS,
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
        ({"role": "service"}, False),  # only owners/admins pick a device's role
        ({"role": "agent"}, False),
        ({"nats_public_key": "U" + "C" * 55}, False),
        *NOT_FOR_OPERATORS,
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


@pytest.mark.parametrize("actor", ["owner_a", "admin_a"])
def test_managers_set_device_roles(world: World, target_device: dict[str, Any],
                                   actor: str) -> None:
    """The positive control of the operator refusals above: owners and admins may."""
    client = getattr(world, actor).client
    resp = client.patch(records_url("devices", target_device["id"]), json={"role": "agent"})
    assert resp.status_code == 200, resp.text
    code = uid("dev")
    resp = client.post(records_url("devices"), json={
        "code": code, "tenant": world.a["id"], "role": "agent",
        "password": "enroll-secret-1", "passwordConfirm": "enroll-secret-1"})
    assert resp.status_code == 200, resp.text
    assert world.get("devices", resp.json()["id"])["role"] == "agent"


def test_manager_of_another_tenant_cannot_set_roles(world: World,
                                                    target_device: dict[str, Any]) -> None:
    """viewer_a owns tenant X: that ownership must not make it a manager of A's devices."""
    before = world.get("devices", target_device["id"])
    resp = world.viewer_a.client.patch(records_url("devices", target_device["id"]),
                                       json={"role": "agent"})
    assert resp.status_code == 404
    assert world.get("devices", target_device["id"]) == before
    resp = world.owner_b.client.patch(records_url("devices", target_device["id"]),
                                      json={"role": "agent"})
    assert resp.status_code == 404


def test_disabled_device_cannot_authenticate(world: World) -> None:
    record, password = make_device_record(world.admin, world.a["id"], status="disabled")
    resp = login(str(world.admin.base_url), "devices", record["login"], password)
    assert resp.status_code == 403  # the authRule refuses; the password was right
    assert "token" not in resp.json()


def test_pending_device_can_authenticate(world: World) -> None:
    record, password = make_device_record(world.admin, world.a["id"])  # status empty
    assert login(str(world.admin.base_url), "devices", record["login"], password).status_code \
        == 200
    record, password = make_device_record(world.admin, world.a["id"], status="pending")
    assert login(str(world.admin.base_url), "devices", record["login"], password).status_code \
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
    assert login(str(world.admin.base_url), "devices", fresh_device.record["login"],
                 fresh_device.password).status_code == 403


def test_device_login_uses_code_not_email(world: World) -> None:
    record, password = make_device_record(world.admin, world.a["id"])
    assert record["email"] == ""
    other = device_login(world.admin, record, password)
    try:
        assert other.record["id"] == record["id"]
    finally:
        other.close()
