"""Emptying an account before it is deleted when the bridge holds no connection into it
(its tenant row was deleted while the bridge was away, or before a link came up).

The JetStream data of an account removed from the resolver stays on the server's disk for
good, so its streams are deleted first. Only the operator key is needed for that: the
operator re-issues the account JWT it signed, adding a one-off signing key and lifting a
deactivation (connections allowed, the revoke-everyone entry dropped); a one-off user
signed by that key deletes the streams; then the caller deletes the account.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import nats

from cairn_common import natsjwt, nkey
from cairn_common.nats_urls import parse_nats_urls
from cairn_common.natsauth import connect_options
from pb_hooks_bridge.accounts import ALL_USERS
from pb_hooks_bridge.pusher import Pusher

log = logging.getLogger(__name__)

CLEANUP_USER = "cairn-cleanup"


def cleanup_claims(current: dict[str, Any], signing_public: str) -> dict[str, Any]:
    """The account's claims as the server holds them, opened up for one cleanup user."""
    claims = {k: v for k, v in current.items() if k not in ("iss", "jti", "exp")}
    body = dict(claims.get("nats") or {})
    body["signing_keys"] = [*(body.get("signing_keys") or []), signing_public]
    limits = dict(body.get("limits") or {})
    limits["conn"] = -1
    if not limits.get("disk_storage") and not limits.get("mem_storage"):
        limits["disk_storage"] = limits["mem_storage"] = -1  # JetStream on, to reach the data
    body["limits"] = limits
    revocations = dict(body.get("revocations") or {})
    revocations.pop(ALL_USERS, None)
    if revocations:
        body["revocations"] = revocations
    else:
        body.pop("revocations", None)
    claims["nats"] = body
    claims["iat"] = max(int(time.time()), int(current.get("iat") or 0) + 1)
    return claims


async def purge_account_streams(pusher: Pusher, nats_url: str, account_public: str,
                                ) -> list[str]:
    """Delete every stream of the account; returns their names. Raises on NATS errors."""
    token = await pusher.lookup(account_public)
    if not token:
        return []  # the server does not know the account: nothing it could hold
    current = natsjwt.decode(token, verify=False)
    signing = nkey.create("account")
    await pusher.send_update(natsjwt.encode(
        cleanup_claims(current, signing.public_key.decode()), pusher.operator))
    return await delete_streams_as(nats_url, account_public, signing)


async def delete_streams_as(nats_url: str, account_public: str, signing: Any) -> list[str]:
    """Delete every stream of the account as a short-lived user signed by `signing` (a
    signing key the account's JWT on the servers lists); returns their names. Raises on
    NATS errors."""
    user = nkey.create("user")
    user_jwt = natsjwt.encode(natsjwt.user_claims(
        user.public_key.decode(), CLEANUP_USER, issuer_account=account_public,
        pub_allow=["$JS.API.>"], sub_allow=["_INBOX.>"], expires=int(time.time()) + 300),
        signing)
    seed = user.seed.decode()
    nc = await nats.connect(list(parse_nats_urls(nats_url)), name=CLEANUP_USER,
                            allow_reconnect=False, connect_timeout=5,
                            **connect_options(lambda: (user_jwt, seed)))
    deleted: list[str] = []
    try:
        js = nc.jetstream(timeout=5)
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
            deleted.append(info.config.name)
    finally:
        await nc.close()
    return deleted
