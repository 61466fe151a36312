"""Browser test: an admin runs `ping` on a device from PocketBase's Admin UI and sees the
agent's answer there. Headless Chromium (Debian's package) driven by Playwright; nothing is
downloaded. Screenshots go to docs/img/ when CAIRN_SCREENSHOTS=1, else to a temp dir."""

from __future__ import annotations

import os
import re

import pytest

from agent import config as config_mod
from agent.app import AgentApp
from tests.live import (
    enrolled_agent_site,
    eventually,
)
from tests.ui.admin_ui_steps import (
    ARGS,
    CHROMIUM,
    DOCS_IMG,
    choose,
    needs_chromium,
    new_record_form,
    pick,
)
from tests.ui.admin_ui_steps import field as _field

pytestmark = needs_chromium


@pytest.fixture
async def fleet(bridge, admin, pb_env, nats_env, tmp_path):
    site = await enrolled_agent_site(admin, pb_env.url, nats_env.url, tmp_path, name="UI Demo")
    tenant, device = site.tenant, site.device
    app = AgentApp(config_mod.load(site.config_path))
    await app.start()
    yield tenant, device
    await app.stop()


async def test_ping_from_the_admin_ui(fleet, admin, pb_env, tmp_path):
    from playwright.async_api import async_playwright

    tenant, device = fleet
    shots = DOCS_IMG if os.environ.get("CAIRN_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await new_record_form(page, pb_env, "commands")
        for field, label in (("tenant", tenant["name"]), ("device", device["code"])):
            await pick(page, field, label)
        await choose(page, "command", "ping")
        await page.screenshot(path=str(shots / "admin-ui-new-command.png"))
        await page.get_by_role("button", name="Create", exact=True).click()

        async def succeeded():
            rows = await admin.list("commands", filter=f'device = "{device["id"]}"')
            return rows[0] if rows and rows[0]["status"] == "succeeded" else None

        row = await eventually(succeeded, 15, "the UI's command succeeded")
        assert row["response"]["status"] == "pong"
        await page.goto(f"{pb_env.url}/_/#/collections?collection=tenants")
        await page.goto(f"{pb_env.url}/_/#/collections?collection=commands")
        table = page.locator("[data-pb=recordsListTable]")
        await table.get_by_text("succeeded").first.wait_for()
        await page.screenshot(path=str(shots / "admin-ui-commands-list.png"))
        await page.set_viewport_size({"width": 1400, "height": 1300})
        await table.locator("tbody tr", has_text=row["id"]).first.click()
        pong = page.get_by_text('"pong"').first
        await pong.wait_for()
        await pong.scroll_into_view_if_needed()
        await page.wait_for_timeout(600)  # let the panel finish sliding in
        await page.screenshot(path=str(shots / "admin-ui-command-succeeded.png"))
        await browser.close()
    assert (shots / "admin-ui-command-succeeded.png").stat().st_size > 10_000


async def test_the_admin_ui_shows_why_a_command_is_refused(fleet, admin, pb_env, tmp_path):
    """A payload that does not fit, and another tenant's device, are refused in the form
    with the reason under the field (pb_hooks/commands.pb.js); nothing is stored."""
    from playwright.async_api import async_playwright

    from tests.live import account_ready, new_device, new_tenant

    tenant, device = fleet
    other = await account_ready(admin, await new_tenant(admin, name="Other Co"))
    foreign = await new_device(admin, other)
    shots = DOCS_IMG if os.environ.get("CAIRN_SCREENSHOTS") == "1" else tmp_path
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await new_record_form(page, pb_env, "commands")
        for field, label in (("tenant", tenant["name"]), ("device", device["code"])):
            await pick(page, field, label)
        await choose(page, "command", "ping")
        editor = _field(page, "payload").locator(".code-editor-content").first
        await editor.click()
        await page.keyboard.press("Control+A")
        await page.keyboard.type("[1, 2]")
        await page.get_by_role("button", name="Create", exact=True).click()
        await page.get_by_text(
            re.compile("payload must be a JSON object, got array", re.I)).first.wait_for()
        await page.screenshot(path=str(shots / "admin-ui-payload-refused.png"))
        await editor.click()
        await page.keyboard.press("Control+A")
        await page.keyboard.type("{}")
        await pick(page, "device", foreign["code"])
        await page.get_by_role("button", name="Create", exact=True).click()
        await page.get_by_text(
            re.compile("not one of the command's tenant's devices", re.I)).first.wait_for()
        await browser.close()
    for target in (device, foreign):
        assert not await admin.list("commands", filter=f'device = "{target["id"]}" && '
                                                      'command = "ping" && status = ""')
