"""A router process killed with SIGKILL mid-stream loses nothing: whatever it had fetched
but not acked comes back to the next router (after the consumer's ack wait)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from cairn_stack.processes import ManagedProcess
from tests.live import account_ready, connect, eventually, new_tenant, uid

RULE = ('subject: "agents.*.telemetry.crash"\n'
        'actions:\n  - publish: "alerts.crash"\n    payload: \'{"n": {n}}\'\n')
MESSAGES = 300


def _router(pb_env, nats_env, directory: Path, name: str, identity) -> ManagedProcess:
    proc = ManagedProcess(
        name=name, argv=[sys.executable, "-m", "rule_router", "run"],
        log_path=directory / f"{name}.log",
        env={"CAIRN_DATA_DIR": str(directory), "CAIRN_PB_URL": pb_env.url,
             "CAIRN_NATS_URL": nats_env.url,
             "CAIRN_ROUTER_LOGIN_FILE": str(identity.files.login_file),
             "CAIRN_ROUTER_SEED_FILE": str(identity.files.seed_file)})
    proc.start()
    return proc


async def test_sigkill_mid_stream_then_restart_processes_every_message(
        bridge, router_identity, admin, pb_env, nats_env, tmp_path):
    tenant = await account_ready(admin, await new_tenant(admin))
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && jwt != ""'), 10)
    row = await admin.create("rules", {"tenant": tenant["id"], "name": uid("crash"),
                                       "enabled": True, "yaml": RULE})
    nc = await connect(nats_env.url, svc["jwt"], svc["seed"], allow_reconnect=True)
    seen: set[int] = set()
    count = 0

    async def on_alert(msg) -> None:
        nonlocal count
        seen.add(json.loads(msg.data)["n"])
        count += 1

    await nc.subscribe("alerts.crash", cb=on_alert)
    js = nc.jetstream()
    first = _router(pb_env, nats_env, tmp_path, "router-1", router_identity)
    second = None
    try:
        async def routing() -> bool:  # a probe until the router has the tenant and rule
            await js.publish("agents.probe.telemetry.crash", b'{"n": -1}')
            await asyncio.sleep(0.2)
            return -1 in seen

        await eventually(routing, 30, "the first router fires the rule")
        for n in range(MESSAGES):
            await js.publish("agents.d1.telemetry.crash", json.dumps({"n": n}).encode())
            if n == MESSAGES // 3:
                await eventually(lambda: _at_least(seen, 20), 10, "some alerts")
                first.proc.kill()  # SIGKILL: no drain, no nak, nothing flushed
                first.proc.wait()
        assert first.proc.returncode == -9
        assert not set(range(MESSAGES)) <= seen  # it really died mid-stream
        second = _router(pb_env, nats_env, tmp_path, "router-2", router_identity)

        async def complete() -> bool:
            return set(range(MESSAGES)) <= seen

        # what router-1 had fetched but not acked returns after the ack wait (30 s)
        await eventually(complete, 90, "every message processed at least once")
        assert count >= MESSAGES
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.stop()
        await admin.update("rules", row["id"], {"enabled": False})
        await nc.close()


async def _at_least(seen: set[int], n: int) -> bool:
    return len(seen) >= n
