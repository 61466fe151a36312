"""Quotas belong to the MSP (SPEC §11): every tenant's JetStream use is bounded by default,
and a tenant at its bound is refused (or rolls over) while other tenants keep publishing."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StreamConfig

from cairn_common import creds, natsjwt
from pb_hooks_bridge import limits
from tests.live import account_ready, connect, eventually, new_tenant

MIB = 1024 * 1024
CHUNK = b'{"pad": "' + b"x" * (60 * 1024) + b'"}'  # ~60 KiB per telemetry message


async def _bridge_creds(admin, tenant) -> tuple[str, str]:
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    return creds.parse(row["creds"])


async def _stream_bounds(url, admin, tenant):
    nc = await connect(url, *await _bridge_creds(admin, tenant))
    try:
        return (await nc.jetstream().stream_info("TELEMETRY")).config
    finally:
        await nc.close()


async def test_default_tenant_is_bounded(bridge, admin, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    account = await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
    claims = natsjwt.decode(account["jwt"])["nats"]["limits"]
    assert claims["disk_storage"] == limits.LIMIT_KEYS["jetstream_storage"][1] > 0
    assert claims["mem_storage"] == limits.LIMIT_KEYS["jetstream_memory"][1] > 0
    config = await _stream_bounds(nats_env.url, admin, tenant)
    assert config.max_bytes == limits.STREAM_KEYS["telemetry_max_bytes"] > 0
    assert config.max_age and config.max_age > 0
    assert config.max_msg_size == MIB


async def test_full_stream_rolls_over_and_never_blocks_another_tenant(bridge, admin, nats_env):
    small = await account_ready(admin, await new_tenant(
        admin, limits={"telemetry_max_bytes": MIB, "jetstream_storage": 4 * MIB}))
    other = await account_ready(admin, await new_tenant(admin))
    nc_small = await connect(nats_env.url, *await _bridge_creds(admin, small))
    nc_other = await connect(nats_env.url, *await _bridge_creds(admin, other))
    try:
        js_small, js_other = nc_small.jetstream(), nc_other.jetstream()
        for i in range(40):  # ~2.4 MiB into a 1 MiB stream
            await js_small.publish(f"agents.d{i % 4}.telemetry.system", CHUNK)
        info = await js_small.stream_info("TELEMETRY")
        assert info.state.bytes <= MIB, "the stream grew past its bound"
        assert info.state.last_seq == 40  # the newest telemetry always went in
        assert info.state.first_seq > 1  # the oldest made room
        ack = await js_other.publish("agents.d1.telemetry.system", b'{"cpu_percent": 1}')
        assert ack.seq == 1  # the other tenant is unaffected
    finally:
        await nc_small.close()
        await nc_other.close()


async def test_tenant_at_its_quota_is_refused_and_others_keep_publishing(bridge, admin,
                                                                           nats_env):
    """A stream made by one of the tenant's service users, without a size of its own, is
    still inside the tenant's jetstream_storage quota."""
    capped = await account_ready(admin, await new_tenant(
        admin, limits={"telemetry_max_bytes": MIB, "jetstream_storage": 2 * MIB}))
    other = await account_ready(admin, await new_tenant(admin))
    nc = await connect(nats_env.url, *await _bridge_creds(admin, capped))
    nc_other = await connect(nats_env.url, *await _bridge_creds(admin, other))
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(StreamConfig(name="EXTRA", subjects=["extra.>"]))
        refused = None
        for _ in range(60):  # ~3.6 MiB against a 2 MiB quota (1 MiB of it TELEMETRY's)
            try:
                await js.publish("extra.fill", CHUNK)
            except nats.js.errors.APIError as exc:
                refused = exc
                break
        assert refused is not None, "the tenant wrote past its quota"
        assert "resources" in str(refused).lower() or "exceeded" in str(refused).lower()
        ack = await nc_other.jetstream().publish("agents.d1.telemetry.system", b"{}")
        assert ack.stream == "TELEMETRY"
    finally:
        await nc.close()
        await nc_other.close()


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"telemetry_max_bytes": 1000}, "telemetry_max_bytes must be an integer >= 1048576"),
        ({"telemetry_max_bytes": 8 * MIB, "jetstream_storage": 4 * MIB},
         "must not exceed limits.jetstream_storage"),
        ({"telemetry_max_bytes": "big"}, "telemetry_max_bytes must be an integer"),
    ],
)
def test_bad_stream_limits_are_named(bad, expected):
    with pytest.raises(limits.LimitsError, match=expected):
        limits.account_limits(bad)


def test_good_stream_limits_pass():
    parsed = limits.account_limits({"telemetry_max_bytes": 2 * MIB, "jetstream_storage": -1})
    assert parsed["disk_storage"] == -1
    assert limits.telemetry_max_bytes({"telemetry_max_bytes": 2 * MIB}) == 2 * MIB
