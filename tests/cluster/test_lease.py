"""The leader lease's bucket on a cluster still forming. Right after the nodes start,
JetStream may refuse to place three replicas ("no suitable peers for placement": a node
has not reported in yet), and a fresh cluster with a node missing has no JetStream at all
(the meta group waits for every planned node). The bridge waits for both instead of taking
the refusal for a bucket made before with other settings, or dying on the timeout, which
crashed its start when it came up right after the nodes."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from cairn_common import creds
from cairn_common.layout import DataLayout
from cairn_stack.cluster import NatsNode, start_node
from cairn_stack.processes import ManagedProcess, free_port
from pb_hooks_bridge import control_account
from pb_hooks_bridge.bootstrap import bootstrap, load_operator
from pb_hooks_bridge.leader import Lease
from tests.conftest import _RUNNING
from tests.live import connect, eventually

WAITING = "lease bucket not placeable yet"


@dataclass
class Forming:
    layout: DataLayout
    specs: list[NatsNode]
    procs: list[ManagedProcess]
    nc: NATS  # a control-account connection to n1

    def start_last(self) -> None:
        proc = start_node(self.layout, self.specs[-1], self.specs)
        self.procs.append(proc)
        _RUNNING.append(proc)


@pytest.fixture
async def forming(tmp_path: Path) -> AsyncIterator[Forming]:
    """Three nodes planned, two started: the third has never joined, so there is no
    JetStream meta leader yet (the account resolver works without one)."""
    layout = DataLayout(tmp_path)
    bootstrap(layout)
    specs = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(),
                      layout.nats_dir / "nodes" / f"n{i + 1}") for i in range(3)]
    procs = []
    for spec in specs[:2]:
        procs.append(start_node(layout, spec, specs))
        _RUNNING.append(procs[-1])
    try:
        sys_jwt, sys_seed = creds.read(layout.sys_user_creds)
        sys_nc = await connect(specs[0].url, sys_jwt, sys_seed)
        control = control_account.load(layout, load_operator(layout))
        await control_account.push(sys_nc, control)
        await sys_nc.close()
        nc = await connect(specs[0].url, control.user_jwt, control.user_seed)
        yield Forming(layout, specs, procs, nc)
        await nc.close()
    finally:
        for proc in procs:
            proc.stop()


def _said(caplog: pytest.LogCaptureFixture):
    async def check() -> bool:
        return any(WAITING in r.getMessage() for r in caplog.records)
    return check


async def test_lease_waits_for_the_missing_node_then_has_three_replicas(forming, caplog):
    caplog.set_level(logging.WARNING, logger="pb_hooks_bridge.leader")
    lease = Lease(retry=0.2)
    opening = asyncio.create_task(lease.open(forming.nc, 3, asyncio.Event()), name="lease-open")
    await eventually(_said(caplog), 20, "the lease waiting for the third node")
    assert not opening.done()
    forming.start_last()
    assert await asyncio.wait_for(opening, 30) is True
    info = await forming.nc.jetstream().stream_info(f"KV_{lease.bucket}")
    assert info.config.num_replicas == 3
    assert await lease.acquire(asyncio.Event(), wait=False) is True


async def test_a_formed_cluster_opens_three_replicas_at_once(cluster, cluster_bridge, caplog):
    """The control: with every node in, the same call opens at once, with no warning."""
    caplog.set_level(logging.WARNING, logger="pb_hooks_bridge.leader")
    await cluster.meta_ready()
    control = control_account.load(cluster.layout, load_operator(cluster.layout))
    nc = await connect(cluster.nodes[0].url, control.user_jwt, control.user_seed)
    lease = Lease(retry=0.2, bucket=f"cairn_lease_probe_{secrets.token_hex(3)}")
    try:
        assert await asyncio.wait_for(lease.open(nc, 3, asyncio.Event()), 10) is True
        assert not await _said(caplog)()
        info = await nc.jetstream().stream_info(f"KV_{lease.bucket}")
        assert info.config.num_replicas == 3
    finally:
        await nc.jetstream().delete_stream(f"KV_{lease.bucket}")
        await nc.close()


async def test_lease_open_gives_up_when_the_bridge_stops(forming, caplog):
    caplog.set_level(logging.WARNING, logger="pb_hooks_bridge.leader")
    stopping = asyncio.Event()
    lease = Lease(retry=0.2)
    opening = asyncio.create_task(lease.open(forming.nc, 3, stopping), name="lease-open")
    await eventually(_said(caplog), 20, "the lease waiting for the third node")
    stopping.set()
    assert await asyncio.wait_for(opening, 5) is False
    assert lease.kv is None


async def test_a_cluster_that_never_forms_is_a_clear_error(forming, monkeypatch):
    """What waiting cannot mend (here: the third node never comes) ends in an error that
    names the replicas and the setting, not in a bridge that looks like a standby."""
    from pb_hooks_bridge import leader
    from pb_hooks_bridge.errors import BridgeError

    monkeypatch.setattr(leader, "OPEN_WAIT", 1.0)
    lease = Lease(retry=0.2)
    with pytest.raises(BridgeError, match=r"3 replicas.*CAIRN_NATS_REPLICAS"):
        await asyncio.wait_for(lease.open(forming.nc, 3, asyncio.Event()), 20)
    assert lease.kv is None
