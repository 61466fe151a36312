"""Bulk issuance: N devices with public keys in one tenant -> all active.

PocketBase hashes each device password with bcrypt (about 13 rows/s on this 2-core
machine), which would measure PocketBase rather than the bridge. So the device rows are
seeded straight into PocketBase's SQLite file (all sharing one bcrypt hash made by
PocketBase itself) while it is stopped; then, with the bridge running, every device's
public key is written through the REST API (the enrollment step) and we time until all
are active. Baseline in the same run: how fast PocketBase accepts those key writes alone
(bridge stopped), since the bridge cannot issue faster than its input arrives.
Also reported: the reconciliation path (bridge started with N keys already written).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import sys
import time
from typing import Any

from bench.stack import BenchStack, machine, provisioned_tenant, rss_peak_mb, start
from cairn_common import nkey
from cairn_common.pocketbase import PocketBase
from cairn_stack.pocketbase import start_pocketbase

PASSWORD = "bench-enroll-123"
WRITERS = 8


async def count_active(admin: PocketBase, prefix: str) -> int:
    body = await admin._send("GET", "/api/collections/devices/records", params={
        "filter": f'code ~ "{prefix}-" && status = "active"', "perPage": 1})
    return int(body["totalItems"])


async def seed_devices(stack: BenchStack, admin: PocketBase, tenant_id: str, prefix: str,
                       n: int) -> list[str]:
    """n device rows without keys; returns their ids."""
    model = await admin.create("devices", {
        "tenant": tenant_id, "code": f"{prefix}-model", "password": PASSWORD,
        "passwordConfirm": PASSWORD})
    stack.pb.stop()
    db = sqlite3.connect(stack.layout.pb_dir / "data.db")
    pw_hash = db.execute("select password from devices where id = ?", (model["id"],)).fetchone()[0]
    now = time.strftime("%Y-%m-%d %H:%M:%S.000Z", time.gmtime())
    ids = [f"b{secrets.token_hex(7)}" for _ in range(n)]
    slug = model["login"].split("/")[0]  # a device logs in as <tenant slug>/<code>
    db.executemany(
        "insert into devices (id, code, login, tenant, password, tokenKey, status, created,"
        " updated) values (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        [(rid, f"{prefix}-{i:05d}", f"{slug}/{prefix}-{i:05d}", tenant_id, pw_hash,
          secrets.token_urlsafe(36), now, now) for i, rid in enumerate(ids)])
    db.execute("delete from devices where id = ?", (model["id"],))
    db.commit()
    db.close()
    stack.pb = start_pocketbase(stack.layout, stack.settings.pb_port)
    return ids


async def write_keys(admin: PocketBase, ids: list[str]) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for rid in ids:
        queue.put_nowait(rid)

    async def writer() -> None:
        while not queue.empty():
            rid = queue.get_nowait()
            await admin.update("devices", rid,
                               {"nats_public_key": nkey.create("user").public_key.decode()})

    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return time.perf_counter() - t0


async def wait_all(admin: PocketBase, prefix: str, n: int, t0: float) -> float:
    while await count_active(admin, prefix) < n:
        await asyncio.sleep(0.1)
    return time.perf_counter() - t0


async def run(sizes: list[int]) -> list[dict[str, Any]]:
    stack = start(with_bridge=False)
    results = []
    try:
        stack.start_bridge()
        admin = await stack.admin_client()
        tenant = await provisioned_tenant(admin, "bulk")
        stack.bridge.stop()
        for n in sizes:
            # baseline: PocketBase alone accepting n key writes (no bridge running)
            base_ids = await seed_devices(stack, admin, tenant["id"], f"base{n}", n)
            await admin.close()
            admin = await stack.admin_client()
            base_s = await write_keys(admin, base_ids)
            # reconciliation path: the bridge starts with n keys waiting
            t0 = time.perf_counter()
            stack.start_bridge()
            reconcile_s = await wait_all(admin, f"base{n}", n, t0)
            # event path: keys written while the bridge runs
            ids = await seed_devices(stack, admin, tenant["id"], f"ev{n}", n)
            await admin.close()
            admin = await stack.admin_client()
            while stack.bridge.running and not _following(stack):
                await asyncio.sleep(0.1)
            t0 = time.perf_counter()
            write_s = await write_keys(admin, ids)
            event_s = await wait_all(admin, f"ev{n}", n, t0)
            results.append({
                "n": n, "base_rate": n / base_s, "write_s": write_s, "event_s": event_s,
                "event_rate": n / event_s, "reconcile_rate": n / reconcile_s,
                "reconcile_s": reconcile_s, "rss": rss_peak_mb(stack.bridge.proc.pid),
            })
            stack.bridge.stop()
        await admin.close()
    finally:
        stack.stop()
    return results


def _following(stack: BenchStack) -> bool:
    from cairn_stack.processes import http_get_text
    text = http_get_text(f"http://127.0.0.1:{stack.settings.bridge_metrics_port}/metrics")
    return "cairn_bridge_pocketbase_connected 1.0" in text


def report(results: list[dict[str, Any]]) -> str:
    lines = [f"machine: {machine()}"]
    for r in results:
        lines.append(
            f"{r['n']:>6} devices, keys written live: all active in {r['event_s']:.1f} s = "
            f"{r['event_rate']:.0f} devices/s (PocketBase alone took the same writes at "
            f"{r['base_rate']:.0f}/s: ratio {r['event_rate'] / r['base_rate']:.2f}); "
            f"reconciliation at start: {r['reconcile_rate']:.0f} devices/s; "
            f"bridge peak RSS {r['rss']:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    print(report(asyncio.run(run(sizes))))
