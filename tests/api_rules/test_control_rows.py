"""commands, rules, nats_roles and nats_users: who may write which fields."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_rules.world import (
    World,
)
from tests.factories import (
    check,
    creds_text,
    list_ids,
    make_rule,
    new_key,
    records_url,
    uid,
)

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
    body = {"tenant": world.a["id"], "device": world.dev_a.id, "command": "exec",
            "requested_by": me.id, "payload": {"command": marker}, **extra}
    if body["requested_by"] == "OTHER":
        body["requested_by"] = world.owner_a.id
    resp = me.client.post(records_url("commands"), json=body)
    assert resp.status_code == (200 if allowed else 400), resp.text
    found = list_ids(world.admin, "commands", filter=f'payload.command = "{marker}"')
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
