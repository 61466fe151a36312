"""Every tenant gets an ALERTS stream next to TELEMETRY, bounded inside its JetStream quota
(pb_hooks_bridge/streams.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nats.js.api import DiscardPolicy, StorageType
from nats.js.errors import NotFoundError

from cairn_common import creds
from pb_hooks_bridge.limits import MIB
from pb_hooks_bridge.streams import ALERTS_MAX_BYTES, alerts_max_bytes
from tests.live import account_ready, connect, eventually, new_tenant


async def _js(admin, nats_env, tenant):
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    nc = await connect(nats_env.url, *creds.parse(row["creds"]))
    return nc, nc.jetstream(timeout=5)


async def _config(js, name: str):
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None


async def test_alerts_are_stored_in_a_bounded_stream(bridge, admin, nats_env):
    tenant = await account_ready(admin, await new_tenant(admin))
    nc, js = await _js(admin, nats_env, tenant)
    try:
        config = await eventually(lambda: _config(js, "ALERTS"), 10, "ALERTS stream")
        assert config.subjects == ["alerts.>"]
        assert config.storage == StorageType.FILE
        assert config.max_age == pytest.approx(bridge.bridge.config.telemetry_max_age)
        assert config.max_bytes == ALERTS_MAX_BYTES == 64 * MIB
        assert config.max_msg_size == MIB
        assert config.discard == DiscardPolicy.OLD
        assert config.duplicate_window == pytest.approx(120)
        assert config.allow_direct is True
        ack = await js.publish("alerts.x", b'{"alert": "high-cpu"}', headers={
            "Nats-Msg-Id": "one"})
        assert ack.stream == "ALERTS"
        again = await js.publish("alerts.x", b'{"alert": "high-cpu"}', headers={
            "Nats-Msg-Id": "one"})
        assert again.duplicate and again.seq == ack.seq  # de-duplicated in the window
        stored = await js.get_msg("ALERTS", ack.seq)
        assert stored.subject == "alerts.x" and stored.data == b'{"alert": "high-cpu"}'
        telemetry = await js.publish("agents.d1.telemetry.system", b"{}")
        assert telemetry.stream == "TELEMETRY"  # alerts and telemetry do not mix
    finally:
        await nc.close()


async def test_alerts_share_the_quota_with_telemetry(bridge, admin, nats_env):
    """ALERTS takes half the room the quota leaves beside TELEMETRY; when the room changes
    the stream that shrinks goes first (the other order would pass the quota and be
    refused), and with no room left ALERTS goes."""
    def limits(telemetry: int) -> dict:
        return {"limits": {"telemetry_max_bytes": telemetry, "jetstream_storage": 4 * MIB}}

    tight = await account_ready(admin, await new_tenant(admin, **limits(2 * MIB)))
    full = await account_ready(admin, await new_tenant(admin, **limits(3 * MIB)))
    nc, js = await _js(admin, nats_env, tight)
    nc_full, js_full = await _js(admin, nats_env, full)
    try:
        config = await eventually(lambda: _config(js, "ALERTS"), 10, "ALERTS stream")
        assert config.max_bytes == MIB
        assert await _config(js_full, "ALERTS") is None  # under 1 MiB of room: none made
        assert (await _config(js_full, "TELEMETRY")).max_bytes == 3 * MIB

        async def bounds(telemetry: int, alerts: int | None) -> bool:
            t, a = await _config(js, "TELEMETRY"), await _config(js, "ALERTS")
            return t.max_bytes == telemetry and (a.max_bytes if a else None) == alerts

        for telemetry, alerts in ((MIB, 3 * MIB // 2), (3 * MIB, MIB // 2), (4 * MIB, None)):
            await admin.update("tenants", tight["id"], limits(telemetry))
            await eventually(lambda t=telemetry, a=alerts: bounds(t, a), 10,
                             f"TELEMETRY {telemetry}, ALERTS {alerts}")
        assert (await admin.get("tenants", tight["id"]))["error"] == ""
    finally:
        await nc.close()
        await nc_full.close()


def test_alerts_bound_follows_the_quota():
    def account(storage: int, telemetry: int) -> SimpleNamespace:
        return SimpleNamespace(limits={"disk_storage": storage}, telemetry_max_bytes=telemetry)

    assert alerts_max_bytes(account(512 * MIB, 256 * MIB)) == 64 * MIB
    assert alerts_max_bytes(account(-1, 256 * MIB)) == 64 * MIB  # unlimited quota
    assert alerts_max_bytes(account(4 * MIB, 2 * MIB)) == MIB
    assert alerts_max_bytes(account(4 * MIB, 3 * MIB)) == MIB // 2
    assert alerts_max_bytes(account(4 * MIB, 4 * MIB)) == 0
