"""The lease bucket in an account whose JetStream is off: waited out for a while (a node just
started may not have applied the account's JetStream limits yet), then a clear error."""

from __future__ import annotations

import time

import nats
import pytest

from pb_hooks_bridge import leader
from pb_hooks_bridge.errors import BridgeError


async def test_an_account_without_jetstream_is_a_clear_error_after_a_wait(nats_env,
                                                                         monkeypatch):
    monkeypatch.setattr(leader, "ACCOUNT_JS_WAIT", 0.6)
    nc = await nats.connect(nats_env.url, user_credentials=str(nats_env.layout.sys_user_creds))
    try:
        started = time.monotonic()
        with pytest.raises(BridgeError, match="10039"):
            await leader.Lease(retry=0.1, bucket="CAIRN_TEST_NO_JS").open(nc)
        assert time.monotonic() - started >= 0.6  # waited, did not give up at once
    finally:
        await nc.close()


async def test_an_account_with_jetstream_opens_the_lease_at_once(bridge, nats_env):
    """Control: the bridge's own control account makes its bucket (the session's bridge
    leads with it)."""
    assert bridge.bridge.leadership.lease.kv is not None
