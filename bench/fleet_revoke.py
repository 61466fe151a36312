"""Revocation latency, measured from outside: devices enrolled and connected next to the
simulated fleet, disabled one at a time; the time from the disable's request until the
server closes the device's connection. Run once at rest and once while the fleet
heartbeats: SPEC §12 wants revocation p99 under 1 s with 20,000 agents beating."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import nats

from agent.credentials import register_key
from bench.stack import percentile
from cairn_common import nkey
from cairn_common.natsauth import connect_options, device_inbox
from cairn_common.pocketbase import PocketBase

CLOSE_TIMEOUT = 30.0


async def _probe(admin: PocketBase, tenant: dict[str, Any], pb_url: str,
                 servers: tuple[str, ...]) -> tuple[str, Any, asyncio.Event]:
    code, password = f"rv-{secrets.token_hex(5)}", secrets.token_urlsafe(18)
    row = await admin.create("devices", {"tenant": tenant["id"], "code": code,
                                         "password": password, "passwordConfirm": password})
    user = nkey.create("user")
    issued = await register_key(pb_url, code, password, user.public_key.decode())
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    async def on_error(exc: Exception) -> None:
        pass

    held = (issued.jwt, user.seed.decode())
    nc = await nats.connect(servers=list(servers), allow_reconnect=False,
                            closed_cb=on_closed, error_cb=on_error,
                            inbox_prefix=device_inbox(code), **connect_options(lambda: held))
    return row["id"], nc, closed


Probe = tuple[str, Any, asyncio.Event]


async def enroll_probes(admin: PocketBase, tenant: dict[str, Any], pb_url: str,
                        servers: tuple[str, ...], samples: int) -> list[Probe]:
    """Enrolled and connected devices to disable later (their logins happen now, not in
    a window whose password logins are being counted)."""
    return [await _probe(admin, tenant, pb_url, servers) for _ in range(samples)]


async def revocation_latency(admin: PocketBase, tenant: dict[str, Any], pb_url: str,
                             servers: tuple[str, ...], samples: int = 20,
                             gap: float = 0.5) -> dict[str, Any]:
    """p50/p99/max in ms over `samples` disables, `gap` seconds apart."""
    return await time_revocations(
        admin, await enroll_probes(admin, tenant, pb_url, servers, samples), gap)


async def time_revocations(admin: PocketBase, probes: list[Probe],
                           gap: float = 0.5) -> dict[str, Any]:
    samples = len(probes)
    took: list[float] = []
    missed = 0
    for row_id, nc, closed in probes:
        began = time.perf_counter()
        await admin.update("devices", row_id, {"status": "disabled"})
        try:
            await asyncio.wait_for(closed.wait(), CLOSE_TIMEOUT)
            took.append((time.perf_counter() - began) * 1000)
        except TimeoutError:
            missed += 1
            await nc.close()
        await asyncio.sleep(gap)
    return {"samples": samples, "missed": missed,
            "p50_ms": round(percentile(took, 50), 1) if took else None,
            "p99_ms": round(percentile(took, 99), 1) if took else None,
            "max_ms": round(max(took), 1) if took else None}
