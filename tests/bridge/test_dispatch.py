"""Commands rows through the real bridge to a real agent: results, refusals, the offline
queue, expiry, and never-twice across a bridge crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.app import AgentApp
from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge import command_payloads
from tests.live import (
    account_ready,
    enrolled_agent_site,
    eventually,
    new_device,
    new_member,
    new_tenant,
)

FINAL = {"succeeded", "failed", "expired"}


class Site:
    """A tenant with an enrolled agent (started on demand) and users of each role."""

    def __init__(self, tenant, device, directory: Path, config_path: Path) -> None:
        self.tenant, self.device = tenant, device
        self.directory, self.config_path = directory, config_path
        self.app: AgentApp | None = None
        self.users: dict[str, PocketBase] = {}
        self.user_ids: dict[str, str] = {}

    async def start_agent(self) -> None:
        self.app = AgentApp(config_mod.load(self.config_path))
        await self.app.start()

    async def stop_agent(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None


@pytest.fixture(scope="module")
async def site(bridge, admin, pb_env, nats_env, tmp_path_factory):
    agent = await enrolled_agent_site(admin, pb_env.url, nats_env.url,
                                      tmp_path_factory.mktemp("dispatch-agent"))
    tenant = agent.tenant
    s = Site(tenant, agent.device, agent.directory, agent.config_path)
    for role in ("operator", "viewer"):
        s.users[role], s.user_ids[role] = await new_member(admin, pb_env.url, tenant, role)
    await s.start_agent()
    yield s
    await s.stop_agent()
    for client in s.users.values():
        await client.close()


async def _create(site: Site, command: str, payload=None, role="operator", **extra):
    return await site.users[role].create("commands", {
        "tenant": site.tenant["id"], "device": site.device["id"], "command": command,
        "payload": payload or {}, "requested_by": site.user_ids[role], **extra})


async def _final(admin, row_id, timeout=15.0):
    async def done():
        row = await admin.get("commands", row_id)
        return row if row["status"] in FINAL else None
    return await eventually(done, timeout, f"command {row_id} finished")


@pytest.mark.parametrize(
    ("command", "payload", "status", "check"),
    [
        ("ping", {}, "succeeded", lambda r: r["status"] == "pong"),
        ("health", {}, "succeeded", lambda r: r["nats"]["connected"] is True),
        ("exec", {"command": "echo hello"}, "succeeded", lambda r: r["output"] == "hello\n"),
        ("exec", {"command": "facts.py"}, "succeeded", lambda r: r["output"] == {"answer": 42}),
        ("exec", {"command": "rm -rf /"}, "failed", lambda r: "error" in r),
        ("service", {"action": "status", "service_name": "not-whitelisted"}, "failed",
         lambda r: "not" in r["error"]),
        ("inventory", {}, "succeeded", lambda r: bool(r["hostname"])),
    ],
    ids=["ping", "health", "exec", "exec-json", "exec-refused", "service-refused", "inventory"],
)
async def test_command_rows_get_the_agents_reply(site, admin, command, payload, status, check):
    row = await _create(site, command, payload)
    done = await _final(admin, row["id"])
    assert done["status"] == status, done
    assert check(done["response"]), done["response"]
    assert done["completed_at"] and done["sent_at"]
    async def audited():
        rows = await admin.list("audit_log", filter=f'target = "commands/{row["id"]}"')
        return {"command.sent", f"command.{status}"} <= {a["action"] for a in rows}

    await eventually(audited, 5, "sent and outcome in the audit log")


async def test_logs_command(site, admin):
    row = await _create(site, "logs", {"log_path": str(site.directory / "app.log"), "lines": 2})
    done = await _final(admin, row["id"])
    assert done["status"] == "succeeded"
    assert done["response"]["lines"] == ["line 498", "line 499"]


@pytest.mark.parametrize(
    ("command", "payload", "error"),
    [
        ("exec", {"command": 5}, "wrong type"),
        ("exec", {}, "missing field 'command'"),
        ("ping", {"x": 1}, "unknown field 'x'"),
        ("service", {"action": "explode", "service_name": "cron"}, "action must be one of"),
        ("logs", {"log_path": "/x", "lines": 0}, "lines must be between"),
    ],
)
async def test_bad_payloads_are_refused_at_once(site, admin, command, payload, error):
    """PocketBase refuses the row itself (pb_hooks/commands.pb.js), with the bridge's own
    words under the payload field; nothing is stored, so nothing is ever sent."""
    mine = f'device = "{site.device["id"]}"'
    before = len(await admin.list("commands", filter=mine))
    with pytest.raises(PocketBaseError) as info:
        await _create(site, command, payload)
    assert info.value.status == 400 and error in str(info.value)
    assert error in info.value.data["payload"]["message"].lower()
    assert error.lower() in (command_payloads.problem(command, payload) or "").lower()
    assert len(await admin.list("commands", filter=mine)) == before, "nothing was stored"


async def test_viewer_cannot_create_commands(site):
    with pytest.raises(PocketBaseError) as info:
        await _create(site, "ping", role="viewer")
    assert info.value.status in (400, 403)


async def test_command_for_another_tenants_device_is_refused(site, admin):
    other = await account_ready(admin, await new_tenant(admin))
    foreign = await new_device(admin, other)
    with pytest.raises(PocketBaseError):
        await site.users["operator"].create("commands", {
            "tenant": site.tenant["id"], "device": foreign["id"], "command": "ping",
            "payload": {}, "requested_by": site.user_ids["operator"]})


async def test_offline_queue_runs_once_in_order_and_expired_never(site, admin):
    canary = site.directory / "canary-queue.txt"
    await site.stop_agent()
    try:
        first = await _create(site, "exec", {"command": "canary.sh", "args": [str(canary)]})
        second = await _create(site, "ping")
        expired = await _create(site, "exec", {"command": "canary.sh",
                                               "args": [str(site.directory / "never.txt")]},
                                expires_at="2000-01-01 00:00:00.000Z")
        await asyncio.sleep(1.0)
        rows = [await admin.get("commands", r["id"]) for r in (first, second)]
        assert [r["status"] for r in rows] == ["queued", "queued"]
    finally:
        await site.start_agent()
    done_first = await _final(admin, first["id"])
    done_second = await _final(admin, second["id"])
    assert done_first["status"] == "succeeded" and done_second["status"] == "succeeded"
    assert done_first["completed_at"] <= done_second["completed_at"], "creation order"
    assert (await _final(admin, expired["id"], 40))["status"] == "expired"
    await asyncio.sleep(1.0)
    assert canary.read_text() == "ran\n", "the queued command ran more than once"
    assert not (site.directory / "never.txt").exists(), "an expired command ran"


async def test_bridge_crash_between_sent_and_reply_is_never_resent(site, admin, bridge):
    canary = site.directory / "canary-crash.txt"
    row = await site.users["operator"].create("commands", {
        "tenant": site.tenant["id"], "device": site.device["id"], "command": "exec",
        "payload": {"command": "nap.sh", "args": ["2"]},
        "requested_by": site.user_ids["operator"]})
    await eventually(lambda: _status(admin, row["id"], "sent"), 10)
    await bridge.kill()
    try:
        leftover = await admin.get("commands", row["id"])
        assert leftover["status"] == "sent"
        follow = await _create(site, "exec", {"command": "canary.sh", "args": [str(canary)]})
    finally:
        await bridge.start()
    done = await _final(admin, row["id"])
    assert done["status"] == "failed" and "outcome unknown" in done["error"]
    assert (await _final(admin, follow["id"]))["status"] == "succeeded"
    await asyncio.sleep(3)  # long enough for a wrong re-send of the nap to show up
    claims = await admin.list("audit_log", filter=f'action = "command.sent" && '
                                                  f'target = "commands/{row["id"]}"')
    assert len(claims) == 1
    assert canary.read_text() == "ran\n"


async def test_presence_follows_heartbeats(site, admin):
    async def online():
        row = await admin.get("devices", site.device["id"])
        return row if row["online"] and row["last_seen"] else None

    await eventually(online, 10, "device marked online")


async def _status(admin, row_id, status):
    return (await admin.get("commands", row_id))["status"] == status
