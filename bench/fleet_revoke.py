"""Revocation latency, measured from outside: devices enrolled and connected next to the
simulated fleet, then disabled; the time from the disable's request until the server
closes the device's connection, and afterwards a check that its credentials are refused
(a kick alone would close it too; only the revocation keeps it out). Run at rest and
while the fleet heartbeats: SPEC §12 wants revocation p99 under 1 s with 20,000 agents.

Two shapes: one disable at a time (`GAP` apart, each timed on its own) and a burst (all
at once: what a tenant sees when someone disables a batch).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import nats

from agent.credentials import register_key
from bench.stack import percentile
from cairn_common import nkey
from cairn_common.natsauth import connect_options, device_inbox
from cairn_common.pocketbase import PocketBase

CLOSE_TIMEOUT = 30.0
GAP = 2.0  # seconds between timed disables: longer than nats-server's walk of the account


@dataclass
class Probe:
    row_id: str
    code: str
    held: tuple[str, str]  # (jwt, seed)
    servers: tuple[str, ...]
    nc: Any = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def _quiet(exc: Exception) -> None:
    pass


async def _probe(admin: PocketBase, tenant: dict[str, Any], pb_url: str,
                 servers: tuple[str, ...]) -> Probe:
    code, password = f"rv-{secrets.token_hex(5)}", secrets.token_urlsafe(18)
    row = await admin.create("devices", {"tenant": tenant["id"], "code": code,
                                         "password": password, "passwordConfirm": password})
    user = nkey.create("user")
    issued = await register_key(pb_url, row["login"], password, user.public_key.decode())
    probe = Probe(row["id"], code, (issued.jwt, user.seed.decode()), servers)

    async def on_closed() -> None:
        probe.closed.set()

    probe.nc = await nats.connect(servers=list(servers), allow_reconnect=False,
                                  closed_cb=on_closed, error_cb=_quiet,
                                  inbox_prefix=device_inbox(code),
                                  **connect_options(lambda: probe.held))
    return probe


async def enroll_probes(admin: PocketBase, tenant: dict[str, Any], pb_url: str,
                        servers: tuple[str, ...], samples: int) -> list[Probe]:
    """Enrolled and connected devices to disable later (their logins happen now, not in
    a window whose password logins are being counted)."""
    return [await _probe(admin, tenant, pb_url, servers) for _ in range(samples)]


async def revocation_latency(admin: PocketBase, tenant: dict[str, Any], pb_url: str,
                             servers: tuple[str, ...], samples: int = 20,
                             gap: float = GAP) -> dict[str, Any]:
    """p50/p99/max in ms over `samples` disables, `gap` seconds apart."""
    return await time_revocations(
        admin, await enroll_probes(admin, tenant, pb_url, servers, samples), gap)


async def _disable(admin: PocketBase, probe: Probe, took: list[float]) -> bool:
    """Disable, wait for the close; False when it never came."""
    began = time.perf_counter()
    await admin.update("devices", probe.row_id, {"status": "disabled"})
    try:
        await asyncio.wait_for(probe.closed.wait(), CLOSE_TIMEOUT)
    except TimeoutError:
        await probe.nc.close()
        return False
    took.append((time.perf_counter() - began) * 1000)
    return True


async def _still_accepted(probe: Probe) -> bool:
    """Can the disabled device's credentials connect again? (Must be: no.)"""
    try:
        nc = await nats.connect(servers=list(probe.servers), allow_reconnect=False,
                                connect_timeout=5, error_cb=_quiet,
                                inbox_prefix=device_inbox(probe.code),
                                **connect_options(lambda: probe.held))
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


async def time_revocations(admin: PocketBase, probes: list[Probe],
                           gap: float = GAP) -> dict[str, Any]:
    """One disable at a time, `gap` seconds apart."""
    took: list[float] = []
    missed = 0
    for probe in probes:
        missed += not await _disable(admin, probe, took)
        await asyncio.sleep(gap)
    return await _figures(probes, missed, took)


async def time_burst(admin: PocketBase, probes: list[Probe]) -> dict[str, Any]:
    """Every probe disabled at once. The pushes coalesce, but a revocation that arrives
    while nats-server is still walking the account for the previous push waits for that
    walk (pb_hooks_bridge/kicker.py): the worst case of a busy tenant."""
    took: list[float] = []
    done = await asyncio.gather(*(_disable(admin, p, took) for p in probes))
    return await _figures(probes, sum(not ok for ok in done), took)


async def _figures(probes: list[Probe], missed: int, took: list[float]) -> dict[str, Any]:
    accepted = sum(await asyncio.gather(*(_still_accepted(p) for p in probes)))
    return {"samples": len(probes), "missed": missed, "still_accepted_after": accepted,
            "p50_ms": round(percentile(took, 50), 1) if took else None,
            "p99_ms": round(percentile(took, 99), 1) if took else None,
            "max_ms": round(max(took), 1) if took else None}
