"""What one sidecar's key change costs as other sidecars accumulate.
`python -m bench sidecar-rollout`.

A sidecar (a router) registers a key; the bridge issues it a JWT in every active tenant.
Measured on a private stack of TENANTS tenants: the time from the key change until every
tenant's row carries a JWT for the new key, first with no other sidecar (the baseline),
then again with OTHERS more sidecars registered. The ratio should stay near 1: a key
change re-issues that sidecar's row in each tenant, not every service user of each.

And what a rollout costs everyone else: the time a new tenant waits for its NATS account
while a rollout is under way, against the same on an idle bridge.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from bench.stack import machine, provisioned_tenant, start
from cairn_common import natsjwt, nkey
from cairn_common.pocketbase import PocketBase

TENANTS = 200
OTHERS = 6
SAMPLES = 3


async def _register(admin: PocketBase, name: str) -> dict:
    password = secrets.token_urlsafe(16)
    return await admin.create("sidecars", {"name": name, "kind": "router",
                                           "password": password,
                                           "passwordConfirm": password})


async def _rollout(admin: PocketBase, sidecar: dict, tenants: int) -> float:
    """Seconds from a new key until all `tenants` rows carry a JWT for it."""
    key = nkey.create("user").public_key.decode()
    start = time.perf_counter()
    await admin.update("sidecars", sidecar["id"], {"nats_public_key": key})
    while True:
        rows = await admin.list("nats_users", filter=f'name = "{sidecar["name"]}"',
                                fields="id,jwt")
        done = sum(1 for r in rows if r.get("jwt") and natsjwt.decode(r["jwt"])["sub"] == key)
        if done >= tenants:
            return time.perf_counter() - start
        await asyncio.sleep(0.2)


async def _provisioning(admin: PocketBase, slug: str) -> float:
    start = time.perf_counter()
    await provisioned_tenant(admin, slug)
    return time.perf_counter() - start


async def _provisioning_during_rollout(admin: PocketBase, sidecar: dict, tenants: int,
                                       slug: str) -> float:
    rollout = asyncio.create_task(_rollout(admin, sidecar, tenants))
    await asyncio.sleep(0.3)  # the key change is in and its rollout has begun
    waited = await _provisioning(admin, slug)
    await rollout
    return waited


async def run() -> dict:
    stack = start()
    try:
        admin = await stack.admin_client()
        for i in range(TENANTS):
            await provisioned_tenant(admin, f"roll-{i:04d}")
        probe = await _register(admin, "cairn-router-probe")
        alone = [await _rollout(admin, probe, TENANTS) for _ in range(SAMPLES)]
        for i in range(OTHERS):
            await _rollout(admin, await _register(admin, f"cairn-router-o{i}"), TENANTS)
        crowded = [await _rollout(admin, probe, TENANTS) for _ in range(SAMPLES)]
        idle = [await _provisioning(admin, f"idle-{i}") for i in range(SAMPLES)]
        busy = [await _provisioning_during_rollout(admin, probe, TENANTS + SAMPLES + i,
                                                   f"busy-{i}") for i in range(SAMPLES)]
        await admin.close()
    finally:
        stack.stop()
    return {"machine": machine(), "tenants": TENANTS, "other_sidecars": OTHERS,
            "alone_s": sorted(alone), "crowded_s": sorted(crowded),
            "new_tenant_idle_s": sorted(idle), "new_tenant_during_rollout_s": sorted(busy)}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report(result: dict) -> str:
    alone, crowded = _median(result["alone_s"]), _median(result["crowded_s"])
    idle = _median(result["new_tenant_idle_s"])
    busy = _median(result["new_tenant_during_rollout_s"])
    return "\n".join([
        f"machine: {result['machine']}",
        f"one sidecar key change, {result['tenants']} tenants (median of {SAMPLES})",
        f"  no other sidecar (baseline): {alone:.2f} s "
        f"({alone / result['tenants'] * 1000:.1f} ms per tenant)",
        f"  {result['other_sidecars']} other sidecars: {crowded:.2f} s "
        f"= {crowded / alone:.2f}x the baseline",
        f"a new tenant's account: idle bridge (baseline) {idle * 1000:.0f} ms, "
        f"during a rollout {busy * 1000:.0f} ms = {busy / idle:.1f}x",
    ])
