"""A revoked device's live connection is cut by a kick, not left for nats-server's walk.

nats-server closes revoked connections while it re-verifies every connection of the
account (kicker.py), which takes seconds in a large tenant. The tenant here holds 1,500
extra connections so that walk is slow enough for the kick to overtake it. Which of the
two closed the device is visible from the client: the walk says
"User Authentication Revoked" before closing, a kick just closes. The control runs the
same disable with the kicker switched off and sees the walk's message.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator

import nats
import pytest

from cairn_common import natsjwt, nkey
from cairn_common.natsauth import connect_options
from pb_hooks_bridge import metrics
from pb_hooks_bridge.kicker import newly_revoked
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant

CROWD = 1500


def test_newly_revoked_lists_added_and_moved_keys_only():
    before = {"UA": 10, "UB": 10, "*": 5}
    after = {"UA": 10, "UB": 20, "UC": 30, "*": 50}
    assert newly_revoked(before, after) == {"UB": 20, "UC": 30}
    assert newly_revoked(after, after) == {}


async def _crowded(admin, nats_env) -> AsyncIterator[dict]:
    """A tenant whose account holds CROWD live connections (users of its signing key)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CROWD + 1000 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tenant = await account_ready(admin, await new_tenant(admin))
    row = await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
    signing = nkey.from_seed(row["signing_seed"], "account")
    crowd: list[nats.NATS] = []
    gate = asyncio.Semaphore(100)

    async def one(n: int) -> None:
        user = nkey.create("user")
        token = natsjwt.encode(natsjwt.user_claims(
            user.public_key.decode(), f"crowd-{n}", issuer_account=row["public_key"],
            pub_allow=["_INBOX.>"], sub_allow=["_INBOX.>"]), signing)
        held = (token, user.seed.decode())
        async with gate:
            crowd.append(await nats.connect(nats_env.url, allow_reconnect=False,
                                            **connect_options(lambda: held)))

    await asyncio.gather(*(one(n) for n in range(CROWD)))
    yield tenant
    await asyncio.gather(*(nc.close() for nc in crowd), return_exceptions=True)


@pytest.fixture
async def crowded_tenant(bridge, admin, nats_env):
    async for tenant in _crowded(admin, nats_env):
        yield tenant


@pytest.fixture
async def crowded_after_restart(bridge, admin, nats_env):
    """The same, made after nats-server restarted under the running bridge: the kicker's
    SYS links (one per server) must have come back by themselves."""
    kicker = bridge.bridge.pusher.kicker

    async def all_up() -> set[str]:
        now = kicker._connected()
        return {sid for _, _, sid in now} if len(now) == len(kicker._links) else set()
    before = await eventually(all_up, 20, "every kicker link up, each on a server")
    nats_env.restart()  # the server comes back with a new id

    async def links_up() -> bool:
        now = kicker._connected()
        return len(now) == len(kicker._links) and not {sid for _, _, sid in now} & before
    await eventually(links_up, 20, "the kicker's links back on the restarted server")
    async for tenant in _crowded(admin, nats_env):
        yield tenant


async def _disable_and_watch(admin, pb_env, nats_env, tenant) -> list[str]:
    """Enroll a device, connect it like an agent (reconnecting), disable it; return the
    errors its client saw once it is closed for good, its last error first."""
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    errors: list[Exception] = []
    closed, reconnected = asyncio.Event(), []

    async def on_closed() -> None:
        closed.set()

    async def on_reconnected() -> None:
        reconnected.append(True)

    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed, errors=errors,
                  allow_reconnect=True, max_reconnect_attempts=3, reconnect_time_wait=0.05,
                  closed_cb=on_closed, reconnected_cb=on_reconnected)
    await admin.update("devices", enrolled.device["id"], {"status": "disabled"})
    await asyncio.wait_for(closed.wait(), 20)
    assert reconnected == [], "a revoked device got back on"
    return [str(e).lower() for e in [nc.last_error, *errors]]


def _kicked() -> float:
    return metrics.KICKS.labels("kicked")._value.get()


async def test_disable_kicks_before_the_walk_and_the_reconnect_is_refused(
        crowded_tenant, bridge, admin, pb_env, nats_env):
    before = _kicked()
    errors = await _disable_and_watch(admin, pb_env, nats_env, crowded_tenant)
    assert _kicked() == before + 1
    assert not any("authentication revoked" in e for e in errors), errors
    # what the reconnect met: the revocation was already in force
    assert any("authorization" in e for e in errors), errors


async def test_kicks_still_overtake_the_walk_after_a_nats_restart(
        crowded_after_restart, bridge, admin, pb_env, nats_env):
    before = _kicked()
    errors = await _disable_and_watch(admin, pb_env, nats_env, crowded_after_restart)
    assert _kicked() == before + 1
    assert not any("authentication revoked" in e for e in errors), errors


async def test_without_the_kicker_the_walk_closes_it(crowded_tenant, bridge, admin, pb_env,
                                                     nats_env):
    pusher = bridge.bridge.pusher
    kicker, pusher.kicker = pusher.kicker, None
    try:
        before = _kicked()
        errors = await _disable_and_watch(admin, pb_env, nats_env, crowded_tenant)
        assert _kicked() == before
        assert any("authentication revoked" in e for e in errors), errors
    finally:
        pusher.kicker = kicker


async def test_kick_touches_only_the_revoked_key(crowded_tenant, bridge, admin, pb_env,
                                                 nats_env):
    """A neighbour in the same tenant stays connected through the disable and the kick."""
    neighbour = await enroll(pb_env.url, admin, await new_device(admin, crowded_tenant))
    nc = await connect(nats_env.url, neighbour.jwt, neighbour.seed)
    await _disable_and_watch(admin, pb_env, nats_env, crowded_tenant)
    assert nc.is_connected
    await nc.flush(timeout=5)
    await nc.close()


def test_revocation_times_are_read_in_any_zone_the_server_uses():
    """nats-server writes `revoked_user` in its own zone: a non-UTC server must not make
    every kick wait for a time it can never read."""
    from pb_hooks_bridge.broadcast import Reply
    from pb_hooks_bridge.kicker import _epoch, _revoked_at

    assert _epoch("2026-12-01T17:07:04Z") == _epoch("2026-12-01T18:07:04+01:00") == 1796144824
    assert _epoch("not a time") is None
    reply = Reply.read(b'{"server": {"name": "n1", "id": "S1"}, "data": {"revoked_user": '
                       b'{"UA": "2026-12-01T18:07:04+01:00"}}}')
    assert _revoked_at(reply, "UA") == 1796144824
    assert _revoked_at(reply, "UB") == -1  # not revoked (yet) there
    assert _revoked_at(None, "UA") is None
