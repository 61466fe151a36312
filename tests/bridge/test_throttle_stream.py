"""Every tenant gets the routers' CAIRN_THROTTLE KV bucket, in memory and bounded inside
its `jetstream_memory` quota (pb_hooks_bridge/streams.py)."""

from __future__ import annotations

from types import SimpleNamespace

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType
from nats.js.errors import KeyNotFoundError, NotFoundError

from cairn_common import creds
from pb_hooks_bridge import streams
from pb_hooks_bridge.limits import MIB
from pb_hooks_bridge.streams import THROTTLE, THROTTLE_MAX_BYTES, throttle_max_bytes
from rule_router import shared_throttle
from tests.live import account_ready, connect, eventually, new_tenant


async def _js(admin, nats_env, tenant):
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    nc = await connect(nats_env.url, *creds.parse(row["creds"]))
    return nc, nc.jetstream(timeout=5)


async def _config(js):
    try:
        return (await js.stream_info(THROTTLE)).config
    except NotFoundError:
        return None


async def test_every_tenant_gets_a_bounded_throttle_bucket(bridge, admin, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    nc, js = await _js(admin, nats_env, tenant)
    try:
        config = await _config(js)  # made before the account shows as ready
        assert config is not None
        assert config.subjects == ["$KV.CAIRN_THROTTLE.>"]
        assert config.storage == StorageType.MEMORY
        assert config.max_bytes == THROTTLE_MAX_BYTES == 4 * MIB
        assert config.max_msgs_per_subject == 1
        assert config.allow_msg_ttl is True and config.allow_direct is True
        assert config.discard == DiscardPolicy.OLD
        assert config.max_age == pytest.approx(streams.THROTTLE_MAX_AGE)
        kv = await js.key_value(streams.THROTTLE_BUCKET)  # a KV bucket to nats-py too
        await kv.create("k", b"v", msg_ttl=30)
        assert (await kv.get("k")).value == b"v"
    finally:
        await nc.close()


async def test_the_bucket_follows_the_memory_quota(bridge, admin, nats_env):
    tenant = await account_ready(admin, await new_tenant(
        admin, limits={"jetstream_memory": MIB}))
    nc, js = await _js(admin, nats_env, tenant)
    try:
        assert (await _config(js)).max_bytes == MIB // 2

        async def bound(expected: int | None) -> bool:
            config = await _config(js)
            return (config.max_bytes if config else None) == expected

        for memory, expected in ((64 * 1024, None), (-1, THROTTLE_MAX_BYTES)):
            await admin.update("tenants", tenant["id"],
                               {"limits": {"jetstream_memory": memory}})
            await eventually(lambda e=expected: bound(e), 10, f"bucket bound {expected}")
        assert (await admin.get("tenants", tenant["id"]))["error"] == ""
    finally:
        await nc.close()


def test_throttle_bound_follows_the_memory_quota():
    def account(memory: int) -> SimpleNamespace:
        return SimpleNamespace(limits={"mem_storage": memory})

    assert throttle_max_bytes(account(8 * MIB)) == 4 * MIB  # the default quota
    assert throttle_max_bytes(account(-1)) == 4 * MIB
    assert throttle_max_bytes(account(MIB)) == MIB // 2
    assert throttle_max_bytes(account(64 * 1024)) < streams.MIN_THROTTLE_BYTES


def test_the_bridge_makes_the_bucket_the_router_uses():
    assert streams.THROTTLE_BUCKET == shared_throttle.BUCKET
    assert streams.THROTTLE == shared_throttle.STREAM


async def test_the_bucket_comes_back_after_a_nats_restart(bridge, admin, nats_env):
    """A memory stream does not survive nats-server's restart: the bridge makes it again
    (its catch-up pass after the reconnect), so routers share windows again; the file
    stream next to it (TELEMETRY) is kept as it was, the control that the restart was real
    and only memory went."""
    tenant = await account_ready(admin, await new_tenant(admin))
    nc, js = await _js(admin, nats_env, tenant)
    try:
        kv = await js.key_value(streams.THROTTLE_BUCKET)
        await kv.create("k", b"v", msg_ttl=300)
        await js.publish(f"agents.x.telemetry.{tenant['id']}", b"{}")
    finally:
        await nc.close()
    nats_env.restart()

    async def remade():
        nc, js = await _js(admin, nats_env, tenant)
        try:
            config = await _config(js)
            if config is None:
                return None
            kv = await js.key_value(streams.THROTTLE_BUCKET)
            kept = (await js.stream_info("TELEMETRY")).state.messages
            try:
                await kv.get("k")
                value = "kept"
            except KeyNotFoundError:
                value = "gone"
            return config, kept, value
        except (nats.errors.Error, TimeoutError):  # JetStream still starting: ask again
            return None
        finally:
            await nc.close()

    config, kept, value = await eventually(remade, 30, "the throttle bucket made again")
    assert config.storage == StorageType.MEMORY and config.max_bytes == THROTTLE_MAX_BYTES
    assert value == "gone"  # memory: the window went with the restart
    assert kept >= 1  # the file stream kept its message

    async def audited() -> int:
        rows = await admin.list("audit_log", (
            f'tenant = "{tenant["id"]}" && action = "stream.created" '
            f'&& target = "streams/{THROTTLE}"'))
        return len(rows) if len(rows) >= 2 else 0
    assert await eventually(audited, 10, "the bucket made twice, in the audit log") == 2
