"""Browser test: device codes are unique per tenant (issue 14). Two tenants each get a
device `web-01` made in the Admin UI's form; both agents enroll with `--tenant` and answer a
`ping` created in the Admin UI. A second `web-01` in the same tenant is refused in the form."""

from __future__ import annotations

import re
from pathlib import Path

from agent import config as config_mod
from agent.app import AgentApp
from agent.enrollment import EnrollRequest, enroll
from tests.live import (
    DEVICE_PASSWORD,
    account_ready,
    eventually,
    new_tenant,
    write_agent_config,
)
from tests.ui.admin_ui_steps import (
    ARGS,
    CHROMIUM,
    choose,
    needs_chromium,
    new_record_form,
    pick,
)

pytestmark = needs_chromium

CODE = "web-01"


async def _new_device_in_form(page, pb_env, tenant: dict) -> None:
    await new_record_form(page, pb_env, "devices")
    await pick(page, "tenant", tenant["name"])
    await page.locator("textarea[name=code]").fill(CODE)
    await page.locator("input[name=password]").fill(DEVICE_PASSWORD)
    await page.locator("input[name=passwordConfirm]").fill(DEVICE_PASSWORD)
    await page.get_by_role("button", name="Create", exact=True).click()


async def _start_agent(pb_env, nats_env, tenant: dict, directory: Path) -> AgentApp:
    write_agent_config(directory, CODE, pb_env.url, nats_env.url, tenant["slug"])
    await enroll(EnrollRequest(server=pb_env.url, code=CODE, tenant=tenant["slug"],
                               directory=directory, nats_urls=(nats_env.url,),
                               secret=DEVICE_PASSWORD))
    app = AgentApp(config_mod.load(directory / "agent.yaml"))
    await app.start()
    return app


async def test_two_tenants_each_have_web_01_and_both_answer_ping(bridge, admin, pb_env,
                                                                  nats_env, tmp_path):
    from playwright.async_api import async_playwright

    tenants = [await account_ready(admin, await new_tenant(admin, name=name))
               for name in ("Acme Web", "Globex Web")]
    agents: list[AgentApp] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            for tenant in tenants:
                await _new_device_in_form(page, pb_env, tenant)
                await page.get_by_text(re.compile("successfully created", re.I)).first.wait_for()
            # the same code twice in one tenant: refused in the form, with the reason
            await _new_device_in_form(page, pb_env, tenants[0])
            await page.get_by_text(re.compile(
                f"code '{CODE}' is already used in tenant {tenants[0]['slug']}", re.I)
            ).first.wait_for()
            rows = await admin.list("devices", filter=f'code = "{CODE}"', sort="created")
            assert sorted(r["login"] for r in rows) == sorted(
                f"{t['slug']}/{CODE}" for t in tenants)

            for i, tenant in enumerate(tenants):
                agents.append(await _start_agent(pb_env, nats_env, tenant, tmp_path / f"a{i}"))
            for tenant in tenants:
                await new_record_form(page, pb_env, "commands")
                await pick(page, "tenant", tenant["name"])
                await pick(page, "device", f"{tenant['slug']}/{CODE}")
                await choose(page, "command", "ping")
                await page.get_by_role("button", name="Create", exact=True).click()
                await page.get_by_text(re.compile("successfully created", re.I)).first.wait_for()
            await browser.close()

        by_tenant = {r["tenant"]: r for r in rows}
        for tenant in tenants:
            device = by_tenant[tenant["id"]]

            async def succeeded(device=device):
                found = await admin.list("commands", filter=f'device = "{device["id"]}"')
                return found[0] if found and found[0]["status"] == "succeeded" else None

            row = await eventually(succeeded, 20, f"ping of {device['login']}")
            assert row["tenant"] == tenant["id"] and row["response"]["status"] == "pong"
    finally:
        for app in agents:
            await app.stop()
