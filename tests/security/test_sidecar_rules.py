"""The router's PocketBase identity is least-privilege (SPEC §11 "Secrets"): a `sidecars`
record that reads rules and tenants, writes only rules.status/error, reads only the JWTs
issued for itself, and sets only its own public key. Each refusal has its control."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.factories import (
    check,
    client,
    login,
    make_device_record,
    make_nats_user,
    make_rule,
    make_tenant,
    make_user,
    records_url,
    uid,
)


def _sidecar(admin: httpx.Client, kind: str = "router") -> tuple[dict[str, Any], httpx.Client]:
    name, password = uid("cairn-router"), secrets.token_urlsafe(16)
    row = check(admin.post(records_url("sidecars"), json={
        "name": name, "kind": kind, "password": password, "passwordConfirm": password}))
    token = login(str(admin.base_url), "sidecars", name, password).json()["token"]
    return row, client(str(admin.base_url), token)


@pytest.fixture(scope="module")
def world(pb_admin: httpx.Client) -> Iterator[dict[str, Any]]:
    a, b = make_tenant(pb_admin), make_tenant(pb_admin)
    router, as_router = _sidecar(pb_admin)
    other, as_other = _sidecar(pb_admin)
    rule = make_rule(pb_admin, a["id"])
    own_user = make_nats_user(pb_admin, a["id"], name=router["name"], role="router",
                              seed="SU" + "A" * 56, creds="secret creds")
    foreign_user = make_nats_user(pb_admin, a["id"], seed="SU" + "B" * 56)
    device, _ = make_device_record(pb_admin, a["id"])
    yield {"a": a, "b": b, "router": router, "as_router": as_router, "other": other,
           "as_other": as_other, "rule": rule, "own_user": own_user,
           "foreign_user": foreign_user, "device": device, "admin": pb_admin}
    as_router.close()
    as_other.close()


def test_router_reads_rules_and_tenants_of_every_tenant(world):
    c = world["as_router"]
    rules = check(c.get(records_url("rules"), params={"perPage": 500}))["items"]
    assert world["rule"]["id"] in {r["id"] for r in rules}
    tenants = {t["id"] for t in check(c.get(records_url("tenants"),
                                            params={"perPage": 500}))["items"]}
    assert {world["a"]["id"], world["b"]["id"]} <= tenants


def test_router_writes_only_rule_status_and_error(world):
    c, rule = world["as_router"], world["rule"]
    ok = c.patch(records_url("rules", rule["id"]), json={"status": "invalid", "error": "line 1"})
    assert ok.status_code == 200, ok.text
    for body in ({"yaml": "subject: '>'"}, {"enabled": False}, {"tenant": world["b"]["id"]},
                 {"name": "renamed"}, {"status": "valid", "yaml": "x: 1"}):
        before = world["admin"].get(records_url("rules", rule["id"])).json()
        assert c.patch(records_url("rules", rule["id"]), json=body).status_code == 404, body
        assert world["admin"].get(records_url("rules", rule["id"])).json() == before
    assert c.post(records_url("rules"), json={"tenant": world["a"]["id"], "name": "x",
                                              "yaml": "match: 'true'"}).status_code in (400, 403)
    assert c.delete(records_url("rules", rule["id"])).status_code in (403, 404)


def test_router_sees_only_its_own_jwts_and_no_secret(world):
    c = world["as_router"]
    rows = check(c.get(records_url("nats_users"), params={"perPage": 500}))["items"]
    assert [r["id"] for r in rows] == [world["own_user"]["id"]]
    assert "seed" not in rows[0] and "creds" not in rows[0]  # hidden fields stay hidden
    other_rows = check(world["as_other"].get(records_url("nats_users")))["items"]
    assert other_rows == []
    assert c.get(records_url("nats_users", world["foreign_user"]["id"])).status_code == 404


@pytest.mark.parametrize("collection", ["devices", "nats_accounts", "memberships", "commands",
                                        "audit_log", "nats_roles", "users"])
def test_router_reads_nothing_else(world, collection):
    resp = world["as_router"].get(records_url(collection))
    assert resp.status_code == 403 or resp.json()["items"] == [], resp.text
    # control: the superuser sees rows there (the world made some)
    if collection == "devices":
        assert check(world["admin"].get(records_url(collection)))["items"]


def test_router_sets_only_its_own_key(world):
    c, router, other = world["as_router"], world["router"], world["other"]
    key = "U" + "D" * 55
    ok = c.patch(records_url("sidecars", router["id"]), json={"nats_public_key": key})
    assert ok.status_code == 200, ok.text
    for body in ({"kind": "router", "name": "renamed"}, {"error": "x"},
                 {"password": "new-password-1", "passwordConfirm": "new-password-1"}):
        assert c.patch(records_url("sidecars", router["id"]), json=body).status_code == 404
    assert c.patch(records_url("sidecars", other["id"]),
                   json={"nats_public_key": key}).status_code == 404
    assert world["admin"].get(records_url("sidecars", other["id"])).json()[
        "nats_public_key"] == ""
    listed = check(c.get(records_url("sidecars")))["items"]
    assert [r["id"] for r in listed] == [router["id"]]


def test_people_and_devices_cannot_touch_sidecars(world):
    owner = make_user(world["admin"], {world["a"]["id"]: "owner"})
    try:
        assert check(owner.client.get(records_url("sidecars")))["items"] == []
        assert owner.client.patch(records_url("sidecars", world["router"]["id"]),
                                  json={"nats_public_key": "U" + "E" * 55}).status_code == 404
        assert owner.client.post(records_url("sidecars"), json={
            "name": uid("evil"), "kind": "router", "password": "p" * 12,
            "passwordConfirm": "p" * 12}).status_code in (400, 403)
        # and a user's token is no router token: no rules of other tenants
        rules = check(owner.client.get(records_url("rules")))["items"]
        assert all(r["tenant"] == world["a"]["id"] for r in rules)
    finally:
        owner.close()


def test_tenant_admins_cannot_touch_cairns_own_identities(world):
    """Rows named cairn-* are the bridge's and the sidecars': a tenant admin could otherwise
    deactivate or delete them (and with them command dispatch or alerting)."""
    admin_a = make_user(world["admin"], {world["a"]["id"]: "admin"})
    try:
        c, own = admin_a.client, world["own_user"]
        assert c.post(records_url("nats_users"), json={
            "tenant": world["a"]["id"], "name": "cairn-evil", "role": "service",
            "active": True}).status_code == 400
        assert c.patch(records_url("nats_users", own["id"]),
                       json={"active": False}).status_code == 404
        assert c.delete(records_url("nats_users", own["id"])).status_code == 404
        assert world["admin"].get(records_url("nats_users", own["id"])).json()["active"] \
            == own["active"]
        # control: the tenant's own service users stay theirs to manage
        mine = check(c.post(records_url("nats_users"), json={
            "tenant": world["a"]["id"], "name": uid("dash"), "role": "viewer",
            "active": True}))
        assert c.patch(records_url("nats_users", mine["id"]),
                       json={"name": "cairn-bridge2"}).status_code == 404
        assert c.patch(records_url("nats_users", mine["id"]),
                       json={"active": False}).status_code == 200
        assert c.delete(records_url("nats_users", mine["id"])).status_code == 204
    finally:
        admin_a.close()
