"""SPEC §11 "Quotas", live: a tenant operator's hostile devices.config (a 0.01 s heartbeat,
exporters on the link-local metadata address and an internal admin page) is refused by a
running agent, while a legitimate change (a 7 s heartbeat, an exporter agent.yaml allows)
applies. Real PocketBase, NATS and HTTP servers; nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from agent import config as config_mod
from agent.app import AgentApp
from cairn_common.pocketbase import PocketBase
from tests.live import connect, enrolled_agent_site, eventually, uid

PROM = Path(__file__).resolve().parents[1] / "fixtures" / "exporters" / "node_exporter_linux.prom"
METADATA = "http://169.254.169.254/"


@dataclass
class Http:
    """A tiny real HTTP server on loopback that counts the requests it answers."""

    body: bytes
    hits: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> Http:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.hits.append(head.split(b" ", 2)[1].decode())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body)
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Site:
    app: AgentApp
    device: dict
    operator: PocketBase
    exporter: Http
    internal: Http
    beats: list[float]
    control: object


@pytest.fixture
async def site(bridge, admin, pb_env, nats_env, tmp_path) -> AsyncIterator[Site]:
    exporter = await Http(PROM.read_bytes()).start()
    internal = await Http(b"secret admin page").start()
    enrolled = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path)
    doc = yaml.safe_load(enrolled.config_path.read_text())
    doc["exporters_allowed"] = ["http://127.0.0.1:*/metrics"]  # the local owner's choice
    enrolled.config_path.write_text(yaml.safe_dump(doc))
    email, password = f"{uid('op')}@cairn.test", secrets.token_urlsafe(12)
    user = await admin.create("users", {"email": email, "password": password,
                                        "passwordConfirm": password, "verified": True})
    await admin.create("memberships", {"user": user["id"], "tenant": enrolled.tenant["id"],
                                       "role": "operator"})
    operator = PocketBase(pb_env.url)
    await operator.auth_with_password("users", email, password)
    app = AgentApp(config_mod.load(enrolled.config_path))
    await app.start()
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{enrolled.tenant["id"]}" && name = "cairn-bridge" '
                      '&& jwt != ""'))
    control = await connect(nats_env.url, svc["jwt"], svc["seed"])
    beats: list[float] = []

    async def on_beat(_msg) -> None:
        beats.append(time.monotonic())

    await control.subscribe(f"agents.{enrolled.device['code']}.heartbeat", cb=on_beat)
    # the bridge marks the device online on its first heartbeat; PocketBase saves whole rows,
    # so an operator's edit racing that write can be lost. Let it land first.
    await eventually(lambda: _online(admin, enrolled.device["id"]), 10, "device online")
    yield Site(app, enrolled.device, operator, exporter, internal, beats, control)
    await control.close()
    await app.stop()
    await operator.close()
    await exporter.stop()
    await internal.stop()


async def _online(admin: PocketBase, device_id: str) -> bool:
    return bool((await admin.get("devices", device_id)).get("online"))


async def _beats_after(beats: list[float], start: int, count: int, timeout: float) -> list:
    async def enough() -> bool:
        return len(beats) >= start + count
    await eventually(enough, timeout, f"{count} heartbeats")
    return beats[start:start + count]


async def _set_config(site: Site, config: dict) -> None:
    """Written by the tenant operator through PocketBase's API rules, as in the dashboard."""
    row = await site.operator.update("devices", site.device["id"], {"config": config})
    assert row["config"] == config


async def test_hostile_devices_config_is_refused_and_a_legit_one_applies(site, caplog):
    app, local = site.app, site.app.config
    internal_url = f"http://127.0.0.1:{site.internal.port}/admin"
    hostile = {"intervals": {"heartbeat": 0.01}, "exporters": [METADATA, internal_url],
               "exporters_allowed": ["*"], "commands": {"allowed": ["sh -c id"]}}
    await _set_config(site, hostile)
    with caplog.at_level(logging.WARNING):
        await app.refresh_desired()
    warned = " ".join(r.getMessage() for r in caplog.records) + " ".join(
        str(getattr(r, "error", "")) for r in caplog.records)
    assert "intervals.heartbeat 0.01 s is below the minimum of 5 s" in warned
    assert repr(METADATA) in warned and repr(internal_url) in warned
    assert "exporters_allowed in the device's agent.yaml" in warned
    assert app.config == local and app.ctx.config is app.config
    assert app.collector.exporters == local.exporters
    assert app.config.commands.allowed == local.commands.allowed
    # the running heartbeat keeps its local 1 s pace, it does not flood at 0.01 s
    first, second = await _beats_after(site.beats, len(site.beats), 2, 5)
    assert second - first > 0.5
    await app.publish_system()
    assert site.internal.hits == [], "the agent fetched a URL devices.config may not set"

    # all or nothing: a legitimate heartbeat next to a hostile exporter is refused too
    await _set_config(site, {"intervals": {"heartbeat": 7}, "exporters": [METADATA]})
    await app.refresh_desired()
    assert app.config == local

    legit_url = f"http://127.0.0.1:{site.exporter.port}/metrics"
    await _set_config(site, {"intervals": {"heartbeat": 7}, "exporters": [legit_url]})
    await app.refresh_desired()
    assert app.config.intervals.heartbeat == 7.0
    assert app.config.exporters == app.collector.exporters == (legit_url,)
    assert app.config.exporters_allowed == ("http://127.0.0.1:*/metrics",)
    js = site.control.jetstream()
    await app.publish_system()
    msg = await js.get_last_msg("TELEMETRY", f"agents.{site.device['code']}.telemetry.system")
    assert json.loads(msg.data)["source"] == "node_exporter"
    assert site.exporter.hits and set(site.exporter.hits) == {"/metrics"}
    assert site.internal.hits == []
    # the restarted heartbeat task runs at the new 7 s pace
    first, second = await _beats_after(site.beats, len(site.beats), 2, 15)
    assert second - first > 6


async def test_toggling_desired_intervals_never_runs_a_job_more_often(site):
    """An operator flipping devices.config back and forth restarts only the job whose
    interval changed, and that job keeps its phase: the hourly inventory is not re-run at
    every flip, and the heartbeat does not fire at every flip either."""
    app = site.app
    await eventually(lambda: _ran(app, "inventory"), 10, "the first inventory")
    inventory_at = app.last_run["inventory"]
    first_beats = len(site.beats)
    for n in range(6):
        await _set_config(site, {"intervals": {"heartbeat": 30 + n % 2}})
        await app.refresh_desired()
    assert app.jobs["heartbeat"][0] in (30.0, 31.0)  # control: the change did apply
    assert app.last_run["inventory"] == inventory_at, "a flip re-ran the inventory"
    assert len(site.beats) - first_beats <= 2, "each flip fired a heartbeat"


async def _ran(app, name: str) -> bool:
    return name in app.last_run
