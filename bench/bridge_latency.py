"""Enrollment and revocation latency through the real bridge, with same-run baselines.

Enrollment: device writes its public key -> JWT on the record (seen through realtime) ->
a NATS client with those creds connected. Baseline: the same device write and realtime
round trip plus a NATS connect with creds issued beforehand (the floor without the bridge).

Revocation: device disabled in PocketBase -> its live connection closed. Baseline: a
PocketBase write seen through realtime, then the benchmark itself pushing an account JWT
that revokes a user over the SYS account (the floor of a PocketBase-driven revocation);
the bare push alone is reported too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats

from bench.stack import BenchStack, machine, percentile, provisioned_tenant, start
from cairn_common import natsjwt, nkey
from cairn_common.natsauth import connect_options
from cairn_common.pocketbase import PocketBase
from pb_hooks_bridge.bootstrap import load_operator

PASSWORD = "bench-enroll-123"


class Watch:
    """One superuser realtime stream resolving per-record futures on matching updates."""

    def __init__(self, admin: PocketBase, collection: str = "devices") -> None:
        self.admin = admin
        self.collection = collection
        self.waiters: dict[str, tuple[Any, asyncio.Future[dict[str, Any]]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()

        async def run() -> None:
            async for event in self.admin.realtime([f"{self.collection}/*"]):
                if event.action == "connect":
                    ready.set()
                    continue
                entry = self.waiters.get(event.record.get("id"))
                if entry and entry[0](event.record) and not entry[1].done():
                    entry[1].set_result(event.record)

        self.task = asyncio.create_task(run(), name=f"bench-watch-{self.collection}")
        await asyncio.wait_for(ready.wait(), 10)

    def expect(self, device_id: str, predicate: Any) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[device_id] = (predicate, future)
        return future


async def _connect(url: str, jwt: str, seed: str, **kw: Any) -> nats.NATS:
    async def quiet(exc: Exception) -> None:
        return None
    return await nats.connect(url, allow_reconnect=False, error_cb=quiet, **kw,
                              **connect_options(lambda: (jwt, seed)))


async def run(samples: int = 200) -> dict[str, Any]:
    stack: BenchStack = start()
    try:
        return await _measure(stack, samples)
    finally:
        stack.stop()


async def _measure(stack: BenchStack, samples: int) -> dict[str, Any]:
    admin = await stack.admin_client()
    url = stack.settings.nats_url
    tenant = await provisioned_tenant(admin, "bench")
    watch = Watch(admin)
    await watch.start()
    enroll_ms, base_ms, enrolled = [], [], []
    for i in range(samples):
        device = await admin.create("devices", {
            "tenant": tenant["id"], "code": f"bench-{i:05d}", "password": PASSWORD,
            "passwordConfirm": PASSWORD})
        as_device = PocketBase(stack.settings.pb_url)
        await as_device.auth_with_password("devices", device["login"], PASSWORD)
        user = nkey.create("user")
        public = user.public_key.decode()
        issued = watch.expect(device["id"], lambda r, p=public: bool(r.get("nats_jwt")) and
                              natsjwt.decode(r["nats_jwt"], verify=False)["sub"] == p)
        t0 = time.perf_counter()
        await as_device.update("devices", device["id"], {"nats_public_key": public})
        row = await asyncio.wait_for(issued, 10)
        nc = await _connect(url, row["nats_jwt"], user.seed.decode())
        enroll_ms.append((time.perf_counter() - t0) * 1000)
        # baseline: same write + realtime round trip + connect with creds already issued
        seen = watch.expect(device["id"], lambda r, n=i: r.get("hostname") == f"h{n}")
        t0 = time.perf_counter()
        await as_device.update("devices", device["id"], {"hostname": f"h{i}"})
        await asyncio.wait_for(seen, 10)
        nc2 = await _connect(url, row["nats_jwt"], user.seed.decode())
        base_ms.append((time.perf_counter() - t0) * 1000)
        await nc2.close()
        await as_device.close()
        enrolled.append((device, nc))

    revoke_ms = []
    for device, nc in enrolled:
        closed = asyncio.Event()
        nc._closed_cb = _setter(closed)
        t0 = time.perf_counter()
        await admin.update("devices", device["id"], {"status": "disabled"})
        await asyncio.wait_for(closed.wait(), 10)
        revoke_ms.append((time.perf_counter() - t0) * 1000)

    bare_ms, floor_ms = await _bare_revocations(stack, admin, tenant, samples, watch,
                                                enrolled[0][0])
    await admin.close()
    return {
        "machine": machine(), "samples": samples,
        "enroll_p50": percentile(enroll_ms, 50), "enroll_p99": percentile(enroll_ms, 99),
        "enroll_base_p50": percentile(base_ms, 50), "enroll_base_p99": percentile(base_ms, 99),
        "revoke_p50": percentile(revoke_ms, 50), "revoke_p99": percentile(revoke_ms, 99),
        "revoke_bare_p50": percentile(bare_ms, 50), "revoke_bare_p99": percentile(bare_ms, 99),
        "revoke_floor_p50": percentile(floor_ms, 50),
        "revoke_floor_p99": percentile(floor_ms, 99),
    }


def _setter(event: asyncio.Event) -> Any:
    async def cb() -> None:
        event.set()
    return cb


async def _bare_revocations(stack: BenchStack, admin: PocketBase, tenant: dict[str, Any],
                            samples: int, watch: Watch, probe: dict[str, Any]
                            ) -> tuple[list[float], list[float]]:
    """Sign and push a revoking account JWT ourselves, time until the close: alone, and
    after a PocketBase write + realtime event (the floor the bridge is compared with)."""
    operator = load_operator(stack.layout)
    row = await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
    signing = nkey.from_seed(row["signing_seed"], "account")
    base_claims = natsjwt.decode(row["jwt"])
    sys_nc = await nats.connect(stack.settings.nats_url,
                                user_credentials=str(stack.layout.sys_user_creds))
    revocations: dict[str, int] = dict(base_claims["nats"].get("revocations", {}))
    iat = int(base_claims["iat"]) + 1000  # stay ahead of the bridge's own pushes
    times, floors = [], []
    for n in range(samples):
        user = nkey.create("user")
        token = natsjwt.encode(natsjwt.user_claims(
            user.public_key.decode(), "bare", issuer_account=row["public_key"],
            pub_allow=["_INBOX.>"]), signing)
        closed = asyncio.Event()
        nc = await _connect(stack.settings.nats_url, token, user.seed.decode(),
                            closed_cb=_setter(closed))
        revocations[user.public_key.decode()] = int(time.time())
        iat += 1
        claims = {**base_claims, "iat": iat}
        claims["nats"] = {**base_claims["nats"], "revocations": dict(revocations)}
        seen = watch.expect(probe["id"], lambda r, n=n: r.get("name") == f"probe-{n}")
        t0 = time.perf_counter()
        await admin.update("devices", probe["id"], {"name": f"probe-{n}"})
        await asyncio.wait_for(seen, 10)
        t1 = time.perf_counter()
        await sys_nc.request("$SYS.REQ.CLAIMS.UPDATE",
                             natsjwt.encode(claims, operator).encode(), timeout=5)
        await asyncio.wait_for(closed.wait(), 10)
        done = time.perf_counter()
        times.append((done - t1) * 1000)
        floors.append((done - t0) * 1000)
        await nc.close()
    await sys_nc.close()
    return times, floors


def report(r: dict[str, Any]) -> str:
    return (
        f"machine: {r['machine']}; {r['samples']} devices\n"
        f"enrollment  p50 {r['enroll_p50']:.1f} ms  p99 {r['enroll_p99']:.1f} ms   "
        f"(baseline p50 {r['enroll_base_p50']:.1f} ms p99 {r['enroll_base_p99']:.1f} ms; "
        f"ratio p50 {r['enroll_p50'] / r['enroll_base_p50']:.2f}x)\n"
        f"revocation  p50 {r['revoke_p50']:.1f} ms  p99 {r['revoke_p99']:.1f} ms   "
        f"(PocketBase write + bare push p50 {r['revoke_floor_p50']:.1f} ms "
        f"p99 {r['revoke_floor_p99']:.1f} ms; ratio p50 "
        f"{r['revoke_p50'] / r['revoke_floor_p50']:.2f}x; bare push alone p50 "
        f"{r['revoke_bare_p50']:.1f} ms p99 {r['revoke_bare_p99']:.1f} ms)"
    )


if __name__ == "__main__":
    print(report(asyncio.run(run())))
