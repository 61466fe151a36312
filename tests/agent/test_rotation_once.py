"""Exactly one connection per agent after a key rotation, and every command run once.

Before the supervised link, the revoked old connection's close could wake the reconnect
supervisor after `replace()` had opened the new one: two connections, two subscriptions on
`agents.<code>.cmd.*`, every command run twice. The server's own view (/connz) is the judge.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import nats

from agent import config as config_mod
from agent.app import AgentApp
from tests.live import connect, enrolled_agent_site, eventually


async def agent_connections(nats_env, code: str) -> list[dict]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{nats_env.monitor_url}/connz",
                              params={"subs": "detail", "limit": 10000})
    return [c for c in resp.json().get("connections") or []
            if c.get("name") == f"cairn-agent/{code}"]


async def test_after_rotation_one_connection_and_each_command_runs_once(
        bridge, admin, pb_env, nats_env, tmp_path):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path)
    code = site.device["code"]
    app = AgentApp(config_mod.load(site.config_path))
    await app.start()
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{site.tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    control = await connect(nats_env.url, svc["jwt"], svc["seed"])
    try:
        async def request(command: str, payload: dict, timeout: float = 10) -> dict:
            msg = await control.request(f"agents.{code}.cmd.{command}",
                                        json.dumps(payload).encode(), timeout=timeout)
            return json.loads(msg.data)

        old_key = (await admin.get("devices", site.device["id"]))["nats_public_key"]
        for _ in range(3):  # each rotation is a chance for the race
            reply = await request("rotate_creds", {})
            assert reply["status"] == "success", reply

            async def rotated(key=reply["new_public_key"]) -> bool:
                conns = await agent_connections(nats_env, code)
                if len(conns) != 1 or not app.link.connected:
                    return False
                try:
                    pong = await request("ping", {}, timeout=1)
                except (nats.errors.Error, TimeoutError):
                    return False
                row = await admin.get("devices", site.device["id"])
                return pong.get("status") == "pong" and row["nats_public_key"] == key

            await eventually(rotated, 20, "answering on the new key, one connection")
        assert (await admin.get("devices", site.device["id"]))["nats_public_key"] != old_key

        conns = await agent_connections(nats_env, code)
        assert len(conns) == 1, conns
        command_subs = [s for s in conns[0].get("subscriptions_list_detail") or []
                        if s["subject"].startswith(f"agents.{code}.cmd.")]
        assert len(command_subs) == 1, command_subs

        ran = tmp_path / "ran.txt"
        for i in range(100):
            reply = await request("exec", {"command": "canary.sh", "args": [str(ran)]})
            assert reply["status"] == "success", (i, reply)
        await asyncio.sleep(0.5)  # a second copy of a command would land within this
        assert ran.read_text().count("ran\n") == 100
        assert len(await agent_connections(nats_env, code)) == 1
    finally:
        await control.close()
        await app.stop()
