"""SPEC §11 for the routers' shared throttle bucket (CAIRN_THROTTLE,
rule_router/shared_throttle.py), on the real stack: only the router's own user reads and
writes it, and only its own identity's keys. A device and a viewer can neither write,
read, watch nor inspect it, and what the router wrote stays as it was; the router's
reads and writes work (positive control), and so does the device's own telemetry."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest

from cairn_common import creds
from cairn_common.natsauth import device_inbox, service_inbox
from rule_router.shared_throttle import BUCKET, EXPECTED_LAST, PREFIX, STREAM, TTL_HEADER
from tests.live import (
    ROLLOUT_WAIT,
    account_ready,
    connect,
    enroll,
    eventually,
    new_device,
    new_tenant,
    uid,
)
from tests.router.harness import service_creds

pytestmark = pytest.mark.timeout(90)
REFUSED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error)
VALUE = b'{"until":4102444800.0,"seq":1}'


@pytest.fixture
async def tenant(bridge, admin):
    return await account_ready(admin, await new_tenant(admin))


async def _router(admin, nats_env, tenant, identity, errors: list[Exception]) -> nats.NATS:
    async def issued() -> tuple[str, str] | None:
        return identity.creds_for(await service_creds(admin, tenant, identity.name))
    jwt, seed = await eventually(issued, ROLLOUT_WAIT, "the router's JWT in the tenant")
    return await connect(nats_env.url, jwt, seed, errors,
                         inbox_prefix=service_inbox(identity.name))


async def _bridge(admin, nats_env, tenant) -> nats.NATS:
    row = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    return await connect(nats_env.url, *creds.parse(row["creds"]))


async def _viewer(admin, nats_env, tenant, errors: list[Exception]) -> nats.NATS:
    name = uid("viewer")
    row = await admin.create("nats_users", {"tenant": tenant["id"], "name": name,
                                            "role": "viewer", "active": True})
    done = await eventually(lambda: admin.first(
        "nats_users", f'id = "{row["id"]}" && creds != ""'), 10)
    return await connect(nats_env.url, *creds.parse(done["creds"]), errors,
                         inbox_prefix=service_inbox(name))


async def _barrier(*conns: nats.NATS) -> None:
    for nc in conns:  # SPEC §10: two flushes
        await nc.flush()
        await asyncio.sleep(0)
        await nc.flush()


def _violations(errors: list[Exception]) -> list[str]:
    return [str(e) for e in errors if "permissions violation" in str(e).lower()]


async def _attacks(nc: nats.NATS, key: str) -> None:
    """Every way at the bucket: write, overwrite, read (direct and API), inspect, purge."""
    js = nc.jetstream(timeout=1)
    for attempt in (
        lambda: js.publish(PREFIX + key, b'{"until":0,"seq":null}'),
        lambda: js.publish(PREFIX + key, b"x", headers={EXPECTED_LAST: "0"}),
        lambda: js.get_msg(STREAM, subject=PREFIX + key, direct=True),
        lambda: js.get_msg(STREAM, seq=1, direct=True),
        lambda: js.get_msg(STREAM, seq=1),
        lambda: js.stream_info(STREAM),
        lambda: js.key_value(BUCKET),
        lambda: js.purge_stream(STREAM),
        lambda: js.delete_stream(STREAM),
    ):
        with pytest.raises(REFUSED):
            await attempt()


async def test_only_the_router_uses_the_bucket_and_only_its_own_keys(
        tenant, admin, nats_env, router_identity):
    errors: list[Exception] = []
    router = await _router(admin, nats_env, tenant, router_identity, errors)
    bridge = await _bridge(admin, nats_env, tenant)
    mine, other = f"{router_identity.name}.{uid('k')}", f"cairn-other.{uid('k')}"
    try:
        js = router.jetstream(timeout=5)
        # positive control: create, compare-and-set, read back (what shared_throttle does)
        ack = await js.publish(PREFIX + mine, VALUE, headers={EXPECTED_LAST: "0",
                                                              TTL_HEADER: "60"})
        assert ack.stream == STREAM
        again = await js.publish(PREFIX + mine, VALUE, headers={EXPECTED_LAST: str(ack.seq),
                                                                TTL_HEADER: "60"})
        got = await js.get_msg(STREAM, subject=PREFIX + mine, direct=True)
        assert got.seq == again.seq and got.data == VALUE
        assert _violations(errors) == []
        # refused: another identity's keys, and everything else about the bucket
        await _attacks(router, other)
        assert len(_violations(errors)) >= 5
        with pytest.raises(nats.js.errors.NotFoundError):  # nothing got in
            await bridge.jetstream().get_msg(STREAM, subject=PREFIX + other)
    finally:
        await router.close()
        await bridge.close()


async def test_devices_and_viewers_cannot_touch_the_bucket(tenant, admin, pb_env, nats_env,
                                                            router_identity):
    x = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = x.device["code"]
    device_errors: list[Exception] = []
    viewer_errors: list[Exception] = []
    router = await _router(admin, nats_env, tenant, router_identity, [])
    device = await connect(nats_env.url, x.jwt, x.seed, device_errors,
                           inbox_prefix=device_inbox(code))
    viewer = await _viewer(admin, nats_env, tenant, viewer_errors)
    bridge = await _bridge(admin, nats_env, tenant)
    key = f"{router_identity.name}.{uid('k')}"
    watched: list[Any] = []

    async def watch(msg) -> None:
        watched.append(msg)

    try:
        ack = await router.jetstream(timeout=5).publish(
            PREFIX + key, VALUE, headers={EXPECTED_LAST: "0", TTL_HEADER: "60"})
        for nc, errors in ((device, device_errors), (viewer, viewer_errors)):
            await nc.subscribe(f"$KV.{BUCKET}.>", cb=watch)
            await _barrier(nc)
            await eventually(lambda e=errors: _ready(_violations(e)), 5, "subscription refused")
            await _attacks(nc, key)
            assert len(_violations(errors)) >= 6
        # the router writes again: nobody watched it, and the entry is the router's
        await router.jetstream(timeout=5).publish(
            PREFIX + key, VALUE, headers={EXPECTED_LAST: str(ack.seq), TTL_HEADER: "60"})
        await _barrier(router, device, viewer)
        assert watched == []
        stored = await bridge.jetstream().get_msg(STREAM, subject=PREFIX + key)
        assert stored.data == VALUE and stored.seq > ack.seq
        assert json.loads(stored.data)["seq"] == 1
        # positive control: the device's own telemetry still goes in
        telemetry = await device.jetstream(timeout=5).publish(
            f"agents.{code}.telemetry.system", b'{"cpu_percent": 1}')
        assert telemetry.stream == "TELEMETRY"
    finally:
        for nc in (router, device, viewer, bridge):
            await nc.close()


async def _ready(value):
    return value or None
