"""Rule router benchmarks (issue 5), each with a same-run baseline. The router runs as its
own process (`python -m rule_router run`); counts come from its /metrics.

- core throughput with 10, 100 and 1,000 rules over as many distinct subjects, vs a bare
  nats-py subscriber process draining the same messages;
- JetStream throughput (durable consumer, ack after actions) vs a bare pull consumer
  process that acks the same messages;
- latency: telemetry published -> alert received, p50/p99;
- reload: row edit -> new rule active while messages flow; none lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import nats

from bench.stack import BenchStack, machine, percentile, start
from cairn_common.natsauth import connect_options
from cairn_stack.processes import free_port, http_get_text
from cairn_stack.sidecars import prepare_router_login

BARE_CORE = """
import asyncio, sys, time, nats
async def main():
    n = int(sys.argv[3]); got = 0; done = asyncio.Event()
    async def cb(msg):
        nonlocal got
        got += 1
        if got == n: done.set()
    nc = await nats.connect(sys.argv[1], user_credentials=sys.argv[2])
    await nc.subscribe("agents.*.metric", cb=cb); await nc.flush()
    print("ready", flush=True)
    await done.wait()
    print(time.time(), flush=True)
asyncio.run(main())
"""

BARE_PULL = """
import asyncio, os, sys, time, nats
from nats.js.api import ConsumerConfig, DeliverPolicy
async def main():
    n = int(sys.argv[3]); got = 0
    nc = await nats.connect(sys.argv[1], user_credentials=sys.argv[2])
    js = nc.jetstream()
    durable = f"bare{os.getpid()}"
    sub = await js.pull_subscribe("agents.*.telemetry.>", durable=durable, stream="TELEMETRY",
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
    print("ready", flush=True)
    while got < n:
        try:
            msgs = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            await m.ack()
        got += len(msgs)
    print(time.time(), flush=True)
    await js.delete_consumer("TELEMETRY", durable)
asyncio.run(main())
"""


def evaluated(port: int, path: str) -> float:
    for line in http_get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(f'cairn_router_messages_evaluated_total{{path="{path}"}}'):
            return float(line.split()[1])
    return 0.0


class Bench:
    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.port = free_port()
        self.router: asyncio.subprocess.Process | None = None
        self.lost = 0.0

    async def setup(self) -> None:
        self.admin = await self.stack.admin_client()
        self.tenant = await self.admin.create("tenants", {"name": "rb", "slug": "rb",
                                                          "active": True})
        while not (await self.admin.get("tenants", self.tenant["id"]))[
                "nats_account_public_key"]:
            await asyncio.sleep(0.05)
        svc = await self.admin.first("nats_users", f'tenant = "{self.tenant["id"]}" && '
                                                   'name = "cairn-bridge"')
        self.creds_path = self.stack.root / "bench-svc.creds"
        self.creds_path.write_text(svc["creds"])
        self.nc = await nats.connect(self.stack.settings.nats_url,
                                     **connect_options(lambda: (svc["jwt"], svc["seed"])))

    async def start_router(self) -> None:
        login = await prepare_router_login(self.stack.settings, self.stack.layout,
                                           self.stack.admin)
        env = {**os.environ, "CAIRN_DATA_DIR": str(self.stack.root),
               "CAIRN_PB_URL": self.stack.settings.pb_url,
               "CAIRN_NATS_URL": self.stack.settings.nats_url,
               "CAIRN_ROUTER_LOGIN_FILE": str(login)}
        self.router = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rule_router", "run", "--metrics-port", str(self.port),
            "--log-level", "WARNING", env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        while "cairn_router_pocketbase_connected 1.0" not in http_get_text(
                f"http://127.0.0.1:{self.port}/metrics"):
            await asyncio.sleep(0.1)

    async def set_rules(self, rows: list[tuple[str, str]]) -> None:
        for row in await self.admin.list("rules", fields="id"):
            await self.admin.delete("rules", row["id"])
        for name, text in rows:
            await self.admin.create("rules", {"tenant": self.tenant["id"], "name": name,
                                              "enabled": True, "yaml": text})
        want = len(rows)
        while True:  # every row validated by the router
            valid = await self.admin.list("rules", filter='status = "valid"', fields="id")
            if len(valid) >= want:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

    async def bare(self, script: str, n: int, publish: Any) -> float:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, self.stack.settings.nats_url, str(self.creds_path),
            str(n), stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        await proc.stdout.readline()
        started = time.time()
        await publish()
        try:
            finished = float((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
            rate = n / (finished - started)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        return rate

    async def routed(self, path: str, n: int, publish: Any) -> float:
        """First publish -> the router's own counter shows all n evaluated (like the bare
        run: first publish -> last message handled). Stops when the count stalls (a core
        subscriber that falls behind loses messages: reported as `lost`)."""
        base = evaluated(self.port, path)
        started = time.perf_counter()
        publisher = asyncio.create_task(publish())
        last, last_change = -1.0, time.perf_counter()
        while True:
            now = evaluated(self.port, path) - base
            if now != last:
                last, last_change = now, time.perf_counter()
            if now >= n or time.perf_counter() - last_change > 3:
                await publisher
                self.lost = max(0.0, n - now)
                return now / (last_change - started)
            await asyncio.sleep(0.005)


async def core_throughput(b: Bench, rules: int, n: int) -> dict[str, float]:
    await b.set_rules([(f"r{i}", f'subject: "agents.s{i}.metric"\nmatch: "v > 1000000000"\n'
                        f'actions:\n  - publish: "alerts.never"\n') for i in range(rules)])
    payload = b'{"v": 1, "host": "web-01", "note": "benchmark message"}'

    async def publish() -> None:
        for i in range(n):
            await b.nc.publish(f"agents.s{i % rules}.metric", payload)
        await b.nc.flush()

    bare = await b.bare(BARE_CORE, n, publish)
    routed = await b.routed("core", n, publish)
    return {"rules": rules, "bare": bare, "routed": routed, "lost": b.lost}


async def js_throughput(b: Bench, n: int) -> dict[str, float]:
    """n telemetry messages and then one on `agents.end...`, whose rule publishes
    `alerts.bench.done`: the consumer handles the stream in order, so that alert means all n
    were evaluated and acked (no /metrics polling competing with the router)."""
    rules = [(f"t{i}", f'subject: "agents.*.telemetry.system"\n'
              f'match: "cpu_percent > {1000 + i}"\n'
              'actions:\n  - publish: "alerts.never"\n') for i in range(10)]
    rules.append(("end", 'subject: "agents.end.telemetry.system"\n'
                  'actions:\n  - publish: "alerts.bench.done"\n'))
    await b.set_rules(rules)
    done: asyncio.Queue[float] = asyncio.Queue()

    async def on_done(msg: Any) -> None:
        done.put_nowait(time.perf_counter())

    done_sub = await b.nc.subscribe("alerts.bench.done", cb=on_done)

    async def publish() -> None:
        for i in range(n):
            await b.nc.publish(f"agents.d{i % 50}.telemetry.system",
                               b'{"cpu_percent": 12.5, "source": "builtin"}')
        await b.nc.publish("agents.end.telemetry.system", b"{}")
        await b.nc.flush()

    base = evaluated(b.port, "jetstream")
    started = time.perf_counter()
    await publish()
    routed = (n + 1) / (await asyncio.wait_for(done.get(), 120) - started)
    await done_sub.unsubscribe()
    await asyncio.sleep(0.2)
    counted = evaluated(b.port, "jetstream") - base
    # the bare consumer (DeliverPolicy.NEW, subscribed before the publish) gets the same n+1
    bare = await b.bare(BARE_PULL, n + 1, publish)
    return {"bare": bare, "routed": routed, "lost": max(0.0, n + 1 - counted)}


async def latency(b: Bench, samples: int) -> dict[str, float]:
    await b.set_rules([("lat", 'subject: "agents.*.telemetry.system"\n'
                        'match: "cpu_percent > 90"\nactions:\n'
                        '  - publish: "alerts.{@subject.1}.high-cpu"\n')])
    got: asyncio.Queue[float] = asyncio.Queue()

    async def on_alert(msg: Any) -> None:
        got.put_nowait(time.perf_counter())

    await b.nc.subscribe("alerts.*.high-cpu", cb=on_alert)
    await b.nc.flush()
    js = b.nc.jetstream()
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await js.publish("agents.lat.telemetry.system", b'{"cpu_percent": 95}')
        times.append((await asyncio.wait_for(got.get(), 10) - t0) * 1000)
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


async def reload(b: Bench) -> dict[str, Any]:
    old = 'subject: "agents.reload.metric"\nactions:\n  - publish: "alerts.old"\n'
    await b.set_rules([("swap", old)])
    row = await b.admin.first("rules", 'name = "swap"')
    counts = {"alerts.old": 0, "alerts.new": 0}
    first_new: list[float] = []

    async def on_alert(msg: Any) -> None:
        counts[msg.subject] += 1
        if msg.subject == "alerts.new" and not first_new:
            first_new.append(time.perf_counter())

    await b.nc.subscribe("alerts.old", cb=on_alert)
    await b.nc.subscribe("alerts.new", cb=on_alert)
    await b.nc.flush()
    sent = 0
    edit_at = 0.0
    for i in range(4000):  # ~2 s of steady traffic, the edit in the middle
        await b.nc.publish("agents.reload.metric", json.dumps({"i": i}).encode())
        sent += 1
        if i == 1000:
            edit_at = time.perf_counter()
            await b.admin.update("rules", row["id"], {"yaml": old.replace("old", "new")})
        await asyncio.sleep(0.0005)
    await b.nc.flush()
    await asyncio.sleep(2)
    return {"reload_ms": (first_new[0] - edit_at) * 1000 if first_new else None,
            "sent": sent, "alerts": counts["alerts.old"] + counts["alerts.new"]}


async def run() -> dict[str, Any]:
    stack = start()
    b = Bench(stack)
    try:
        await b.setup()
        await b.start_router()
        core = [await core_throughput(b, n, 20_000) for n in (10, 100, 1000)]
        js = await js_throughput(b, 20_000)
        lat = await latency(b, 500)
        rel = await reload(b)
        return {"machine": machine(), "core": core, "js": js, "latency": lat, "reload": rel}
    finally:
        if b.router is not None:
            b.router.terminate()
            await b.router.wait()
        stack.stop()


def report(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']}"]
    for c in r["core"]:
        lines.append(f"core, {c['rules']:>4} rules: router {c['routed']:,.0f} msgs/s; bare "
                     f"subscriber {c['bare']:,.0f} msgs/s; ratio {c['routed'] / c['bare']:.2f}"
                     f"; not evaluated (slow consumer): {c['lost']:.0f}")
    ten, thousand = r["core"][0]["routed"], r["core"][-1]["routed"]
    lines.append(f"1,000 rules vs 10 rules: {thousand / ten:.2f}x")
    js = r["js"]
    lines.append(f"JetStream, 10 rules: router {js['routed']:,.0f} msgs/s (acked after actions);"
                 f" bare pull consumer {js['bare']:,.0f} msgs/s; ratio "
                 f"{js['routed'] / js['bare']:.2f}")
    lat = r["latency"]
    lines.append(f"latency telemetry -> alert: p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms")
    rel = r["reload"]
    lines.append(f"reload: row edit -> new rule active in {rel['reload_ms']:.0f} ms; "
                 f"{rel['sent']} messages sent, {rel['alerts']} alerts (one each, none lost "
                 f"or doubled: {rel['sent'] == rel['alerts']})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(asyncio.run(run())))
