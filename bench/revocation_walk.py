"""What a revoking account push costs nats-server as the account grows, and what the
bridge's kick (pb_hooks_bridge/kicker.py) saves. `python -m bench revocation-walk`.

A private stack; a tenant whose account holds N extra live connections (users of its
signing key). For each N, probes are connected and revoked three ways, all in the same
run:
- **push**: an operator-signed account JWT with the probe revoked, sent on one SYS
  connection; the probe is closed by nats-server's own walk over the account;
- **push + kick**: the same, then on a second SYS connection: find the probe (CONNZ),
  wait until the server shows the revocation (INFO), kick it (what the bridge does);
- **kick on the push's connection**: the same requests on the push's own connection (the
  control: they wait behind the walk, which is why the bridge keeps a separate one).
Reported per N: the push's reply time and the time until the probe was dropped (p50/max),
and whether any probe got back in (it must not: the reconnect meets the revocation).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats

from bench.fleet_agents import raise_fd_limit
from bench.stack import machine, percentile, provisioned_tenant, start
from cairn_common import natsjwt, nkey
from cairn_common.natsauth import connect_options
from pb_hooks_bridge.bootstrap import load_operator

SIZES = (0, 2000, 5000, 10000)
SAMPLES = 6


async def _quiet(exc: Exception) -> None:
    pass


class Account:
    def __init__(self, row: dict[str, Any], operator: Any) -> None:
        self.public = row["public_key"]
        self.signing = nkey.from_seed(row["signing_seed"], "account")
        self.base = natsjwt.decode(row["jwt"])
        self.operator = operator
        self.iat = int(self.base["iat"]) + 1000  # ahead of the bridge's own pushes
        self.revoked: dict[str, int] = dict(self.base["nats"].get("revocations") or {})

    def user(self, name: str) -> tuple[str, str, str]:
        key = nkey.create("user")
        token = natsjwt.encode(natsjwt.user_claims(
            key.public_key.decode(), name, issuer_account=self.public,
            pub_allow=["_INBOX.>"], sub_allow=["_INBOX.>"]), self.signing)
        return key.public_key.decode(), token, key.seed.decode()

    def revoking(self, public: str) -> bytes:
        self.revoked[public] = int(time.time())
        self.iat += 1
        claims = {**self.base, "iat": self.iat}
        claims["nats"] = {**self.base["nats"], "revocations": dict(self.revoked)}
        return natsjwt.encode(claims, self.operator).encode()


async def _connect(url: str, token: str, seed: str, **kw: Any) -> nats.NATS:
    return await nats.connect(url, error_cb=_quiet, **kw,
                              **connect_options(lambda: (token, seed)))


async def _kick(nc: nats.NATS, account: str, public: str) -> None:
    z = json.loads((await nc.request(f"$SYS.REQ.ACCOUNT.{account}.CONNZ", json.dumps(
        {"auth": True, "user": public}).encode(), timeout=30)).data)
    server = z["server"]["id"]
    while True:
        info = json.loads((await nc.request(f"$SYS.REQ.ACCOUNT.{account}.INFO", b"",
                                            timeout=30)).data)
        if public in (info.get("data", {}).get("revoked_user") or {}):
            break
        await asyncio.sleep(0.005)
    for conn in z["data"].get("connections") or []:
        await nc.request(f"$SYS.REQ.SERVER.{server}.KICK",
                         json.dumps({"cid": conn["cid"]}).encode(), timeout=30)


async def _one(url: str, acc: Account, push_nc: nats.NATS, kick_nc: nats.NATS | None
               ) -> tuple[float, float, bool]:
    public, token, seed = acc.user("probe")
    closed, back, dropped = asyncio.Event(), [], []

    async def on_closed() -> None:
        closed.set()

    async def on_back() -> None:
        back.append(True)

    async def on_drop() -> None:
        dropped.append(time.perf_counter())

    await _connect(url, token, seed, closed_cb=on_closed, reconnected_cb=on_back,
                   disconnected_cb=on_drop, max_reconnect_attempts=3, reconnect_time_wait=0.05)
    payload = acc.revoking(public)
    began = time.perf_counter()
    push = asyncio.ensure_future(push_nc.request("$SYS.REQ.CLAIMS.UPDATE", payload,
                                                 timeout=60))
    if kick_nc is not None:
        await _kick(kick_nc, acc.public, public)
    await push
    replied = time.perf_counter()
    await asyncio.wait_for(closed.wait(), 60)
    first = dropped[0] if dropped else time.perf_counter()
    return (replied - began) * 1000, (first - began) * 1000, bool(back)


async def run(sizes: tuple[int, ...] = SIZES, samples: int = SAMPLES) -> dict[str, Any]:
    raise_fd_limit(max(sizes) + 500)
    stack = await asyncio.to_thread(start)
    crowd: list[nats.NATS] = []
    out: dict[str, Any] = {"machine": machine(), "samples": samples, "sizes": {}}
    try:
        admin = await stack.admin_client()
        tenant = await provisioned_tenant(admin, "walk")
        row = await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
        await admin.close()
        acc = Account(row, load_operator(stack.layout))
        url = stack.settings.nats_url
        creds = str(stack.layout.sys_user_creds)
        push_nc = await nats.connect(url, user_credentials=creds)
        kick_nc = await nats.connect(url, user_credentials=creds)
        gate = asyncio.Semaphore(200)

        async def grow() -> None:
            async with gate:
                _, token, seed = acc.user("crowd")
                crowd.append(await _connect(url, token, seed, allow_reconnect=False))

        for size in sizes:
            await asyncio.gather(*(grow() for _ in range(size - len(crowd))))
            figures = {}
            for mode, other in (("push", None), ("push+kick", kick_nc),
                                ("kick on the push's connection", push_nc)):
                rows = [await _one(url, acc, push_nc, other) for _ in range(samples)]
                figures[mode] = {
                    "reply_p50_ms": round(percentile([r[0] for r in rows], 50), 1),
                    "dropped_p50_ms": round(percentile([r[1] for r in rows], 50), 1),
                    "dropped_max_ms": round(max(r[1] for r in rows), 1),
                    "got_back_in": sum(r[2] for r in rows)}
            out["sizes"][str(size)] = figures
    finally:
        await asyncio.gather(*(c.close() for c in crowd), return_exceptions=True)
        await asyncio.to_thread(stack.stop)
    return out


def report(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']}; {r['samples']} probes per cell"]
    for size, modes in r["sizes"].items():
        for mode, f in modes.items():
            lines.append(f"{int(size):>6} connections  {mode:<31} push reply p50 "
                         f"{f['reply_p50_ms']:>7.1f} ms  dropped p50 {f['dropped_p50_ms']:>7.1f}"
                         f" ms, max {f['dropped_max_ms']:>7.1f} ms  got back in: "
                         f"{f['got_back_in']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(asyncio.run(run())))
