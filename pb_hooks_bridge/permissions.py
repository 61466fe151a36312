"""Role rows -> literal NATS permissions for one identity, with subject validation.

`{code}`, `{tenant}` and `{inbox}` are expanded here, before signing, so every user JWT
carries its literal subjects (NATS's own templates only work under scoped signing keys).
A device's permissions must also stay inside its own subjects (`confine_to_device`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_SUBJECT = 256
MAX_SUBJECTS = 256
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ALLOWED_PLACEHOLDERS = {"code", "tenant", "inbox"}
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
    expand_role(role, code="placeholder-code", tenant="placeholder-tenant",
                inbox="_INBOX_placeholder")


def expand_role(role: dict[str, Any], code: str, tenant: str, inbox: str) -> Permissions:
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
            subject = _expand(template, {"code": code, "tenant": tenant, "inbox": inbox},
                              f"role {name}: {field}")
            expanded.append(check_subject(subject, f"role {name}: {field}"))
        lists[field] = expanded
    return Permissions(
        pub_allow=lists["publish_allow"],
        pub_deny=lists["publish_deny"],
        sub_allow=lists["subscribe_allow"],
        sub_deny=lists["subscribe_deny"],
        allow_responses=bool(role.get("allow_responses")),
    )


def _expand(template: str, values: dict[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in _ALLOWED_PLACEHOLDERS:
            raise RoleError(
                f"{where}: unknown placeholder {{{key}}} in {template!r} "
                "(use {code}, {tenant}, {inbox})"
            )
        return values[key]

    return _PLACEHOLDER.sub(replace, template)


def confine_to_device(perms: Permissions, code: str, inbox: str) -> Permissions:
    """A device's permissions: refused when they reach past `agents.<code>.>` and the
    device's inbox, and never publishing where the device listens.

    An empty allow list means "everything" to NATS, so each list must be non-empty; deny
    lists only narrow and need no check. Replies to requests the device received travel
    through `allow_responses`. A device that could publish on a subject it subscribes to
    could send itself a request with any reply subject and "answer" it: allow_responses
    would then let it publish anywhere in the tenant (a reviewer ran `exec` on another
    agent that way). So every subscribe subject is also denied for publishing.
    """
    roots = (["agents", code], [inbox])
    for field, allowed in (("publish_allow", perms.pub_allow),
                           ("subscribe_allow", perms.sub_allow)):
        if not allowed:
            raise RoleError(f"{field} is empty, which NATS reads as every subject; a device "
                            f"role must list subjects under agents.{code}.> or {inbox}.>")
        for subject in allowed:
            tokens = subject.split(".")
            if not any(_within(tokens, root) for root in roots):
                raise RoleError(
                    f"{field}: {subject!r} is outside the device's own subjects "
                    f"(agents.{code}.> and {inbox}.>); the bridge signs no wider device role"
                )
    pub_deny = list(perms.pub_deny)
    pub_deny += [s for s in perms.sub_allow if s not in pub_deny]
    return Permissions(pub_allow=perms.pub_allow, pub_deny=pub_deny, sub_allow=perms.sub_allow,
                       sub_deny=perms.sub_deny, allow_responses=perms.allow_responses)


def _within(tokens: list[str], root: list[str]) -> bool:
    """Every subject `tokens` matches lies under `root.>` (root tokens literal, then more)."""
    return len(tokens) > len(root) and tokens[:len(root)] == root
