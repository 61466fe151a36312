"""History for people (pb_hooks_bridge/history.py): how long a person waits for a chart.

One device's TELEMETRY holds as many documents as a day at a 10 s interval (8,640), written
over about 90 s (the server stamps them: a day cannot be faked), so the window of those
90 s is as dense as a day would be. A person asks the bridge for it thinned to 120, 288
and 500 points (`cairn.history.telemetry`)
and for the latest document (`cairn.history.latest`, one direct get behind the bridge).
Baselines of the same run: one direct get straight from the stream (no bridge hop), and
reading every document of the window through an ordered consumer (what a chart would cost
without thinning).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.js.api import DeliverPolicy

from bench.bridge_latency import Watch, _connect
from bench.people_bench import _person
from bench.stack import BenchStack, machine, percentile, provisioned_tenant, start
from cairn_common import creds
from cairn_common.natsauth import service_inbox

DOCS = 8640
PER_SECOND = 100
CODE = "bench-history"
SUBJECT = f"agents.{CODE}.telemetry.system"


async def run(samples: int = 30) -> dict[str, Any]:
    stack: BenchStack = start()
    try:
        return await _measure(stack, samples)
    finally:
        stack.stop()


def _doc(n: int) -> bytes:
    return json.dumps({"cpu_percent": n % 100, "memory_used_percent": 40.0,
                       "disks": [{"mount": "/", "total_gb": 100, "free_gb": 60,
                                  "free_percent": 60.0}],
                       "network": {"rx_bytes_per_sec": 1200, "tx_bytes_per_sec": 800},
                       "load_1m": 0.4, "uptime_seconds": n * 10, "source": "builtin",
                       "timestamp": "2026-12-01T00:00:00Z"}).encode()


async def _fill(service: Any) -> None:
    js = service.jetstream(timeout=10)
    batch = PER_SECOND // 10
    for start_at in range(0, DOCS, batch):  # ten small bursts a second: evenly spread
        began = time.monotonic()
        for n in range(start_at, min(DOCS, start_at + batch)):
            await service.publish(SUBJECT, _doc(n))  # stored: the stream captures it
        await service.flush()
        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))  # pacing
    while (await js.stream_info("TELEMETRY")).state.messages < DOCS:
        await asyncio.sleep(0.1)


async def _timed(ask: Any, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await ask()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _measure(stack: BenchStack, samples: int) -> dict[str, Any]:
    admin = await stack.admin_client()
    tenant = await provisioned_tenant(admin, "history")
    while not (svc := await admin.first(
            "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""')):
        await asyncio.sleep(0.1)
    service = await _connect(stack.settings.nats_url, *creds.parse(svc["creds"]),
                             inbox_prefix=service_inbox("cairn-bridge"))
    filled_from = time.time()
    await _fill(service)
    keys = Watch(admin, "person_keys")
    await keys.start()
    person, _, _ = await _person(stack, admin, tenant, keys, 0)
    nc = person["nc"]

    async def history(kind: str, body: dict[str, Any]) -> None:
        if kind == "telemetry":  # the window: every stored document, however long we took
            body = {**body, "since": int(time.time() - filled_from) + 2}
        reply = json.loads((await nc.request(f"cairn.history.{kind}", json.dumps(body).encode(),
                                             timeout=30)).data)
        assert reply["status"] == "ok", reply
        if kind == "telemetry":  # each step holds documents: as many points as asked
            assert len(reply["messages"]) >= 0.9 * body["points"], len(reply["messages"])

    async def direct() -> None:
        await service.request("$JS.API.DIRECT.GET.TELEMETRY",
                              json.dumps({"last_by_subj": SUBJECT}).encode(), timeout=5)

    async def read_all() -> None:
        js = service.jetstream(timeout=10)
        sub = await js.subscribe(SUBJECT, stream="TELEMETRY", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        for _ in range(DOCS):
            await sub.next_msg(timeout=10)
        await sub.unsubscribe()

    figures: dict[str, Any] = {"machine": machine(), "samples": samples, "docs": DOCS}
    runs = {
        "direct": (direct, samples),
        "latest": (lambda: history("latest", {"device": CODE}), samples),
        "points_120": (lambda: history("telemetry", {"device": CODE, "points": 120}), samples),
        "points_288": (lambda: history("telemetry", {"device": CODE, "points": 288}), samples),
        "points_500": (lambda: history("telemetry", {"device": CODE, "points": 500}), samples),
        "read_all": (read_all, max(3, samples // 6)),
    }
    for name, (ask, count) in runs.items():
        await ask()  # warm: the first answer opens what later ones reuse
        values = await _timed(ask, count)
        figures[f"{name}_p50"] = percentile(values, 50)
        figures[f"{name}_p99"] = percentile(values, 99)
    if keys.task is not None:
        keys.task.cancel()
        await asyncio.gather(keys.task, return_exceptions=True)
    await nc.close()
    await service.close()
    await admin.close()
    return figures


def report(r: dict[str, Any]) -> str:
    def line(label: str, name: str) -> str:
        return (f"{label:<34} p50 {r[name + '_p50']:8.1f} ms  p99 {r[name + '_p99']:8.1f} ms"
                f"  (p50 {r[name + '_p50'] / r['direct_p50']:6.1f}x one direct get, "
                f"{r[name + '_p50'] / r['read_all_p50']:.3f}x reading all)")

    return "\n".join([
        f"machine: {r['machine']}; {r['docs']} documents of one device in TELEMETRY",
        line("one direct get (no bridge)", "direct"),
        line("history latest", "latest"),
        line("history, 120 points", "points_120"),
        line("history, 288 points (a day @5 min)", "points_288"),
        line("history, 500 points", "points_500"),
        line(f"ordered consumer, all {r['docs']}", "read_all"),
    ])


if __name__ == "__main__":
    print(report(asyncio.run(run())))
