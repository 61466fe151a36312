"""Bridge failover: two `cairn-bridge run` processes, the leader killed -9, devices disabled
right after. Measured: how long until the standby leads, and until every disabled
device's connection is closed. Baseline in the same run: the same number of disables with
a healthy leader (revocation latency), so the failover cost is a ratio.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from typing import Any

import nats

from agent.credentials import register_key
from bench.bridges import BridgeProcess
from bench.stack import machine, provisioned_tenant, start
from cairn_common import nkey
from cairn_common.filemodes import write_private
from cairn_common.natsauth import connect_options, device_inbox

DEVICES = 10  # disabled in each phase
ROUNDS = 3


async def _device(admin: Any, tenant: dict, pb_url: str, nats_url: str,
                  closed: dict[str, float]) -> tuple[str, Any]:
    code, password = f"f-{secrets.token_hex(5)}", secrets.token_urlsafe(18)
    row = await admin.create("devices", {"tenant": tenant["id"], "code": code,
                                         "password": password, "passwordConfirm": password})
    user = nkey.create("user")
    issued = await register_key(pb_url, row["login"], password, user.public_key.decode())

    async def on_closed() -> None:
        closed[code] = time.monotonic()

    async def on_error(exc: Exception) -> None:
        pass

    creds = (issued.jwt, user.seed.decode())
    nc = await nats.connect(nats_url, allow_reconnect=False, closed_cb=on_closed,
                            error_cb=on_error, inbox_prefix=device_inbox(code),
                            **connect_options(lambda: creds))
    return row["id"], nc


async def _disable_all(admin: Any, ids: list[str]) -> float:
    began = time.monotonic()
    await asyncio.gather(*(admin.update("devices", i, {"status": "disabled"}) for i in ids))
    return began


async def _all_closed(closed: dict[str, float], codes: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(c in closed for c in codes):
        await asyncio.sleep(0.02)


async def run() -> dict[str, Any]:
    stack = start(with_bridge=False)
    layout = stack.layout
    login = layout.secrets_dir / "failover-login.json"
    write_private(login, json.dumps({"email": stack.admin.email,
                                     "password": stack.admin.password}))
    pb_url, nats_url = stack.settings.pb_url, f"nats://127.0.0.1:{stack.settings.nats_port}"
    bridges: list[BridgeProcess] = []
    result: dict[str, Any] = {"machine": machine(), "devices": DEVICES, "rounds": ROUNDS,
                              "takeover_s": [], "failover_revoke_s": [], "baseline_ms": []}
    admin = await stack.admin_client()
    # every simulated device logs in from 127.0.0.1 (this stack is thrown away after)
    await admin.update_settings({"rateLimits": {"enabled": False}})
    try:
        leader = BridgeProcess("bridge-0", layout, pb_url, nats_url, login)
        bridges.append(leader)
        await leader.until("cairn_bridge_leader", 1, 120)
        for rnd in range(ROUNDS):
            standby = BridgeProcess(f"bridge-{rnd + 1}", layout, pb_url, nats_url, login)
            bridges.append(standby)
            await standby.until("cairn_bridge_leader", 0, 120)
            await leader.until("cairn_bridge_reconciliations_total", 1, 120)
            tenant = await provisioned_tenant(admin, f"fo-{secrets.token_hex(4)}")
            closed: dict[str, float] = {}
            devices = [await _device(admin, tenant, pb_url, nats_url, closed)
                       for _ in range(2 * DEVICES)]
            codes = {i: nc for i, nc in devices}
            rows = {r["id"]: r["code"] for r in await admin.list(
                "devices", filter=f'tenant = "{tenant["id"]}"', fields="id,code")}
            base, drill = list(codes)[:DEVICES], list(codes)[DEVICES:]
            began = await _disable_all(admin, base)  # baseline: a healthy leader
            await _all_closed(closed, [rows[i] for i in base], 30)
            result["baseline_ms"] += [(closed[rows[i]] - began) * 1000 for i in base]
            leader.proc.kill()
            killed = time.monotonic()
            await _disable_all(admin, drill)
            result["takeover_s"].append(await standby.until("cairn_bridge_leader", 1, 60))
            await _all_closed(closed, [rows[i] for i in drill], 60)
            missing = [rows[i] for i in drill if rows[i] not in closed]
            if missing:
                raise AssertionError(f"round {rnd}: {len(missing)} revocations never applied")
            result["failover_revoke_s"].append(
                max(closed[rows[i]] for i in drill) - killed)
            for nc in codes.values():
                if not nc.is_closed:
                    await nc.close()
            leader = standby
    finally:
        await admin.close()
        for b in bridges:
            b.proc.stop()
        stack.stop()
    return result


def report(r: dict[str, Any]) -> str:
    base = statistics.median(r["baseline_ms"])
    worst = max(r["failover_revoke_s"])
    return (
        f"machine: {r['machine']}; {r['rounds']} rounds, {r['devices']} disables each\n"
        f"leader killed -> standby leads: "
        f"{', '.join(f'{t:.1f}' for t in r['takeover_s'])} s (target < 10 s)\n"
        f"disables made right after the kill, all applied; last connection closed "
        f"{', '.join(f'{t:.1f}' for t in r['failover_revoke_s'])} s after the kill\n"
        f"baseline (healthy leader) revocation p50 {base:.0f} ms; "
        f"failover worst / baseline p50 = {worst * 1000 / base:.0f}x"
    )


if __name__ == "__main__":
    print(report(asyncio.run(run())))
