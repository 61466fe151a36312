"""What an admin meets in the Admin UI is refused at once, with the reason under the field,
for superusers, tenant admins and operators alike (pb_hooks/commands.pb.js,
pb_hooks/audit.pb.js); history cannot be rewritten. Every refusal has its control in the
same setup: the valid form from the same person succeeds.
"""

from __future__ import annotations

import time

import httpx
import pytest

from cairn_common.pocketbase import PocketBaseError
from pb_hooks_bridge.dispatch import parse_date
from tests.live import account_ready, eventually, new_device, new_member, new_tenant

ACTORS = ("superuser", "admin", "operator")


@pytest.fixture(scope="module")
async def world(bridge, admin, pb_env):
    """Tenant A (a device, a disabled device, an admin and an operator) and tenant B with a
    device of its own."""
    a = await account_ready(admin, await new_tenant(admin))
    b = await account_ready(admin, await new_tenant(admin))
    clients = {"superuser": (admin, "")}
    for role in ("admin", "operator"):
        clients[role] = await new_member(admin, pb_env.url, a, role)
    outsider = await new_member(admin, pb_env.url, b, "operator")
    yield {"a": a, "b": b, "device": await new_device(admin, a),
           "disabled": await new_device(admin, a, status="disabled"),
           "foreign": await new_device(admin, b), "clients": clients, "outsider": outsider}
    for role in ("admin", "operator"):
        await clients[role][0].close()
    await outsider[0].close()


def _row(world, actor, device=None, command="ping", payload=None, **extra):
    client, user_id = world["clients"][actor]
    body = {"tenant": world["a"]["id"], "device": (device or world["device"])["id"],
            "command": command, "payload": payload if payload is not None else {}, **extra}
    if user_id:
        body["requested_by"] = user_id
    return client, body


async def _refused(client, body) -> PocketBaseError:
    with pytest.raises(PocketBaseError) as info:
        await client.create("commands", body)
    return info.value


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize(("payload", "words"), [
    ([1, 2], "payload must be a JSON object, got array"),
    (5, "payload must be a JSON object, got number"),
    ("a", "payload must be a JSON object, got string"),
    ({"a": 1, "b": 2}, "ping: unknown field 'a'; ping: unknown field 'b'"),
])
async def test_a_payload_that_does_not_fit_is_refused_in_the_form(world, actor, payload, words):
    error = await _refused(*_row(world, actor, payload=payload))
    assert error.status == 400 and words in str(error)
    # PocketBase capitalizes a field message and ends it with a full stop
    assert error.data["payload"]["message"].lower().rstrip(".") == words.lower()


@pytest.mark.parametrize("actor", ACTORS)
async def test_every_mistake_of_an_exec_is_listed(world, actor):
    error = await _refused(*_row(world, actor, command="exec",
                                 payload={"timeout": "9", "args": [1], "colour": "red"}))
    message = error.data["payload"]["message"]
    for words in ("unknown field 'colour'", "missing field 'command'",
                  "field 'timeout' has the wrong type (string, not number)",
                  "args must be a list of strings"):
        assert words in message, message


@pytest.mark.parametrize("actor", ACTORS)
async def test_another_tenants_device_is_refused(world, actor):
    error = await _refused(*_row(world, actor, device=world["foreign"]))
    assert "not one of the command's tenant's devices" in error.data.get("device", {}).get(
        "message", ""), (error, error.data)


@pytest.mark.parametrize("actor", ACTORS)
async def test_a_disabled_device_is_refused(world, actor):
    error = await _refused(*_row(world, actor, device=world["disabled"]))
    assert f"device {world['disabled']['code']} is disabled" in \
        error.data["device"]["message"].lower()


@pytest.mark.parametrize("actor", ACTORS)
async def test_control_the_valid_form_is_created_with_its_expiry(world, actor):
    client, body = _row(world, actor, command="exec", payload={"command": "true"})
    before = time.time()
    row = await client.create("commands", body)
    expires = parse_date(row["expires_at"])
    assert expires is not None and before + 3590 <= expires <= time.time() + 3610
    chosen = time.time() + 60  # an expiry given at create is kept
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(chosen)) + ".000Z"
    row = await client.create("commands", {**body, "expires_at": stamp})
    assert abs(parse_date(row["expires_at"]) - int(chosen)) < 1


async def test_an_outsider_learns_nothing_about_the_tenants_devices(world):
    client, user_id = world["outsider"]
    body = {"tenant": world["a"]["id"], "device": world["disabled"]["id"], "command": "ping",
            "payload": {}, "requested_by": user_id}
    error = await _refused(client, body)
    assert "disabled" not in str(error) and error.status in (400, 403)


async def _finished_ping(world, admin) -> dict:
    """A command the bridge has finished (the device is offline: it expires at once)."""
    client, body = _row(world, "operator", expires_at="2020-01-01 00:00:00.000Z")
    row = await client.create("commands", body)

    async def done():
        got = await admin.get("commands", row["id"])
        return got if got["status"] in ("succeeded", "failed", "expired") else None
    return await eventually(done, 20, "the bridge finished the command")


async def test_a_finished_command_cannot_be_rewritten_even_by_a_superuser(world, admin):
    row = await _finished_ping(world, admin)
    for patch, field in (({"status": "queued", "response": {}}, "status"),
                         ({"status": "succeeded"}, "status"),
                         ({"completed_at": "2030-01-01 00:00:00.000Z"}, "completed_at")):
        with pytest.raises(PocketBaseError) as info:
            await admin.update("commands", row["id"], patch)
        assert info.value.status == 400 and field in info.value.data, info.value
    assert (await admin.get("commands", row["id"]))["status"] == row["status"]
    # control: a field that is not history (its error text) may still be corrected
    await admin.update("commands", row["id"], {"error": "noted by hand"})


async def test_the_audit_log_is_append_only_even_for_a_superuser(world, admin):
    await _finished_ping(world, admin)  # control: the bridge itself writes audit rows
    rows = await admin.list("audit_log", filter=f'tenant = "{world["a"]["id"]}"')
    assert rows, "the bridge's audit rows"
    row = rows[0]
    with pytest.raises(PocketBaseError) as info:
        await admin.create("audit_log", {"tenant": world["a"]["id"], "actor": "me",
                                         "action": "made.up"})
    assert info.value.status == 403 and "by hand" in str(info.value)
    with pytest.raises(PocketBaseError) as info:
        await admin.update("audit_log", row["id"], {"action": "rewritten"})
    assert info.value.status == 400 and "cannot be changed" in str(info.value)
    with pytest.raises(PocketBaseError) as info:
        await admin.delete("audit_log", row["id"])
    assert info.value.status == 400 and "cannot be deleted" in str(info.value)
    assert (await admin.get("audit_log", row["id"]))["action"] == row["action"]


async def test_an_audit_rows_tenant_cannot_be_cleared_nor_the_collection_touched(world, admin,
                                                                                pb_env):
    """The one change PocketBase itself makes (unlinking a deleted tenant) is no door for a
    superuser to hide rows from their tenant; nor can the collection be cut down."""
    await _finished_ping(world, admin)
    row = (await admin.list("audit_log", filter=f'tenant = "{world["a"]["id"]}"'))[0]
    with pytest.raises(PocketBaseError) as info:
        await admin.update("audit_log", row["id"], {"tenant": ""})
    assert info.value.status == 400 and "cannot be changed" in str(info.value)
    assert (await admin.get("audit_log", row["id"]))["tenant"] == world["a"]["id"]
    headers = {"Authorization": admin.token}
    async with httpx.AsyncClient(base_url=pb_env.url, headers=headers, timeout=10) as http:
        dropped = await http.delete("/api/collections/audit_log")
        opened = await http.patch("/api/collections/audit_log", json={"listRule": ""})
        truncated = await http.delete("/api/collections/audit_log/truncate")
        # control: another collection's settings still change (and change back)
        rules = (await http.get("/api/collections/rules")).json()
        changed = await http.patch("/api/collections/rules",
                                   json={"listRule": rules["listRule"]})
    for resp in (dropped, opened, truncated):
        assert resp.status_code == 400, resp.text
    assert changed.status_code == 200, changed.text
    assert await admin.get("audit_log", row["id"])


async def test_results_come_with_a_final_status_and_expired_only_from_queued(world, admin):
    client, body = _row(world, "superuser", expires_at="2099-01-01 00:00:00.000Z")
    row = await client.create("commands", body)  # the device is offline: it stays queued
    for patch, field in (({"response": {"status": "pong"}}, "response"),
                         ({"completed_at": "2030-01-01 00:00:00.000Z"}, "completed_at"),
                         ({"payload": {"x": 1}}, "payload"),
                         ({"device": world["foreign"]["id"]}, "device")):
        with pytest.raises(PocketBaseError) as info:
            await admin.update("commands", row["id"], patch)
        assert info.value.status == 400 and field in info.value.data, info.value
    sent = await admin.update("commands", row["id"], {"status": "sent",
                                                      "sent_at": "2030-01-01 00:00:00.000Z"})
    with pytest.raises(PocketBaseError) as info:  # "expired" never reached the device
        await admin.update("commands", row["id"], {"status": "expired"})
    assert "status" in info.value.data
    done = await admin.update("commands", sent["id"], {"status": "failed"})  # control
    assert done["status"] == "failed"


async def test_the_bridge_finishing_a_row_twice_keeps_the_first_outcome(world, admin, bridge):
    row = await _finished_ping(world, admin)
    commands = bridge.bridge.commands
    await commands._finish(row, "failed", error="a second finish")  # no error raised
    again = await admin.get("commands", row["id"])
    assert again["status"] == row["status"] and again["completed_at"] == row["completed_at"]
