"""People on the bus: login and revocation latency, against device figures of the same run.

Login: a person's key row created -> its JWT on the row (seen through realtime) -> a NATS
connection with it. Baseline: a device's enrollment the same way (bench/bridge_latency.py's
path), interleaved with the logins.

Revocation: membership removed, or user disabled -> the person's live connection closed
(target < 1 s, SPEC §13). Baseline: a device disabled -> its connection closed, interleaved.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from bench.bridge_latency import PASSWORD, Watch, _connect, _setter
from bench.stack import BenchStack, machine, percentile, provisioned_tenant, start
from cairn_common import natsjwt, nkey
from cairn_common.natsauth import person_inbox
from cairn_common.pocketbase import PocketBase


async def run(samples: int = 50) -> dict[str, Any]:
    stack: BenchStack = start()
    try:
        return await _measure(stack, samples)
    finally:
        stack.stop()


async def _person(stack: BenchStack, admin: PocketBase, tenant: dict[str, Any],
                  keys: Watch, n: int) -> tuple[dict[str, Any], Any, float]:
    password = secrets.token_urlsafe(12)
    user = await admin.create("users", {"email": f"bench-{n}@cairn.test", "password": password,
                                        "passwordConfirm": password, "verified": True})
    membership = await admin.create("memberships", {"user": user["id"],
                                                    "tenant": tenant["id"], "role": "operator"})
    async with PocketBase(stack.settings.pb_url) as pb:
        await pb.auth_with_password("users", user["email"], password)
        key = nkey.create("user")
        t0 = time.perf_counter()
        row = await pb.create("person_keys", {
            "user": user["id"], "membership": membership["id"], "tenant": tenant["id"],
            "public_key": key.public_key.decode(), "label": "bench"})
        issued = keys.expect(row["id"], lambda r: bool(r.get("jwt")))
        row = await asyncio.wait_for(issued, 10)
    nc = await _connect(stack.settings.nats_url, row["jwt"], key.seed.decode(),
                        inbox_prefix=person_inbox(user["id"]))
    return {"user": user, "membership": membership, "nc": nc}, key, \
        (time.perf_counter() - t0) * 1000


async def _device(stack: BenchStack, admin: PocketBase, tenant: dict[str, Any],
                  devices: Watch, n: int) -> tuple[dict[str, Any], float]:
    device = await admin.create("devices", {"tenant": tenant["id"], "code": f"bench-{n:05d}",
                                            "password": PASSWORD, "passwordConfirm": PASSWORD})
    async with PocketBase(stack.settings.pb_url) as as_device:
        await as_device.auth_with_password("devices", device["login"], PASSWORD)
        user = nkey.create("user")
        public = user.public_key.decode()
        issued = devices.expect(device["id"], lambda r, p=public: bool(r.get("nats_jwt")) and
                                natsjwt.decode(r["nats_jwt"], verify=False)["sub"] == p)
        t0 = time.perf_counter()
        await as_device.update("devices", device["id"], {"nats_public_key": public})
        row = await asyncio.wait_for(issued, 10)
    nc = await _connect(stack.settings.nats_url, row["nats_jwt"], user.seed.decode())
    return {"device": device, "nc": nc}, (time.perf_counter() - t0) * 1000


async def _closed_after(nc: Any, action: Any) -> float:
    closed = asyncio.Event()
    nc._closed_cb = _setter(closed)
    t0 = time.perf_counter()
    await action
    await asyncio.wait_for(closed.wait(), 10)
    return (time.perf_counter() - t0) * 1000


async def _measure(stack: BenchStack, samples: int) -> dict[str, Any]:
    admin = await stack.admin_client()
    # 100 logins from one address within a minute: the auth rate limit would refuse most
    await admin.update_settings({"rateLimits": {"enabled": False}})
    tenant = await provisioned_tenant(admin, "people")
    keys, devices = Watch(admin, "person_keys"), Watch(admin)
    await keys.start()
    await devices.start()
    login_ms, enroll_ms, people, machines = [], [], [], []
    for n in range(2 * samples):  # half are removed, half disabled
        person, _, ms = await _person(stack, admin, tenant, keys, n)
        people.append(person)
        login_ms.append(ms)
        if n < samples:
            device, ms = await _device(stack, admin, tenant, devices, n)
            machines.append(device)
            enroll_ms.append(ms)
    removed_ms, disabled_ms, device_ms = [], [], []
    for n in range(samples):
        removed, disabled, device = people[2 * n], people[2 * n + 1], machines[n]
        removed_ms.append(await _closed_after(
            removed["nc"], admin.delete("memberships", removed["membership"]["id"])))
        disabled_ms.append(await _closed_after(
            disabled["nc"], admin.update("users", disabled["user"]["id"], {"disabled": True})))
        device_ms.append(await _closed_after(
            device["nc"], admin.update("devices", device["device"]["id"],
                                       {"status": "disabled"})))
    for watch in (keys, devices):
        if watch.task is not None:
            watch.task.cancel()
            await asyncio.gather(watch.task, return_exceptions=True)
    await admin.close()
    figures: dict[str, Any] = {"machine": machine(), "samples": samples}
    for name, values in (("login", login_ms), ("enroll", enroll_ms), ("removed", removed_ms),
                         ("disabled", disabled_ms), ("device_disabled", device_ms)):
        figures[f"{name}_p50"] = percentile(values, 50)
        figures[f"{name}_p99"] = percentile(values, 99)
    return figures


def report(r: dict[str, Any]) -> str:
    def line(label: str, name: str, base: str) -> str:
        return (f"{label:<24} p50 {r[name + '_p50']:7.1f} ms  p99 {r[name + '_p99']:7.1f} ms"
                f"   (ratio to {base}: p50 {r[name + '_p50'] / r[base + '_p50']:.2f}x)")

    return "\n".join([
        f"machine: {r['machine']}; {2 * r['samples']} people, {r['samples']} devices",
        line("login -> connected", "login", "enroll"),
        line("device enrollment", "enroll", "enroll"),
        line("membership removed", "removed", "device_disabled"),
        line("user disabled", "disabled", "device_disabled"),
        line("device disabled", "device_disabled", "device_disabled"),
    ])


if __name__ == "__main__":
    print(report(asyncio.run(run())))
