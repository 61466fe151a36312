"""Steps the browser tests share: where Chromium is, logging in to PocketBase's Admin UI,
opening a new record form, and picking a relation in its records picker."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary (apt-get install chromium); CI installs it")


async def log_in(page, pb_env) -> None:
    await page.goto(f"{pb_env.url}/_/")
    await page.fill("#login_identity", pb_env.admin_email)
    await page.fill("#login_pass", pb_env.admin_password)
    await page.click("form[data-pb=authWithPasswordForm] button.next")
    await page.wait_for_selector("[data-pb=mainNav]")


async def new_record_form(page, pb_env, collection: str) -> None:
    """The superuser logged in (when not yet), with a new `collection` record open."""
    if "/_/" not in page.url or "#/login" in page.url:
        await log_in(page, pb_env)
    await page.goto(f"{pb_env.url}/_/#/collections?collection={collection}")
    await page.get_by_role("button", name="New record").first.click()


def field(page, name: str):
    label = page.locator("label", has_text=re.compile(f"^{name}"))
    return page.locator(".record-field-input").filter(has=label)


async def pick(page, name: str, label: str) -> None:
    block = field(page, name)
    await block.get_by_role("button", name="Open records picker").click()
    picker = page.locator(".records-picker-modal[data-modal-state=open]")
    await picker.locator(".records-picker-list .list-item", has_text=label).first.click()
    await picker.get_by_role("button", name="Set selection").click()
    await picker.wait_for(state="detached")


async def choose(page, name: str, option: str) -> None:
    """A select field's option, by its exact text."""
    block = field(page, name)
    await block.locator(".selected-container").click()
    await block.locator(".select-option", has_text=re.compile(f"^{re.escape(option)}$")).click()
