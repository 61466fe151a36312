"""Requests a device makes of the control plane over its own NATS connection, instead of
logging in to PocketBase with its password (SPEC §12: no scheduled password logins).

- `agents.<code>.ctl.renew`, body `{"public_key", "jwt"}` (the key the device holds and
  the JWT it wants replaced) -> `{"status": "ok", "jwt", "expires"}`: a new JWT for the
  same key once the current one is due for renewal (past half its lifetime), else an
  error that says when.
- `agents.<code>.ctl.config`, body `{}` -> `{"status": "ok", "config", "updated"}`: the
  device's desired config (`devices.config`).
- `agents.<code>.cmd.config` (bridge -> agent, no reply needed): the desired config
  changed; the agent fetches it with `ctl.config`. The hint carries nothing, so a forged
  one costs a fetch and nothing else.

Errors are `{"status": "error", "error", "timestamp"}` as everywhere (SPEC §6).
"""

from __future__ import annotations

RENEW = "renew"
CONFIG = "config"
KINDS = (RENEW, CONFIG)
CONFIG_HINT = "config"  # the command name of the "config changed" hint
MAX_REQUEST_BYTES = 16 * 1024  # a renewal request is ~1 KB


def control_subject(code: str, kind: str) -> str:
    return f"agents.{code}.ctl.{kind}"


def hint_subject(code: str) -> str:
    return f"agents.{code}.cmd.{CONFIG_HINT}"
