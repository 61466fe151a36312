"""The PocketBase superuser for the stack: from the environment, or generated once and kept."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from cairn_common.filemodes import write_private
from cairn_common.layout import DataLayout
from cairn_stack.settings import SettingsError, StackSettings


@dataclass(frozen=True)
class Superuser:
    email: str
    password: str
    generated_now: bool


def resolve(settings: StackSettings, layout: DataLayout) -> Superuser:
    """Env wins; else the saved file; else a new random login, saved 0600 and shown once."""
    if settings.admin_email and settings.admin_password:
        return Superuser(settings.admin_email, settings.admin_password, generated_now=False)
    path = layout.superuser_file
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            return Superuser(str(saved["email"]), str(saved["password"]), generated_now=False)
        except (ValueError, KeyError, TypeError) as exc:
            raise SettingsError(
                f"{path} is unreadable ({exc}); delete it to generate a new superuser, "
                "or set CAIRN_ADMIN_EMAIL and CAIRN_ADMIN_PASSWORD"
            ) from exc
    user = Superuser("admin@cairn.local", secrets.token_urlsafe(15), generated_now=True)
    write_private(path, json.dumps({"email": user.email, "password": user.password}) + "\n")
    return user
