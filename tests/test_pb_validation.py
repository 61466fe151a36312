"""Field validation of the Cairn collections: bad input gets PocketBase's 400 naming the field.

Superuser requests bypass API rules but not field validation, so they isolate the schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cairn_common import audit_key
from tests import factories
from tests.factories import (
    delete_tenants,
    make_device_record,
    make_membership,
    make_tenant,
    make_user_record,
    records_url,
    uid,
)

TWO_MB = "x" * (2 * 1024 * 1024)


@pytest.fixture(scope="module")
def created(pb_admin: httpx.Client) -> Iterator[list[str]]:
    """Tenants made here, removed (with their rows) from the shared PocketBase afterwards."""
    ids: list[str] = []
    yield ids
    delete_tenants(pb_admin, ids)


@pytest.fixture(scope="module")
def tenant(pb_admin: httpx.Client, created: list[str]) -> dict[str, Any]:
    return make_tenant(pb_admin, created)


@pytest.fixture(scope="module")
def device(pb_admin: httpx.Client, tenant: dict[str, Any]) -> dict[str, Any]:
    return make_device_record(pb_admin, tenant["id"])[0]


def assert_field_error(resp: httpx.Response, field: str, code: str | None = None) -> None:
    assert resp.status_code == 400, resp.text
    data = resp.json()["data"]
    assert field in data, resp.text
    if code is not None:
        assert data[field]["code"] == code, resp.text


@pytest.mark.parametrize("slug", ["Bad Slug!", "UPPER", "a/b", "", "a" * 64])
def test_tenant_slug_format(pb_admin: httpx.Client, slug: str) -> None:
    resp = pb_admin.post(records_url("tenants"), json={"name": "n", "slug": slug})
    assert_field_error(resp, "slug")


def test_tenant_slug_unique(pb_admin: httpx.Client, tenant: dict[str, Any]) -> None:
    resp = pb_admin.post(records_url("tenants"), json={"name": "n", "slug": tenant["slug"]})
    assert_field_error(resp, "slug", "validation_not_unique")


def test_tenant_limits_size(pb_admin: httpx.Client) -> None:
    resp = pb_admin.post(records_url("tenants"), json={
        "name": "n", "slug": uid(), "limits": {"blob": "x" * 70000}})
    assert_field_error(resp, "limits")


def test_device_code_unique(
    pb_admin: httpx.Client, tenant: dict[str, Any], device: dict[str, Any]
) -> None:
    resp = pb_admin.post(records_url("devices"), json={
        "code": device["code"], "tenant": tenant["id"], "password": "enroll-secret-1",
        "passwordConfirm": "enroll-secret-1"})
    assert_field_error(resp, "code", "validation_not_unique")


@pytest.mark.parametrize("code", ["ab", "has space", "UPPER-case", "x" * 65, ""])
def test_device_code_format(pb_admin: httpx.Client, tenant: dict[str, Any], code: str) -> None:
    resp = pb_admin.post(records_url("devices"), json={
        "code": code, "tenant": tenant["id"], "password": "enroll-secret-1",
        "passwordConfirm": "enroll-secret-1"})
    assert_field_error(resp, "code")


def test_device_needs_a_tenant(pb_admin: httpx.Client) -> None:
    resp = pb_admin.post(records_url("devices"), json={
        "code": uid("dev"), "password": "enroll-secret-1", "passwordConfirm": "enroll-secret-1"})
    assert_field_error(resp, "tenant", "validation_required")


def test_device_needs_a_password(pb_admin: httpx.Client, tenant: dict[str, Any]) -> None:
    resp = pb_admin.post(records_url("devices"), json={"code": uid("dev"), "tenant": tenant["id"]})
    assert_field_error(resp, "password")


def test_device_status_outside_set(pb_admin: httpx.Client, device: dict[str, Any]) -> None:
    resp = pb_admin.patch(records_url("devices", device["id"]), json={"status": "online"})
    assert_field_error(resp, "status")


def test_device_relation_to_missing_tenant(pb_admin: httpx.Client) -> None:
    resp = pb_admin.post(records_url("devices"), json={
        "code": uid("dev"), "tenant": "nosuchtenant000", "password": "enroll-secret-1",
        "passwordConfirm": "enroll-secret-1"})
    assert_field_error(resp, "tenant")


@pytest.mark.parametrize("role", ["superuser", "Owner", "", "root"])
def test_membership_role_outside_set(
    pb_admin: httpx.Client, tenant: dict[str, Any], role: str
) -> None:
    user, _ = make_user_record(pb_admin)
    resp = pb_admin.post(records_url("memberships"), json={
        "user": user["id"], "tenant": tenant["id"], "role": role})
    assert_field_error(resp, "role")


def test_duplicate_membership(pb_admin: httpx.Client, tenant: dict[str, Any]) -> None:
    user, _ = make_user_record(pb_admin)
    make_membership(pb_admin, user["id"], tenant["id"], "viewer")
    resp = pb_admin.post(records_url("memberships"), json={
        "user": user["id"], "tenant": tenant["id"], "role": "admin"})
    assert resp.status_code == 400, resp.text
    data = resp.json()["data"]
    assert set(data) == {"user", "tenant"}, resp.text  # both columns of the unique index
    for field in data:
        assert data[field]["code"] == "validation_not_unique"


def test_command_needs_a_device(pb_admin: httpx.Client, tenant: dict[str, Any]) -> None:
    resp = pb_admin.post(records_url("commands"), json={
        "tenant": tenant["id"], "command": "ping", "requested_by": "x"})
    assert_field_error(resp, "device", "validation_required")


def test_command_outside_set(
    pb_admin: httpx.Client, tenant: dict[str, Any], device: dict[str, Any]
) -> None:
    resp = pb_admin.post(records_url("commands"), json={
        "tenant": tenant["id"], "device": device["id"], "command": "rm-rf"})
    assert_field_error(resp, "command")


def test_command_response_limit(
    pb_admin: httpx.Client, tenant: dict[str, Any], device: dict[str, Any]
) -> None:
    """response takes up to ~2 MB (a logs dump); beyond that it is refused by name. A
    response is written when a command finishes (pb_hooks/commands.pb.js), as the bridge
    does: sent, then finished."""
    def finished_with(response: dict[str, Any]) -> httpx.Response:
        row = pb_admin.post(records_url("commands"), json={
            "tenant": tenant["id"], "device": device["id"], "command": "logs",
            "payload": {"log_path": "/var/log/syslog"}}).json()
        sent = pb_admin.patch(records_url("commands", row["id"]), json={"status": "sent"})
        assert sent.status_code == 200, sent.text[:300]
        return pb_admin.patch(records_url("commands", row["id"]),
                              json={"status": "succeeded", "response": response})

    ok = finished_with({"lines": "y" * 1_500_000})
    assert ok.status_code == 200, ok.text[:300]
    resp = finished_with({"lines": TWO_MB + "y" * 200_000})
    assert_field_error(resp, "response")


@pytest.mark.parametrize("name", ["Has Space", "UPPER", "a.b", ""])
def test_nats_role_name_format(pb_admin: httpx.Client, tenant: dict[str, Any], name: str) -> None:
    resp = pb_admin.post(records_url("nats_roles"), json={"tenant": tenant["id"], "name": name})
    assert_field_error(resp, "name")


def test_rule_name_unique_per_tenant(
    pb_admin: httpx.Client, tenant: dict[str, Any], created: list[str]
) -> None:
    name = uid("rule")
    first = pb_admin.post(records_url("rules"), json={"tenant": tenant["id"], "name": name})
    assert first.status_code == 200, first.text
    resp = pb_admin.post(records_url("rules"), json={"tenant": tenant["id"], "name": name})
    assert resp.status_code == 400
    assert set(resp.json()["data"]) == {"tenant", "name"}, resp.text
    other = make_tenant(pb_admin, created)
    again = pb_admin.post(records_url("rules"), json={"tenant": other["id"], "name": name})
    assert again.status_code == 200, again.text


def test_audit_log_needs_an_action(pb_admin: httpx.Client, tenant: dict[str, Any]) -> None:
    """(With the audit key, as Cairn's components write it: without, nothing is written.)"""
    resp = pb_admin.post(records_url("audit_log"), json={"tenant": tenant["id"]},
                         headers={audit_key.HEADER: factories.AUDIT_KEY})
    assert_field_error(resp, "action", "validation_required")


@pytest.mark.parametrize(
    ("collection", "field"),
    [
        ("tenants", "name"),
        ("devices", "hostname"),
        ("devices", "name"),
        ("rules", "yaml"),
        ("commands", "error"),
        ("nats_users", "jwt"),
    ],
)
def test_two_megabytes_in_a_limited_text_field(
    pb_admin: httpx.Client, tenant: dict[str, Any], device: dict[str, Any],
    collection: str, field: str,
) -> None:
    target = {
        "tenants": tenant["id"],
        "devices": device["id"],
    }.get(collection)
    if target is None:
        body: dict[str, Any] = {
            "rules": {"tenant": tenant["id"], "name": uid("rule")},
            "commands": {"tenant": tenant["id"], "device": device["id"], "command": "ping"},
            "nats_users": {"tenant": tenant["id"], "name": uid("svc"), "role": "service"},
        }[collection]
        resp = pb_admin.post(records_url(collection), json={**body, field: TWO_MB})
    else:
        resp = pb_admin.patch(records_url(collection, target), json={field: TWO_MB})
    assert_field_error(resp, field, "validation_max_text_constraint")


def test_body_that_is_not_json(pb_admin: httpx.Client) -> None:
    resp = pb_admin.post(
        records_url("tenants"), content=b'{"name": "n", "slug": ',
        headers={"Content-Type": "application/json"},
    )
    # There is no field to name: PocketBase answers 400 with an empty `data` object.
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["status"] == 400
    assert body["data"] == {}
    assert not pb_admin.get(records_url("tenants"), params={"filter": 'name = "n"'}).json()[
        "items"]
