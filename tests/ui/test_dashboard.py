"""Browser test of the dashboard (pb_public/): a person logs in, sees the fleet live, opens a
device, sees its chart fill from NATS telemetry, pings it and sees the pong; a viewer sees
no command buttons; a wrong password is told in words. Headless Debian Chromium through
Playwright, nothing downloaded; screenshots go to docs/img/ when CAIRN_SCREENSHOTS=1."""

from __future__ import annotations

import os

import httpx
import pytest
import yaml

from agent import config as config_mod
from agent.app import AgentApp
from tests.live import account_ready, enrolled_agent_site, new_device, new_tenant
from tests.people.world import new_person
from tests.ui.admin_ui_steps import ARGS, CHROMIUM, DOCS_IMG

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary (apt-get install chromium); CI installs it")


@pytest.fixture
async def fleet(bridge, admin, pb_env, nats_env, tmp_path):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path, name="Acme")
    doc = yaml.safe_load(site.config_path.read_text())
    doc["intervals"]["system"] = 1  # a chart point every second
    site.config_path.write_text(yaml.safe_dump(doc))
    app = AgentApp(config_mod.load(site.config_path))
    await app.start()
    yield site.tenant, site.device
    await app.stop()


def _dashboard_url(pb_url: str, monitor_url: str) -> str:
    port = httpx.get(f"{monitor_url}/varz", timeout=5).json()["websocket"]["port"]
    return f"{pb_url}/?nats=ws://127.0.0.1:{port}"


async def _log_in(page, url: str, email: str, password: str) -> None:
    await page.goto(url)
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", password)
    await page.click("form.login button[type=submit]")


async def test_a_person_sees_the_fleet_live_and_pings_a_device(fleet, admin, pb_env, nats_env,
                                                               tmp_path):
    from playwright.async_api import async_playwright

    tenant, device = fleet
    operator = await new_person(admin, tenant, "operator")
    viewer = await new_person(admin, tenant, "viewer")
    url = _dashboard_url(pb_env.url, nats_env.monitor_url)
    shots = DOCS_IMG if os.environ.get("CAIRN_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    code = device["code"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1300, "height": 800})

        await _log_in(page, url, operator.email, "wrong-" + operator.password)
        alert = page.locator("#error")
        await alert.get_by_text("Wrong email or password.").wait_for(timeout=10000)
        await page.screenshot(path=str(shots / "dashboard-wrong-password.png"))

        await page.fill("input[name=password]", operator.password)
        await page.click("form.login button[type=submit]")
        await page.locator("#bus.up").wait_for(timeout=15000)  # NATS with the person's JWT
        row = page.locator(f"tr[data-code='{code}']")
        await row.locator("td.online").wait_for(timeout=15000)
        await page.wait_for_function(
            f"document.querySelector(\"tr[data-code='{code}'] td.cpu\")?.textContent !== ''",
            timeout=15000)
        cpu = float(await row.locator("td.cpu").text_content())
        assert 0 <= cpu <= 100
        await page.fill("#q", "no-such-device")
        assert await row.is_hidden()
        await page.fill("#q", code)
        assert await row.is_visible()
        await page.screenshot(path=str(shots / "dashboard-fleet.png"))

        await row.get_by_role("link", name=code).click()
        await page.wait_for_function(
            "Number(document.querySelector('#chart')?.dataset.points || 0) >= 2", timeout=15000)
        await page.get_by_role("button", name="Ping").click()
        outcome = page.locator("#outcome[data-status=succeeded]")
        await outcome.wait_for(timeout=15000)
        assert "pong" in await outcome.text_content()
        await page.locator("#commands td.status", has_text="succeeded").first.wait_for()
        # the chart began from TELEMETRY (through the bridge), not only from live figures
        await page.locator("#chart-note", has_text="stored points").wait_for(timeout=15000)
        assert int((await page.locator("#chart-note").text_content()).split()[0]) >= 1
        assert await page.locator("#network-chart canvas").count() == 1
        await page.get_by_role("button", name="Last day").click()
        await page.locator("button.chosen", has_text="Last day").wait_for()
        await page.locator("#chart-note", has_text="stored points").wait_for(timeout=15000)
        # inventory from the stream, with pickers of what the agent allows
        await page.locator("#inventory table.kv").wait_for(timeout=15000)
        options = await page.locator("#exec-form select option").all_text_contents()
        assert {"echo hello", "true", "facts.py", "nap.sh"} <= set(options), options
        await page.select_option("#exec-form select", "facts.py")
        await page.get_by_role("button", name="Exec").click()
        await page.locator("#outcome[data-status=succeeded]", has_text="exec: succeeded") \
            .wait_for(timeout=15000)
        assert '"answer":42' in await page.locator("#outcome").text_content()
        await page.get_by_role("button", name="Health").click()
        badge = page.locator("#health .health")
        await badge.wait_for(timeout=15000)
        assert await badge.text_content() in ("healthy", "degraded")
        await page.screenshot(path=str(shots / "dashboard-device.png"), full_page=True)

        second = await browser.new_page(viewport={"width": 1300, "height": 800})
        await _log_in(second, url, viewer.email, viewer.password)
        await second.locator(f"tr[data-code='{code}']").get_by_role("link", name=code).click()
        await second.get_by_text("Viewers see this device").wait_for(timeout=15000)
        assert await second.locator("#actions").count() == 0
        assert await second.get_by_role("button", name="Ping").count() == 0
        await browser.close()
    rows = await admin.list("commands", filter=f'device = "{device["id"]}"')
    assert {r["requested_by"] for r in rows} == {operator.user["id"]}  # through rows
    assert sorted(r["command"] for r in rows) == ["exec", "health", "ping"]


async def test_a_device_page_follows_the_devices_tenant(fleet, admin, pb_env, nats_env):
    """Codes are unique per tenant only: a person of two tenants that both have `code` who
    opens the other tenant's device must see that device over that tenant's bus, not the
    chosen tenant's device of the same code."""
    from playwright.async_api import async_playwright

    tenant, device = fleet
    other = await account_ready(admin, await new_tenant(admin, name="Other Co"))
    twin = await new_device(admin, other, code=device["code"])
    person = await new_person(admin, tenant, "operator")
    await admin.create("memberships", {"user": person.user["id"], "tenant": other["id"],
                                       "role": "viewer"})
    url = _dashboard_url(pb_env.url, nats_env.monitor_url)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1300, "height": 800})
        await _log_in(page, url, person.email, person.password)
        await page.locator("#bus.up").wait_for(timeout=15000)
        for target, home, says in ((twin, other, "status pending"),
                                   (device, tenant, "status active")):
            await page.goto(f"{url}#/device/{target['id']}")
            await page.wait_for_function(
                f"document.getElementById('tenant').value === '{home['id']}'", timeout=15000)
            await page.locator("#bus.up").wait_for(timeout=15000)
            await page.get_by_text(says).first.wait_for(timeout=15000)
        # control: the device of the chosen tenant shows its own commands' buttons
        assert await page.get_by_role("button", name="Ping").count() == 1
        await browser.close()


GOOD_RULE = """subject: agents.*.telemetry.system
match: "cpu_percent > -1"
actions:
  - publish: "alerts.{@subject.1}.seen"
    payload: '{"device": "{@subject.1}", "cpu": {cpu_percent}}'
"""


async def test_rules_are_checked_inline_and_alerts_arrive_live(fleet, admin, pb_env, nats_env,
                                                               router_identity, tmp_path):
    from playwright.async_api import async_playwright

    from tests.router.harness import start_router

    tenant, device = fleet
    router = await start_router(pb_env, nats_env, admin, [tenant], router_identity)
    operator = await new_person(admin, tenant, "operator")
    url = _dashboard_url(pb_env.url, nats_env.monitor_url)
    shots = DOCS_IMG if os.environ.get("CAIRN_SCREENSHOTS") == "1" else tmp_path
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1300, "height": 900})
            await _log_in(page, url, operator.email, operator.password)
            await page.locator("#bus.up").wait_for(timeout=15000)
            await page.get_by_role("link", name="Rules").click()
            await page.get_by_role("button", name="New rule").click()
            await page.fill("input[name=name]", "seen")
            await page.check("input[name=enabled]")
            await page.fill("textarea[name=yaml]", "subject: agents.*.telemetry.system\n"
                                                   "match: [unclosed\n")
            await page.get_by_role("button", name="Save").click()
            await page.locator("#rule-status[data-status=invalid]").wait_for(timeout=15000)
            error = await page.locator("#rule-error").text_content()
            assert "line" in error, error
            await page.screenshot(path=str(shots / "dashboard-rule-error.png"))
            await page.fill("textarea[name=yaml]", GOOD_RULE)  # control: a good rule passes
            await page.get_by_role("button", name="Save").click()
            await page.locator("#rule-status[data-status=valid]").wait_for(timeout=15000)
            assert await page.locator("#rule-error").is_hidden()

            await page.get_by_role("link", name="Alerts").click()
            await page.locator("#alerts td", has_text=f"alerts.{device['code']}.seen") \
                .first.wait_for(timeout=15000)
            await page.screenshot(path=str(shots / "dashboard-alerts.png"))
            # a page opened later shows the stored alerts (ALERTS, through the bridge)
            later = await browser.new_page(viewport={"width": 1300, "height": 900})
            await _log_in(later, url + "#/alerts", operator.email, operator.password)
            await later.locator("#bus.up").wait_for(timeout=15000)
            await later.get_by_role("link", name="Alerts").click()
            await later.locator("#alerts td", has_text=f"alerts.{device['code']}.seen") \
                .first.wait_for(timeout=15000)
            await browser.close()
    finally:
        await router.stop()
