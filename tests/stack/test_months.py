"""Months in minutes: the whole `make run` stack with one-minute JWTs, for over four
lifetimes, under steady telemetry, rule firings, command rows and direct pings
(bench/soak.py drives and judges it; `python -m bench soak` runs it for 30 minutes).

Every identity (the demo agent, the bridge's tenant links, the router, the demo service
user) must be renewed ahead of expiry, again and again: every telemetry document produced
its alert (kept in ALERTS), every command row ran exactly once, every direct ping was
answered, the device never showed offline, no connection was closed by the server for an
expired JWT, and revocation stayed fast throughout.
"""

from __future__ import annotations

import pytest

from bench.soak import Soak

TTL = 60
LIFETIMES = 4.3


@pytest.mark.timeout(600)
async def test_four_jwt_lifetimes_nothing_lost_nothing_doubled(tmp_path):
    soak = Soak(tmp_path, TTL, revoke_every=30.0)
    await soak.start()
    try:
        f = await soak.run(LIFETIMES * TTL)
    finally:
        await soak.stop()
    assert f.commands >= 60
    assert not f.commands_failed, f.commands_failed
    assert f.commands_twice == 0 and f.commands_missing == 0
    assert not f.pings_failed, f.pings_failed
    assert not f.offline_seen, f.offline_seen
    assert f.telemetry >= f.seconds / 5 * 0.8, (f.telemetry, f.seconds)
    assert f.alerts_lost == 0, f"{f.alerts_lost} of {f.telemetry} alerts lost"
    for part in ("bridge", "router"):
        assert f.expired_closes[part] == 0, (part, f.expired_closes)
        assert f.renewals[part] >= 3, (part, f.renewals)
    assert not f.agent_refusals, f.agent_refusals
    assert len(f.revocations) >= 7
    p99 = f.revocation_p99()
    assert p99 is not None and p99 < 1.0, sorted(f.revocations)
