"""A device whose first probe after coming online finds nobody (its heartbeat came before
its command subscription answered) must not have that command left behind: the next row's
successful probe sends the queue again in creation order. Seen in bench/dispatch_bench.py
with 100 agents starting at once: a few first rows stayed `queued` for good."""

from __future__ import annotations

import json

from agent.context import Stats
from agent.telemetry import heartbeat_doc
from cairn_common.natsauth import device_inbox
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant


async def _rows(admin, ids):
    return [await admin.get("commands", i) for i in ids]


async def test_a_row_whose_probe_missed_the_agent_is_not_left_behind(bridge, admin, pb_env,
                                                                     nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = enrolled.device["code"]
    rows = [await admin.create("commands", {"tenant": tenant["id"],
                                            "device": enrolled.device["id"],
                                            "command": "ping", "payload": {}})
            for _ in range(2)]
    ids = [r["id"] for r in rows]

    async def queued():
        return all(r["status"] == "queued" for r in await _rows(admin, ids))

    await eventually(queued, 15, "both rows probed and found offline")

    seen: list[str] = []
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed,
                       inbox_prefix=device_inbox(code))
    try:
        async def answer(msg):
            seen.append(msg.subject)
            if len(seen) == 1:
                return  # the first probe after coming online: not answering yet
            await msg.respond(json.dumps({"status": "pong",
                                          "timestamp": "2026-12-02T00:00:00Z"}).encode())

        await nc.subscribe(f"agents.{code}.cmd.>", cb=answer)
        await nc.publish(f"agents.{code}.heartbeat",
                         json.dumps(heartbeat_doc(code, Stats())).encode())

        async def finished():
            done = await _rows(admin, ids)
            return done if all(r["status"] == "succeeded" for r in done) else None

        done = await eventually(finished, 20, "both rows succeeded")
    finally:
        await nc.close()
    assert len(seen) >= 4, seen  # the missed probe, then a probe and a send per row
    assert done[0]["completed_at"] <= done[1]["completed_at"], "creation order"
    claims = await admin.list("audit_log", filter='action = "command.sent" && (' + " || ".join(
        f'target = "commands/{i}"' for i in ids) + ")")
    assert len(claims) == 2  # each sent once
