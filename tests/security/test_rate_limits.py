"""Logins are throttled (SPEC §11): the migration's rate limits, on a PocketBase of their
own (the session's PocketBase turns them off, the suite logs in from one address a lot)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cairn_common.layout import DataLayout
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import free_port
from tests.factories import login, make_device_record, make_tenant, make_user_record

ATTEMPTS = 30  # a password-guessing loop; the limit is a handful a minute


@pytest.fixture(scope="module")
def limited_pb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    layout = DataLayout(Path(tmp_path_factory.mktemp("ratelimit")))
    email, password = "admin@cairn.test", secrets.token_urlsafe(18)
    upsert_superuser(layout, email, password)
    port = free_port()
    proc = start_pocketbase(layout, port)
    try:
        yield f"http://127.0.0.1:{port}", email, password
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(limited_pb) -> Iterator[httpx.Client]:
    url, email, password = limited_pb
    token = login(url, "_superusers", email, password).json()["token"]
    with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=10) as client:
        yield client


def _guess(url: str, collection: str, identity: str) -> list[int]:
    return [login(url, collection, identity, f"wrong-{i}").status_code
            for i in range(ATTEMPTS)]


def test_device_password_guessing_is_throttled(limited_pb, admin):
    url = limited_pb[0]
    tenant = make_tenant(admin)
    record, password = make_device_record(admin, tenant["id"])
    # positive control: the real device logs in on its first try
    assert login(url, "devices", record["login"], password).status_code == 200
    codes = _guess(url, "devices", record["login"])
    assert codes.count(400) <= 10, codes
    assert 429 in codes, "60 wrong passwords in a row were never throttled"
    # the throttle is per collection: a person's login is still answered meanwhile
    user, user_password = make_user_record(admin)
    assert login(url, "users", user["email"], user_password).status_code == 200
    # and the superuser's API (token, not the auth endpoint) keeps working
    assert admin.get("/api/collections/devices/records").status_code == 200


def test_user_password_guessing_is_throttled(limited_pb, admin):
    url = limited_pb[0]
    user, _ = make_user_record(admin)
    codes = _guess(url, "users", user["email"])
    assert codes.count(400) <= 10, codes
    assert 429 in codes
