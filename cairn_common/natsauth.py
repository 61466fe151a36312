"""nats-py authentication from credentials held in memory (no .creds file on disk).

The provider is called at every (re)connect, so renewed credentials are picked up.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import nkeys

CredsProvider = Callable[[], tuple[str, str]]  # -> (user JWT, user seed)


def connect_options(provider: CredsProvider) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` that authenticate with `provider()`'s creds."""

    def user_jwt_cb() -> bytes:
        return provider()[0].encode()

    def signature_cb(nonce: str) -> bytes:
        kp = nkeys.from_seed(bytearray(provider()[1].encode()))
        try:
            return base64.b64encode(kp.sign(nonce.encode()))
        finally:
            kp.wipe()

    return {"user_jwt_cb": user_jwt_cb, "signature_cb": signature_cb}


# Every identity Cairn issues has an inbox prefix of its own, and its role lets it subscribe
# only under that prefix: nobody but a `service` user can read another identity's replies.
# Device codes never contain "_" (pattern [a-z0-9-]), so a device can never be given a
# service user's (or a person's) prefix by choosing its code.
def device_inbox(code: str) -> str:
    """Inbox prefix of a device: its replies arrive on `_INBOX_<code>.<token>`."""
    return f"_INBOX_{code}"


def service_inbox(name: str) -> str:
    """Inbox prefix of a service user or sidecar (`nats_users.name`)."""
    return f"_INBOX_svc_{name}"


def person_inbox(user_id: str) -> str:
    """Inbox prefix of a person (a PocketBase user id, [a-z0-9]): the same in every tenant
    and for every login of theirs, never another person's or a device's."""
    return f"_INBOX_person_{user_id}"


def history_subject(user_id: str, kind: str = "*") -> str:
    """Where a person asks the bridge for history (`cairn.history.<kind>.<user id>`): their
    JWT may publish only with their own id, and the bridge answers only to that id's
    inbox, so nobody asks in a colleague's name or spends a colleague's share."""
    return f"cairn.history.{kind}.{user_id}"
