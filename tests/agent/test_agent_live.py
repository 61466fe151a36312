"""The agent against the real stack: enrollment, commands over NATS, telemetry, reconnect,
rotation, renewal and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys

import nats
import pytest

from agent import config as config_mod
from agent.app import AgentApp
from agent.enrollment import EnrollRequest, enroll
from cairn_common import creds, natsjwt, nkey
from tests.live import (
    DEVICE_PASSWORD,
    connect,
    enrolled_agent_site,
    eventually,
)


class Fleet:
    """One enrolled, running agent and a control connection in the same tenant."""

    def __init__(self, tenant, device, directory, app, control):
        self.tenant, self.device, self.directory = tenant, device, directory
        self.app, self.control = app, control

    async def request(self, command: str, payload: object = None, raw: bytes | None = None,
                      timeout: float = 10) -> dict:
        data = raw if raw is not None else json.dumps(payload or {}).encode()
        msg = await self.control.request(f"agents.{self.device['code']}.cmd.{command}", data,
                                         timeout=timeout)
        return json.loads(msg.data)


@pytest.fixture(scope="module")
async def fleet(bridge, admin, pb_env, nats_env, tmp_path_factory):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url,
                                     tmp_path_factory.mktemp("agent"))
    tenant, device, directory = site.tenant, site.device, site.directory
    app = AgentApp(config_mod.load(site.config_path))
    await app.start()
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    control = await connect(nats_env.url, svc["jwt"], svc["seed"], allow_reconnect=True,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield Fleet(tenant, device, directory, app, control)
    await control.close()
    await app.stop()


async def test_enrollment_writes_private_files_and_never_ships_the_seed(fleet, admin):
    directory = fleet.directory
    for name in ("agent.nk", "agent.creds", "agent.secret"):  # agent.yaml here is ours
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    jwt, seed = creds.read(directory / "agent.creds")
    assert natsjwt.decode(jwt)["sub"] == nkey.from_seed(seed, "user").public_key.decode()
    row = await admin.get("devices", fleet.device["id"])
    assert row["hostname"] and row["os"] and row["agent_version"]
    for collection in ("devices", "nats_accounts", "nats_users", "audit_log", "tenants"):
        assert seed not in json.dumps(await admin.list(collection)), collection


async def test_enroll_again_is_safe(fleet, pb_env, nats_env):
    before = (fleet.directory / "agent.nk").read_text()
    config_before = (fleet.directory / "agent.yaml").read_text()
    await enroll(EnrollRequest(server=pb_env.url, code=fleet.device["code"],
                               directory=fleet.directory, nats_urls=(nats_env.url,),
                               secret=DEVICE_PASSWORD))
    assert (fleet.directory / "agent.nk").read_text() == before
    assert (fleet.directory / "agent.yaml").read_text() == config_before


async def test_ping_health_inventory(fleet):
    pong = await fleet.request("ping")
    assert pong["status"] == "pong" and pong["timestamp"].endswith("Z")
    health = await fleet.request("health")
    assert health["status"] in ("healthy", "degraded")
    assert health["nats"]["connected"] is True
    assert set(health) >= {"agent", "nats", "tasks", "commands", "os"}
    assert health["agent"]["memory_mb"] > 0
    inventory = await fleet.request("inventory")
    assert inventory["status"] == "success" and inventory["hostname"]


async def test_exec_logs_and_errors_over_the_bus(fleet):
    ok = await fleet.request("exec", {"command": "echo hello"})
    assert ok["status"] == "success" and ok["output"].strip() == "hello"
    facts = await fleet.request("exec", {"command": "facts.py"})
    assert facts["output"] == {"answer": 42}
    refused = await fleet.request("exec", {"command": "rm -rf /"})
    assert refused["status"] == "error" and refused["error"]
    tail = await fleet.request("logs", {"log_path": str(fleet.directory / "app.log"),
                                        "lines": 3})
    assert tail["lines"] == ["line 497", "line 498", "line 499"]


@pytest.mark.parametrize(
    ("command", "raw", "expected"),
    [
        ("ping", b"not json", "not valid JSON"),
        ("ping", b"[1, 2]", "must be a JSON object"),
        ("ping", b'{"x": 1}', "unknown field 'x'"),
        ("nope", b"{}", "unknown command 'nope'"),
        ("exec", b'{"command": 5}', "must be a string"),
        ("ping", b"{" + b" " * 300_000 + b"}", "request too large"),
    ],
)
async def test_malformed_requests_get_clear_errors(fleet, command, raw, expected):
    reply = await fleet.request(command, raw=raw)
    assert reply["status"] == "error" and expected in reply["error"]
    assert reply["timestamp"]


async def test_ping_is_answered_while_exec_sleeps(fleet):
    order: list[str] = []

    async def run(command, payload, label):
        await fleet.request(command, payload, timeout=15)
        order.append(label)

    slow = asyncio.create_task(run("exec", {"command": "nap.sh", "args": ["2"]}, "exec"))
    await asyncio.sleep(0.2)
    await run("ping", {}, "ping")
    await slow
    assert order == ["ping", "exec"]


async def test_heartbeat_and_system_telemetry(fleet):
    beats: list = []

    async def on_beat(msg):
        beats.append(json.loads(msg.data))

    await fleet.control.subscribe(f"agents.{fleet.device['code']}.heartbeat", cb=on_beat)
    await eventually(lambda: _truthy(beats), 5, "a heartbeat")
    assert beats[0]["timestamp"] and beats[0]["device"] == fleet.device["code"]
    js = fleet.control.jetstream()
    before = (await js.stream_info("TELEMETRY")).state.messages
    await fleet.app.publish_system()
    await eventually(lambda: _stream_has(js, before + 1), 5)
    msg = await js.get_last_msg("TELEMETRY", f"agents.{fleet.device['code']}.telemetry.system")
    doc = json.loads(msg.data)
    assert doc["source"] == "builtin" and 0 <= doc["cpu_percent"] <= 100


async def test_telemetry_is_buffered_across_a_nats_outage(fleet, nats_env):
    js_before = await fleet.control.jetstream().stream_info("TELEMETRY")
    nats_env.stop()
    try:
        await eventually(lambda: _disconnected(fleet.app), 10, "agent sees the outage")
        await fleet.app.publish_system()
        assert len(fleet.app.telemetry.buffer) >= 1
    finally:
        nats_env.start()
    await eventually(lambda: _connected(fleet.app), 20, "agent reconnected")
    await fleet.app.telemetry.flush()
    assert len(fleet.app.telemetry.buffer) == 0
    await eventually(lambda: _connected_nc(fleet.control), 20, "control reconnected")
    after = await fleet.control.jetstream().stream_info("TELEMETRY")
    assert after.state.messages >= js_before.state.messages + 1
    assert (await fleet.request("ping"))["status"] == "pong"


async def test_rotate_creds_switches_key_without_losing_the_reply(fleet, admin, nats_env):
    old_jwt, old_seed = creds.read(fleet.directory / "agent.creds")
    reply = await fleet.request("rotate_creds")
    assert reply["status"] == "success"
    new_key = reply["new_public_key"]
    await eventually(lambda: _row_key(admin, fleet.device["id"], new_key), 10)

    async def answers():
        try:
            return (await fleet.request("ping", timeout=1))["status"] == "pong"
        except (nats.errors.Error, TimeoutError):  # still switching connections
            return False

    await eventually(answers, 15, "ping answered on the new key")
    jwt, _ = creds.read(fleet.directory / "agent.creds")
    assert natsjwt.decode(jwt)["sub"] == new_key
    errors: list = []
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the error list says which
        await connect(nats_env.url, old_jwt, old_seed, errors=errors)


async def test_sigterm_drains_inflight_commands(fleet, pb_env, nats_env, tmp_path):
    env = {**os.environ}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(fleet.directory / "agent.yaml"),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        # the in-process agent and this one share the device (and its command queue
        # group): the in-process one leaves the queue, the subprocess must be up
        await fleet.app.dispatcher.unsubscribe()

        async def subprocess_answers() -> bool:
            try:
                return (await fleet.request("ping", timeout=1))["status"] == "pong"
            except (nats.errors.Error, TimeoutError):
                return False

        await eventually(subprocess_answers, 20, "the subprocess agent answers")
        pending = asyncio.create_task(fleet.request("exec", {"command": "nap.sh",
                                                             "args": ["2"]}, timeout=15))
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        reply = await pending
        assert reply["status"] == "success" and reply["output"].strip() == "slept"
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await fleet.app.link.replace("test: rejoin the command queue")


async def _truthy(bucket):
    return bool(bucket)


async def _stream_has(js, n):
    return (await js.stream_info("TELEMETRY")).state.messages >= n


async def _disconnected(app):
    return not app.link.connected


async def _connected(app):
    return app.link.connected


async def _connected_nc(nc):
    return nc.is_connected


async def _row_key(admin, device_id, key):
    return (await admin.get("devices", device_id))["nats_public_key"] == key


async def test_desired_config_from_pocketbase(fleet, admin):
    await admin.update("devices", fleet.device["id"], {"config": {
        "intervals": {"heartbeat": 7}, "commands": {"allowed": ["rm -rf /"]}}})
    try:
        await fleet.app.refresh_desired()
        assert fleet.app.config.intervals.heartbeat == 7.0
        assert fleet.app.config.commands.allowed == ("true", "echo hello")
        assert fleet.app.ctx.config is fleet.app.config
        reply = await fleet.request("exec", {"command": "rm -rf /"})
        assert reply["status"] == "error"
    finally:
        await admin.update("devices", fleet.device["id"], {"config": None})


async def test_service_telemetry(fleet):
    js = fleet.control.jetstream()
    app = fleet.app
    app.config = app.ctx.config = config_mod.from_dict(
        {**config_mod.to_dict(app.config), "services": {"allowed": [], "watch": ["cron"]}},
        base_dir=app.config.base_dir)
    await app.publish_services()
    msg = await js.get_last_msg("TELEMETRY", f"agents.{fleet.device['code']}.telemetry.service")
    doc = json.loads(msg.data)
    assert doc["services"][0]["name"] == "cron"
    assert doc["services"][0]["status"] in {"running", "stopped", "failed", "unknown",
                                            "not-found"}
    assert doc["timestamp"]
