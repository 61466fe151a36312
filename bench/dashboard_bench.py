"""The dashboard in headless Chromium (the browser tests' Debian Chromium, via Playwright).

1. Fleet page with 10,000 devices: navigation -> list rendered, and a filter typed -> the
   list filtered (after the next frame). Baseline in the same page: the same device list
   fetched as JSON alone (PocketBase's REST, no rendering).
2. Telemetry -> visible: a service user publishes `agents.<code>.telemetry.system` with a
   fresh cpu_percent; the page notes when the fleet row's cell shows it (browser clock, the
   same machine's). Baseline: a plain nats-py subscriber's receive time of the same
   messages.
3. Page CPU with 1,000 devices sending telemetry every 10 s (100 messages/s): the renderer's
   task time per wall second (Chrome's Performance.getMetrics TaskDuration), against the
   same page idle for the same time.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats

from bench.fleet_enroll import bulk_rows
from bench.stack import BenchStack, machine, percentile, provisioned_tenant, start
from cairn_common import creds
from cairn_common.natsauth import connect_options

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
DEVICES = 10_000
TALKERS = 1_000  # devices sending telemetry every 10 s
SAMPLES = 60  # spaced wider than the page's 250 ms drawing interval, so each one shows
CPU_WINDOW = 20.0  # seconds


async def run() -> dict[str, Any]:
    if CHROMIUM is None:
        raise SystemExit("no Chromium binary: apt-get install chromium")
    stack: BenchStack = start()
    try:
        return await _measure(stack)
    finally:
        stack.stop()


async def _service_creds(admin: Any, tenant: dict[str, Any]) -> tuple[str, str]:
    row = await admin.create("nats_users", {"tenant": tenant["id"], "name": "bench-pub",
                                            "role": "service", "active": True})
    for _ in range(200):
        row = await admin.get("nats_users", row["id"])
        if row.get("creds"):
            return creds.parse(row["creds"])
        await asyncio.sleep(0.05)
    raise RuntimeError("no creds for the bench's service user")


def _system(cpu: float) -> bytes:
    return json.dumps({"cpu_percent": cpu, "memory_used_percent": 40.0,
                       "disks": [{"mount": "/", "free_percent": 50.0}],
                       "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()


async def _measure(stack: BenchStack) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    admin = await stack.admin_client()
    await admin.update_settings({"rateLimits": {"enabled": False}})
    tenant = await provisioned_tenant(admin, "dash")
    tmp = Path(tempfile.mkdtemp(prefix="cairn-dash-"))
    await bulk_rows(admin, "dash", "dev", DEVICES, tmp / "devices.csv")
    password = secrets.token_urlsafe(12)
    user = await admin.create("users", {"email": "dash@cairn.test", "password": password,
                                        "passwordConfirm": password, "verified": True})
    await admin.create("memberships", {"user": user["id"], "tenant": tenant["id"],
                                       "role": "owner"})
    jwt, seed = await _service_creds(admin, tenant)
    auth = connect_options(lambda: (jwt, seed))
    pub = await nats.connect(stack.settings.nats_url, **auth)
    varz = await asyncio.to_thread(
        httpx.get, f"http://127.0.0.1:{stack.settings.nats_monitor_port}/varz", timeout=5)
    url = f"{stack.settings.pb_url}/?nats=ws://127.0.0.1:{varz.json()['websocket']['port']}"
    out: dict[str, Any] = {"machine": machine(), "devices": DEVICES}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(url)
        await page.fill("input[name=email]", "dash@cairn.test")
        await page.fill("input[name=password]", password)
        await page.click("form.login button[type=submit]")
        await page.locator("#bus.up").wait_for(timeout=30000)
        out.update(await _render(page, url))
        out.update(await _latency(page, pub, stack.settings.nats_url, auth))
        out.update(await _cpu(page, pub))
        await browser.close()
    await pub.close()
    await admin.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


async def _render(page: Any, url: str) -> dict[str, Any]:
    first_rows, rendered, fetched, filtered, filter_base = [], [], [], [], []
    wanted = f"{DEVICES} of {DEVICES} devices"
    for _ in range(5):
        t0 = time.perf_counter()
        await page.goto(url)
        await page.wait_for_selector("#fleet tbody tr", timeout=60000)
        first_rows.append((time.perf_counter() - t0) * 1000)
        await page.wait_for_function(f"document.querySelector('#count')?.textContent === "
                                     f"'{wanted}'", timeout=60000)
        rendered.append((time.perf_counter() - t0) * 1000)
        fetched.append(await page.evaluate("""async () => {
            const t0 = performance.now();
            const pb = new (await import('/vendor/pocketbase.es.mjs')).default(location.origin);
            await pb.collection('devices').getFullList({ batch: 1000,
              fields: 'id,code,name,hostname,os,agent_version,online,last_seen,status' });
            return performance.now() - t0; }"""))
        timing = await page.evaluate("""() => new Promise((done) => {
            const q = document.querySelector('#q');
            const t0 = performance.now();
            q.value = 'dev-04242'; q.dispatchEvent(new Event('input'));
            requestAnimationFrame(() => requestAnimationFrame(() => {
              const shown = document.querySelector('#count').textContent;
              const t1 = performance.now();
              const b0 = performance.now();
              requestAnimationFrame(() => requestAnimationFrame(() =>
                done([t1 - t0, performance.now() - b0, shown])));
            }));
          })""")
        assert timing[2].startswith("1 of"), timing
        filtered.append(timing[0])
        filter_base.append(timing[1])
    return {"first_rows_ms": percentile(first_rows, 50), "render_ms": percentile(rendered, 50),
            "render_max_ms": max(rendered),
            "fetch_ms": percentile(fetched, 50), "filter_ms": percentile(filtered, 50),
            "filter_max_ms": max(filtered), "two_frames_ms": percentile(filter_base, 50)}


async def _latency(page: Any, pub: Any, url: str, auth: dict[str, Any]) -> dict[str, Any]:
    await page.evaluate("""() => {
        document.querySelector('#q').value = ''; document.querySelector('#q')
          .dispatchEvent(new Event('input'));
        window.seen = {};
        const cell = document.querySelector("tr[data-code='dev-00001'] td.cpu");
        new MutationObserver(() => { window.seen[cell.textContent] =
          performance.timeOrigin + performance.now(); })
          .observe(cell, { childList: true, characterData: true, subtree: true });
      }""")
    got: dict[str, float] = {}

    async def on_msg(msg: Any) -> None:
        got[f"{json.loads(msg.data)['cpu_percent']:.1f}"] = time.time() * 1000

    plain = await nats.connect(url, **auth)
    await plain.subscribe("agents.dev-00001.telemetry.system", cb=on_msg)
    await plain.flush()
    sent: dict[str, float] = {}
    for n in range(SAMPLES):
        value = f"{n / 10 + 0.1:.1f}"  # unique per sample, as the cell shows it
        sent[value] = time.time() * 1000
        await pub.publish("agents.dev-00001.telemetry.system", _system(float(value)))
        await asyncio.sleep(0.4)
    await pub.flush()
    await asyncio.sleep(1)
    seen = await page.evaluate("() => window.seen")
    page_ms = [seen[v] - t for v, t in sent.items() if v in seen]
    plain_ms = [got[v] - t for v, t in sent.items() if v in got]
    await plain.close()
    return {"visible_p50": percentile(page_ms, 50), "visible_p99": percentile(page_ms, 99),
            "visible_n": len(page_ms), "plain_p50": percentile(plain_ms, 50),
            "plain_p99": percentile(plain_ms, 99)}


async def _task_seconds(cdp: Any) -> float:
    metrics = await cdp.send("Performance.getMetrics")
    return next(m["value"] for m in metrics["metrics"] if m["name"] == "TaskDuration")


async def _cpu(page: Any, pub: Any) -> dict[str, Any]:
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Performance.enable")

    async def window(talking: bool) -> float:
        t0, wall0 = await _task_seconds(cdp), time.perf_counter()
        deadline = wall0 + CPU_WINDOW
        n = 0
        while time.perf_counter() < deadline:
            if talking:  # 1,000 devices every 10 s = one device every 10 ms
                code = f"dev-{n % TALKERS + 1:05d}"
                await pub.publish(f"agents.{code}.telemetry.system", _system(float(n % 100)))
                n += 1
            await asyncio.sleep(0.01)
        return (await _task_seconds(cdp) - t0) / (time.perf_counter() - wall0)

    idle = await window(False)
    busy = await window(True)
    return {"cpu_idle_pct": idle * 100, "cpu_busy_pct": busy * 100,
            "cpu_msgs_per_s": 100}


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"machine: {r['machine']}; {r['devices']} devices in the tenant",
        f"first rows shown      p50 {r['first_rows_ms']:.0f} ms (navigation -> table rows)",
        f"all {r['devices']} listed  p50 {r['render_ms']:.0f} ms (max {r['render_max_ms']:.0f})  "
        f"(baseline, the list fetched as JSON alone: {r['fetch_ms']:.0f} ms; ratio "
        f"{r['render_ms'] / r['fetch_ms']:.2f}x)",
        f"filter applied        p50 {r['filter_ms']:.0f} ms (max {r['filter_max_ms']:.0f})  "
        f"(baseline, two empty frames: {r['two_frames_ms']:.0f} ms)",
        f"telemetry -> visible  p50 {r['visible_p50']:.1f} ms  p99 {r['visible_p99']:.1f} ms "
        f"({r['visible_n']} samples; plain nats-py subscriber p50 {r['plain_p50']:.1f} ms p99 "
        f"{r['plain_p99']:.1f} ms)",
        f"page CPU, 1,000 devices every 10 s: {r['cpu_busy_pct']:.1f} % of a core "
        f"(idle page: {r['cpu_idle_pct']:.1f} %)",
    ])


if __name__ == "__main__":
    print(report(asyncio.run(run())))
