"""Presence paces the first `online` of many devices at once (pb_hooks_bridge/presence.py
ONLINE_BUDGET): a fleet coming up is written over several passes, so PocketBase keeps
room for identity work; the devices put off are written by the next passes, none lost."""

from __future__ import annotations

import asyncio
import time

from pb_hooks_bridge import presence as presence_mod
from pb_hooks_bridge.presence import Presence
from tests.live import new_device, new_tenant

DEVICES = 24


async def _fleet(admin) -> tuple[dict, list[dict]]:
    tenant = await new_tenant(admin)
    devices = await asyncio.gather(*(new_device(admin, tenant) for _ in range(DEVICES)))
    return tenant, list(devices)


async def _online(admin, tenant) -> int:
    rows = await admin.list("devices", f'tenant = "{tenant["id"]}" && online = true')
    return len(rows)


def _beat(presence: Presence, tenant: dict, devices: list[dict]) -> None:
    now = time.monotonic()
    for device in devices:
        presence.pending[(tenant["id"], device["code"])] = now


async def test_a_fleet_coming_up_is_written_over_several_passes(bridge, admin, monkeypatch):
    monkeypatch.setattr(presence_mod, "ONLINE_BUDGET", 5.0)  # 10 per pass (FLUSH_EVERY 2 s)
    per_pass = int(5.0 * presence_mod.FLUSH_EVERY)
    tenant, devices = await _fleet(admin)
    presence = Presence(bridge.bridge.pb, bridge.bridge.commands)
    _beat(presence, tenant, devices)
    await presence.flush()
    assert await _online(admin, tenant) == per_pass
    assert len(presence.pending) == DEVICES - per_pass  # put off, not dropped
    await presence.flush()
    assert await _online(admin, tenant) == 2 * per_pass
    await presence.flush()
    assert await _online(admin, tenant) == DEVICES
    assert presence.pending == {}
    assert len(presence.seen) == DEVICES


async def test_devices_already_online_are_not_held_back_by_the_budget(bridge, admin,
                                                                      monkeypatch):
    """Only first `online` writes count against the budget: beats of devices seen before
    are taken in the same pass however many newcomers wait."""
    monkeypatch.setattr(presence_mod, "ONLINE_BUDGET", 5.0)
    tenant, devices = await _fleet(admin)
    presence = Presence(bridge.bridge.pb, bridge.bridge.commands)
    _beat(presence, tenant, devices[:10])
    await presence.flush()
    assert len(presence.seen) == 10
    _beat(presence, tenant, devices)  # the 10 again, and 14 newcomers
    await presence.flush()
    assert len(presence.seen) == 20
    assert len(presence.pending) == 4
    assert {code for _, code in presence.pending} <= {d["code"] for d in devices[10:]}


async def test_a_small_tenant_is_not_held_behind_a_big_ones_backlog(bridge, admin,
                                                                     monkeypatch):
    """The room goes to the smallest tenants first: a customer whose three machines come
    up while another's fleet of 24 floods in shows online at the next pass."""
    monkeypatch.setattr(presence_mod, "ONLINE_BUDGET", 2.5)  # 5 per pass
    big, fleet = await _fleet(admin)
    small = await new_tenant(admin)
    few = list(await asyncio.gather(*(new_device(admin, small) for _ in range(3))))
    presence = Presence(bridge.bridge.pb, bridge.bridge.commands)
    _beat(presence, big, fleet)
    _beat(presence, small, few)
    await presence.flush()
    assert await _online(admin, small) == 3
    assert await _online(admin, big) == 2
    assert len(presence.pending) == DEVICES - 2


async def test_a_budget_that_fits_writes_everything_in_one_pass(bridge, admin, monkeypatch):
    """The control: with room for the whole fleet, one pass writes every device."""
    monkeypatch.setattr(presence_mod, "ONLINE_BUDGET", 100.0)
    tenant, devices = await _fleet(admin)
    presence = Presence(bridge.bridge.pb, bridge.bridge.commands)
    _beat(presence, tenant, devices)
    await presence.flush()
    assert await _online(admin, tenant) == DEVICES
    assert presence.pending == {}
