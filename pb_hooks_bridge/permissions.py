"""Role rows -> literal NATS permissions for one identity, with subject validation.

`{code}` and `{tenant}` are expanded here, before signing, so every user JWT carries its
literal subjects (NATS's own templates only work under scoped signing keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_SUBJECT = 256
MAX_SUBJECTS = 256
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ALLOWED_PLACEHOLDERS = {"code", "tenant"}
ROLE_LISTS = ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny")


class RoleError(ValueError):
    """A role's subjects are unusable; the message names the field and the subject."""


@dataclass(frozen=True)
class Permissions:
    pub_allow: list[str]
    pub_deny: list[str]
    sub_allow: list[str]
    sub_deny: list[str]
    allow_responses: bool


def check_subject(subject: object, where: str) -> str:
    """A publish/subscribe subject: dot-separated non-empty tokens, wildcards whole tokens."""
    if not isinstance(subject, str):
        raise RoleError(f"{where}: subject must be a string, got {type(subject).__name__}")
    if not subject or len(subject) > MAX_SUBJECT:
        raise RoleError(f"{where}: subject must be 1..{MAX_SUBJECT} characters")
    if any(ch.isspace() for ch in subject):
        raise RoleError(f"{where}: subject {subject!r} contains whitespace")
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if token == "":
            raise RoleError(f"{where}: subject {subject!r} has an empty token")
        if token == ">" and index != len(tokens) - 1:
            raise RoleError(f"{where}: subject {subject!r}: '>' must be the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise RoleError(
                f"{where}: subject {subject!r}: wildcards must be whole tokens"
            )
    return subject


def validate_role(role: dict[str, Any]) -> None:
    """Check a role's templates without expanding them (placeholders are allowed tokens)."""
    expand_role(role, code="placeholder-code", tenant="placeholder-tenant")


def expand_role(role: dict[str, Any], code: str, tenant: str) -> Permissions:
    name = role.get("name", "?")
    lists: dict[str, list[str]] = {}
    for field in ROLE_LISTS:
        raw = role.get(field)
        if raw in (None, ""):
            raw = []
        if not isinstance(raw, list):
            raise RoleError(f"role {name}: {field} must be a list of subjects")
        if len(raw) > MAX_SUBJECTS:
            raise RoleError(f"role {name}: {field} has more than {MAX_SUBJECTS} subjects")
        expanded = []
        for template in raw:
            if not isinstance(template, str):
                raise RoleError(f"role {name}: {field}: subject must be a string")
            subject = _expand(template, code, tenant, f"role {name}: {field}")
            expanded.append(check_subject(subject, f"role {name}: {field}"))
        lists[field] = expanded
    return Permissions(
        pub_allow=lists["publish_allow"],
        pub_deny=lists["publish_deny"],
        sub_allow=lists["subscribe_allow"],
        sub_deny=lists["subscribe_deny"],
        allow_responses=bool(role.get("allow_responses")),
    )


def _expand(template: str, code: str, tenant: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in _ALLOWED_PLACEHOLDERS:
            raise RoleError(
                f"{where}: unknown placeholder {{{key}}} in {template!r} (use {{code}}, {{tenant}})"
            )
        return code if key == "code" else tenant

    return _PLACEHOLDER.sub(replace, template)
