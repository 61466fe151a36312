"""The login file of a least-privilege sidecar (the router): `{"name", "password"}` of its
`sidecars` record, 0600. Written by the bridge's tooling, read by the sidecar."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cairn_common.filemodes import read_private

COLLECTION = "sidecars"


@dataclass(frozen=True)
class SidecarLogin:
    name: str
    password: str

    def to_json(self) -> str:
        return json.dumps({"collection": COLLECTION, "name": self.name,
                           "password": self.password}) + "\n"


class SidecarLoginError(ValueError):
    """A login file is unreadable or malformed; the message names the file and the fix."""


def read_login(path: Path) -> SidecarLogin:
    """The login, refusing a file other local users could read (filemodes)."""
    try:
        doc = json.loads(read_private(path, "the sidecar login"))
    except OSError as exc:
        raise SidecarLoginError(f"cannot read the sidecar login {path}: {exc.strerror}. "
                                "`make run` writes it; by hand: cairn-bridge sidecar-login"
                                ) from None
    except ValueError:
        raise SidecarLoginError(f"{path} is not JSON: expected "
                                '{"name": ..., "password": ...}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) \
            or not isinstance(doc.get("password"), str):
        raise SidecarLoginError(f"{path}: expected string fields name and password")
    return SidecarLogin(doc["name"], doc["password"])
