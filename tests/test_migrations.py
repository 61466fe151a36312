"""pb_migrations/ on a fresh data dir: applied, recorded, complete, reversible, re-appliable.

Uses its own temp DataLayout (not the session PocketBase): `migrate up`, a short-lived
`serve` to read the collections over REST, then `migrate down` once per migration.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from cairn_common import audit_key
from cairn_common.layout import DataLayout
from cairn_stack.pocketbase import (
    MIGRATIONS_DIR,
    run_pb_command,
    start_pocketbase,
    upsert_superuser,
)
from cairn_stack.processes import ProcessError, free_port
from tests.factories import (
    create,
    make_audit,
    make_command,
    make_device_record,
    make_nats_role,
    make_nats_user,
    make_rule,
    make_tenant,
    make_user_record,
)

MIGRATIONS = sorted(p.name for p in MIGRATIONS_DIR.glob("*.js"))

COLLECTION_IDS = {
    "tenants": "cairn_tenants00",
    "memberships": "cairn_members00",
    "nats_accounts": "cairn_natsacc00",
    "nats_roles": "cairn_natsrol00",
    "devices": "cairn_devices00",
    "nats_users": "cairn_natsusr00",
    "commands": "cairn_commands0",
    "rules": "cairn_rules0000",
    "audit_log": "cairn_auditlog0",
    "sidecars": "cairn_sidecars0",
    "person_keys": "cairn_personkey",
}

AUTODATES = {"created": "autodate", "updated": "autodate"}
EXPECTED_FIELDS: dict[str, dict[str, str]] = {
    "users": {"name": "text", "email": "email", "disabled": "bool", **AUTODATES},
    "person_keys": {"user": "relation", "membership": "relation", "tenant": "relation",
                    "public_key": "text", "label": "text", "jwt": "text",
                    "jwt_expires": "date", "role": "text", "error": "text", **AUTODATES},
    "tenants": {
        "name": "text", "slug": "text", "active": "bool", "limits": "json",
        "nats_account_public_key": "text", "error": "text", **AUTODATES,
    },
    "memberships": {"user": "relation", "tenant": "relation", "role": "select", **AUTODATES},
    "nats_accounts": {
        "tenant": "relation", "public_key": "text", "signing_public_key": "text",
        "seed": "text", "signing_seed": "text", "jwt": "text", "revocations": "json",
        **AUTODATES,
    },
    "nats_roles": {
        "name": "text", "tenant": "relation", "publish_allow": "json", "publish_deny": "json",
        "subscribe_allow": "json", "subscribe_deny": "json", "allow_responses": "bool",
        "error": "text", **AUTODATES,
    },
    "devices": {
        "email": "email", "password": "password", "code": "text", "tenant": "relation",
        "name": "text", "role": "text", "status": "select", "nats_public_key": "text",
        "nats_jwt": "text", "nats_jwt_expires": "date", "hostname": "text", "os": "text",
        "agent_version": "text", "last_seen": "date", "online": "bool", "config": "json",
        "error": "text", **AUTODATES,
    },
    "nats_users": {
        "tenant": "relation", "name": "text", "role": "text", "public_key": "text",
        "jwt": "text", "seed": "text", "creds": "text", "active": "bool", "error": "text",
        **AUTODATES,
    },
    "commands": {
        "tenant": "relation", "device": "relation", "command": "select", "payload": "json",
        "status": "select", "response": "json", "error": "text", "requested_by": "text",
        "expires_at": "date", "sent_at": "date", "completed_at": "date",
        "duration_ms": "number", **AUTODATES,
    },
    "rules": {
        "tenant": "relation", "name": "text", "enabled": "bool", "yaml": "text",
        "status": "select", "error": "text", **AUTODATES,
    },
    "audit_log": {
        "tenant": "relation", "actor": "text", "action": "text", "target": "text",
        "details": "json", **AUTODATES,
    },
}
HIDDEN = {
    "nats_accounts": {"seed", "signing_seed"},
    "nats_users": {"seed", "creds"},
}
SUPERUSER_ONLY_RULES = {
    "users": ["createRule"],
    "tenants": ["createRule", "deleteRule"],
    "nats_accounts": ["listRule", "viewRule", "createRule", "updateRule", "deleteRule"],
    "commands": ["updateRule", "deleteRule"],
    "audit_log": ["createRule", "updateRule", "deleteRule"],
}
GLOBAL_ROLES = {"agent", "service", "viewer", "router"}


def _db(layout: DataLayout) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{layout.pb_dir / 'data.db'}?mode=ro", uri=True)


def applied(layout: DataLayout) -> set[str]:
    with closing(_db(layout)) as db:
        return {row[0] for row in db.execute("SELECT file FROM _migrations")}


def collection_names(layout: DataLayout) -> set[str]:
    with closing(_db(layout)) as db:
        return {row[0] for row in db.execute("SELECT name FROM _collections")}


def global_role_names(layout: DataLayout) -> list[str]:
    with closing(_db(layout)) as db:
        rows = db.execute("SELECT name FROM nats_roles WHERE tenant = '' ORDER BY name")
        return [row[0] for row in rows]


def device_secret_cost(layout: DataLayout) -> int:
    with closing(_db(layout)) as db:
        fields = json.loads(db.execute(
            "SELECT fields FROM _collections WHERE name = 'devices'").fetchone()[0])
    return int(next(f for f in fields if f["name"] == "password").get("cost") or 0)


def users_rules(layout: DataLayout) -> dict[str, str | None]:
    keys = ("listRule", "viewRule", "createRule", "updateRule", "deleteRule")
    with closing(_db(layout)) as db:
        row = db.execute(
            f"SELECT {', '.join(keys)} FROM _collections WHERE name = 'users'"
        ).fetchone()
    return dict(zip(keys, row, strict=True))


def users_create_rule(layout: DataLayout) -> str | None:
    return users_rules(layout)["createRule"]


# The stock `users` rules of PocketBase 0.40 (public sign-up included), restored by `down`.
STOCK_USERS_RULES = {
    "listRule": "id = @request.auth.id",
    "viewRule": "id = @request.auth.id",
    "createRule": "",
    "updateRule": "id = @request.auth.id",
    "deleteRule": "id = @request.auth.id",
}


@contextmanager
def serving(layout: DataLayout) -> Iterator[httpx.Client]:
    """A real PocketBase on the layout, with a superuser client; stopped afterwards."""
    upsert_superuser(layout, "mig@cairn.test", "mig-password-123")
    port = free_port()
    proc = start_pocketbase(layout, port)
    try:
        url = f"http://127.0.0.1:{port}"
        token = httpx.post(
            f"{url}/api/collections/_superusers/auth-with-password",
            json={"identity": "mig@cairn.test", "password": "mig-password-123"},
        ).json()["token"]
        with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=10) as c:
            yield c
    finally:
        proc.stop()


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    return DataLayout(tmp_path)


def test_migration_files_are_ours() -> None:
    assert MIGRATIONS == ["1764000000_collections.js", "1764000001_seed_roles.js",
                          "1764000002_command_dispatch.js", "1764000003_security.js",
                          "1764000004_device_secret_cost.js", "1764000005_router_throttle.js",
                          "1764000006_people.js", "1764000007_command_guards.js",
                          "1764000008_device_login.js", "1764000009_tenant_active_help.js"]


def test_up_on_empty_dir_creates_the_model(layout: DataLayout) -> None:
    out = run_pb_command(layout, "migrate", "up")
    for name in MIGRATIONS:
        assert f"Applied {name}" in out
    assert set(MIGRATIONS) <= applied(layout)
    with closing(_db(layout)) as db:  # the Admin UI shows names and says the patterns
        fields = {f["name"]: f for f in json.loads(db.execute(
            "SELECT fields FROM _collections WHERE name = 'tenants'").fetchone()[0])}
    assert fields["name"]["presentable"] is True
    assert "^[a-z0-9-]+$" in fields["slug"]["help"]
    assert "this form's switch starts off" in fields["active"]["help"]

    with serving(layout) as admin:
        resp = admin.get("/api/collections", params={"perPage": 200})
        resp.raise_for_status()
        collections = {c["name"]: c for c in resp.json()["items"]}

        for name, cid in COLLECTION_IDS.items():
            assert collections[name]["id"] == cid
        for name, expected in EXPECTED_FIELDS.items():
            fields = {f["name"]: f for f in collections[name]["fields"]}
            got = {n: fields[n]["type"] for n in expected if n in fields}
            assert got == expected, name
            for hidden in HIDDEN.get(name, set()):
                assert fields[hidden]["hidden"] is True, (name, hidden)
            for field_name in expected:
                if field_name in {"created", "updated"}:
                    assert fields[field_name]["onCreate"] is True
                    assert fields[field_name]["onUpdate"] is (field_name == "updated")
        for name, rules in SUPERUSER_ONLY_RULES.items():
            for rule in rules:
                assert collections[name][rule] is None, (name, rule)
        for name, coll in collections.items():
            if name in COLLECTION_IDS:
                for rule in ("listRule", "viewRule", "createRule", "updateRule", "deleteRule"):
                    value = coll[rule]
                    assert value is None or value.startswith("@request.auth.collectionName")\
                        or value.startswith("(@request.auth.collectionName"), (name, rule)

        devices = collections["devices"]
        assert devices["type"] == "auth"
        assert devices["passwordAuth"] == {"enabled": True, "identityFields": ["login"]}
        assert devices["authRule"] == 'status != "disabled"'
        email = next(f for f in devices["fields"] if f["name"] == "email")
        assert email["required"] is False
        password = next(f for f in devices["fields"] if f["name"] == "password")
        assert password["cost"] == 6  # docs/decisions/0005
        people = next(f for f in collections["users"]["fields"] if f["name"] == "password")
        assert people["cost"] in (0, 10)  # people keep the default
        relations = {
            (c["name"], f["name"]): f
            for c in collections.values() for f in c["fields"] if f["type"] == "relation"
        }
        assert relations[("memberships", "user")]["collectionId"] == "_pb_users_auth_"
        assert relations[("commands", "device")]["collectionId"] == COLLECTION_IDS["devices"]
        assert relations[("audit_log", "tenant")]["cascadeDelete"] is False
        assert relations[("audit_log", "tenant")]["required"] is False
        assert relations[("devices", "tenant")]["cascadeDelete"] is True

        roles = admin.get(
            "/api/collections/nats_roles/records", params={"filter": "tenant = ''"}
        ).json()["items"]
        by_name = {r["name"]: r for r in roles}
        assert set(by_name) == GLOBAL_ROLES
        assert by_name["agent"]["publish_allow"] == ["agents.{code}.>"]
        assert by_name["agent"]["subscribe_allow"] == ["agents.{code}.cmd.>", "{inbox}.>"]
        assert by_name["agent"]["allow_responses"] is True
        assert by_name["service"]["publish_allow"] == [">"]
        assert by_name["viewer"]["publish_deny"] == [">"]
        assert by_name["viewer"]["publish_allow"] == []
        assert by_name["agent"]["publish_deny"] == ["agents.{code}.cmd.>", "{inbox}.>"]
        assert "{inbox}.>" in by_name["viewer"]["subscribe_allow"]
        assert by_name["viewer"]["allow_responses"] is False
        assert by_name["router"]["subscribe_allow"] == ["agents.>", "alerts.>", "{inbox}.>"]
        assert by_name["router"]["publish_allow"][-2:] == [  # 1764000005: its throttle keys
            "$KV.CAIRN_THROTTLE.{code}.>",
            "$JS.API.DIRECT.GET.KV_CAIRN_THROTTLE.$KV.CAIRN_THROTTLE.{code}.>"]

        settings = admin.get("/api/settings").json()
        assert settings["rateLimits"]["enabled"] is True
        labels = {r["label"]: r for r in settings["rateLimits"]["rules"]}
        for label in ("users:auth", "devices:auth", "sidecars:auth", "_superusers:auth"):
            assert labels[label]["maxRequests"] <= 10, label


def test_up_twice_down_each_and_up_again(layout: DataLayout) -> None:
    run_pb_command(layout, "migrate", "up")
    again = run_pb_command(layout, "migrate", "up")
    assert "Applied" not in again
    assert "No new migrations" in again
    assert global_role_names(layout) == sorted(GLOBAL_ROLES)  # seeded exactly once
    assert users_create_rule(layout) is None

    with serving(layout) as admin:  # rows in every collection must not block the rollback
        tenant = make_tenant(admin)
        user, _ = make_user_record(admin, {tenant["id"]: "owner"})
        device, _ = make_device_record(admin, tenant["id"])
        make_command(admin, device, requested_by=user["id"])
        make_rule(admin, tenant["id"])
        make_audit(admin, tenant["id"], key=audit_key.read(layout))
        make_nats_user(admin, tenant["id"], seed="SU" + "A" * 56)
        make_nats_role(admin, tenant["id"])
        create(admin, "nats_accounts", tenant=tenant["id"], seed="SA" + "A" * 56)

    ours = set(COLLECTION_IDS)
    # down #-7: the active switch's help as before
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[9]}" in out
    with closing(_db(layout)) as db:
        fields = {f["name"]: f for f in json.loads(db.execute(
            "SELECT fields FROM _collections WHERE name = 'tenants'").fetchone()[0])}
    assert fields["active"]["help"].startswith("Off: ")
    # down #-6: one code index for all tenants again, and devices log in by code
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[8]}" in out
    with closing(_db(layout)) as db:
        auth, indexes = db.execute("SELECT options, indexes FROM _collections "
                                   "WHERE name = 'devices'").fetchone()
    assert json.loads(auth)["passwordAuth"]["identityFields"] == ["code"]
    assert "idx_cairn_devices_code`" in indexes and "login" not in indexes
    # down #-5: the command create rule ties the device's tenant to the row's again
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[7]}" in out
    with closing(_db(layout)) as db:
        rule = db.execute("SELECT createRule FROM _collections WHERE name = 'commands'"
                          ).fetchone()[0]
    assert "device.tenant = tenant" in rule
    # down #-4: people's keys and users.disabled go
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[6]}" in out
    assert "person_keys" not in collection_names(layout)
    ours.discard("person_keys")
    # down #-3: the router role loses the throttle bucket's subjects
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[5]}" in out
    with closing(_db(layout)) as db:
        allowed = db.execute("SELECT publish_allow FROM nats_roles WHERE name = 'router'"
                             " AND tenant = ''").fetchone()[0]
    assert "CAIRN_THROTTLE" not in allowed and "alerts.>" in allowed
    # down #-2: device secrets back to the default bcrypt cost
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[4]}" in out
    assert device_secret_cost(layout) == 0
    # down #-1: the security rules, sidecars, roles and rate limits
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[3]}" in out
    assert "sidecars" not in collection_names(layout)
    assert global_role_names(layout) == ["agent", "service", "viewer"]
    ours.discard("sidecars")
    # down #0: the dispatch indexes
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[2]}" in out
    with closing(_db(layout)) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "idx_cairn_audit_command_sent" not in names
    assert "idx_cairn_commands_queue" not in names
    # down #1: the seed (tenant-specific roles stay)
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[1]}" in out
    assert global_role_names(layout) == []
    with closing(_db(layout)) as db:
        assert db.execute("SELECT count(*) FROM nats_roles").fetchone()[0] == 1
    assert ours <= collection_names(layout)
    assert MIGRATIONS[1] not in applied(layout)
    # down #2: the collections, and the stock users rules come back
    out = run_pb_command(layout, "migrate", "down", stdin="y\n")
    assert f"Reverted {MIGRATIONS[0]}" in out
    assert not ours & collection_names(layout)
    with closing(_db(layout)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not ours & tables  # the tables are dropped too
    assert "users" in collection_names(layout)
    assert users_rules(layout) == STOCK_USERS_RULES
    assert not set(MIGRATIONS) & applied(layout)

    out = run_pb_command(layout, "migrate", "up")
    assert all(f"Applied {name}" in out for name in MIGRATIONS)
    assert ours <= collection_names(layout)
    assert global_role_names(layout) == sorted(GLOBAL_ROLES)
    assert users_create_rule(layout) is None


def test_existing_devices_get_their_login_and_down_refuses_shared_codes(
        layout: DataLayout) -> None:
    run_pb_command(layout, "migrate", "up")
    with serving(layout) as admin:  # `serve` applies pending migrations, so rows come first
        tenant = make_tenant(admin)
        old, password = make_device_record(admin, tenant["id"])
    out = run_pb_command(layout, "migrate", "down", "2", stdin="y\n")  # back before 1764000008
    assert f"Reverted {MIGRATIONS[9]}" in out and f"Reverted {MIGRATIONS[8]}" in out
    with closing(_db(layout)) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(devices)")}
    assert "login" not in columns and "bare_code_login" not in columns and "code" in columns
    out = run_pb_command(layout, "migrate", "up")
    assert f"Applied {MIGRATIONS[8]}" in out
    with closing(_db(layout)) as db:
        login, bare = db.execute("SELECT login, bare_code_login FROM devices WHERE id = ?",
                                 (old["id"],)).fetchone()
    assert login == f"{tenant['slug']}/{old['code']}" and bare == 1

    def log_in(admin, identity: str) -> str:
        resp = admin.post("/api/collections/devices/auth-with-password",
                          json={"identity": identity, "password": password})
        return resp.json()["record"]["id"] if resp.status_code == 200 else ""

    with serving(layout) as admin:
        assert log_in(admin, login) == old["id"]  # the old device logs in as <slug>/<code>
        assert log_in(admin, old["code"]) == old["id"]  # ... and still by its bare code
        # another tenant makes the same code (now allowed), even with the same secret: the
        # bare code still opens only the old device, the new one only by its login
        other = make_tenant(admin)
        new, _ = make_device_record(admin, other["id"], password=password, code=old["code"])
        assert new["bare_code_login"] is False
        assert log_in(admin, old["code"]) == old["id"]
        assert log_in(admin, new["login"]) == new["id"]
        # a new code is a new device to its agent: the bare-code login goes with the old one
        moved = admin.patch(f"/api/collections/devices/records/{old['id']}",
                            json={"code": "renamed-1"})
        assert moved.status_code == 200 and moved.json()["bare_code_login"] is False
        assert log_in(admin, "renamed-1") == ""
        assert log_in(admin, f"{tenant['slug']}/renamed-1") == old["id"]
        admin.patch(f"/api/collections/devices/records/{old['id']}", json={"code": old["code"]})
    with pytest.raises(ProcessError) as refused:
        run_pb_command(layout, "migrate", "down", "2", stdin="y\n")
    assert f"device codes are shared by tenants ({old['code']})" in str(refused.value)
    assert MIGRATIONS[8] in applied(layout)


def test_seed_is_idempotent_when_history_is_lost(layout: DataLayout) -> None:
    """Re-running the seed migration (history row gone) does not duplicate global roles."""
    run_pb_command(layout, "migrate", "up")
    with closing(sqlite3.connect(layout.pb_dir / "data.db")) as db:
        db.execute("DELETE FROM _migrations WHERE file = ?", (MIGRATIONS[1],))
        db.commit()
    out = run_pb_command(layout, "migrate", "up")
    assert f"Applied {MIGRATIONS[1]}" in out
    assert global_role_names(layout) == sorted(GLOBAL_ROLES)
