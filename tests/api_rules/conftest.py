"""API rules of the Cairn collections, exercised with real user and device tokens.

One package-scoped "world" on the shared PocketBase:
  tenant A: owner_a, admin_a, operator_a, viewer_a (who also OWNS tenant X), device dev_a
  tenant B: owner_b, device dev_b
and rows of every tenant-owned collection in A and B. Failed writes are double-checked
through the superuser: nothing was created or changed.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api_rules.world import World, account_row, nats_user_row
from tests.factories import (
    check,
    client,
    delete_tenants,
    make_audit,
    make_command,
    make_device,
    make_nats_role,
    make_rule,
    make_tenant,
    make_user,
    records_url,
)


@pytest.fixture(scope="package")
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

    account = account_row(admin, a["id"])
    rows: dict[str, dict[str, dict[str, Any]]] = {
        "devices": {"a": dev_a.record, "b": dev_b.record},
        "commands": {
            "a": make_command(admin, dev_a.record), "b": make_command(admin, dev_b.record),
        },
        "rules": {"a": make_rule(admin, a["id"]), "b": make_rule(admin, b["id"])},
        "audit_log": {"a": make_audit(admin, a["id"]), "b": make_audit(admin, b["id"])},
        "nats_users": {"a": nats_user_row(admin, a["id"]), "b": nats_user_row(admin, b["id"])},
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
