"""Browser test: the audit log is append-only in PocketBase's Admin UI too, for the
superuser (pb_hooks/audit.pb.js). Editing a row, deleting it and making one by hand are
refused with the reason in the UI; the row stays as the bridge wrote it."""

from __future__ import annotations

import re

from tests.live import account_ready, eventually, new_tenant
from tests.ui.admin_ui_steps import ARGS, CHROMIUM, log_in, needs_chromium, new_record_form

pytestmark = needs_chromium


async def _open(page, pb_env, record_id: str) -> None:
    """The row's edit panel, from the audit_log list."""
    await page.goto(f"{pb_env.url}/_/#/collections?collection=tenants")
    await page.goto(f"{pb_env.url}/_/#/collections?collection=audit_log")
    await page.locator("[data-pb=recordsListTable] tbody tr", has_text=record_id).first.click()
    await page.locator("textarea[name=action]").wait_for()


async def test_the_admin_ui_cannot_rewrite_delete_or_forge_audit_rows(bridge, admin, pb_env):
    from playwright.async_api import async_playwright

    tenant = await account_ready(admin, await new_tenant(admin))

    async def written():  # control: Cairn's own component writes its rows
        rows = await admin.list("audit_log", filter=f'tenant = "{tenant["id"]}"')
        return rows[0] if rows else None

    row = await eventually(written, 15, "the bridge's audit row")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await log_in(page, pb_env)
        await _open(page, pb_env, row["id"])
        await page.locator("textarea[name=action]").fill("rewritten")
        await page.get_by_role("button", name="Save changes").click()
        await page.get_by_text(re.compile("audit_log rows cannot be changed", re.I)) \
            .first.wait_for()

        await _open(page, pb_env, row["id"])
        await page.locator("button[title='More options']").last.click()
        await page.locator(".dropdown-item.txt-danger", has_text="Delete").last.click()
        await page.get_by_role("button", name="Delete record").click()
        await page.get_by_text(re.compile("audit_log rows cannot be deleted", re.I)) \
            .first.wait_for()

        await new_record_form(page, pb_env, "audit_log")
        await page.locator("textarea[name=action]").fill("made.up")
        await page.get_by_role("button", name="Create", exact=True).click()
        await page.get_by_text(re.compile("written by Cairn's components only", re.I)) \
            .first.wait_for()
        await browser.close()
    kept = await admin.get("audit_log", row["id"])
    assert kept["action"] == row["action"] and kept["updated"] == row["updated"]
    assert not await admin.list("audit_log", filter='action = "made.up"')
