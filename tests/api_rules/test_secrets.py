"""Secrets never leave for non-superusers; audit_log, anonymous access and users."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_rules.world import (
    TENANT_OWNED,
    World,
)
from tests.factories import (
    SEED_RE,
    check,
    list_ids,
    make_audit,
    make_device,
    make_rule,
    records_url,
    uid,
)

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
