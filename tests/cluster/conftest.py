"""A real 3-node nats-server cluster (free loopback ports, one temp dir per package run)
with its own PocketBase and an in-process bridge, shared by every test in tests/cluster.

The nodes are started by the launcher's own helpers (cairn_stack/cluster.py), PocketBase
and the bridge by the same helpers as the single-node fixtures (tests/conftest.py,
tests/live.py). Tests that kill, stop or pause a node bring it back before they end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cairn_common.layout import DataLayout
from cairn_common.nats_urls import join_nats_urls
from cairn_common.pocketbase import PocketBase
from cairn_stack.cluster import NatsNode, leaders, meta_leader, start_cluster, start_node
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import ManagedProcess, free_port
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.config import BridgeConfig
from tests.conftest import _RUNNING, PbEnv, set_rate_limits
from tests.live import BridgeHandle, eventually, new_tenant

NODES = 3
PROVISION_WITHIN = 30.0  # seconds: JetStream places R3 streams slowly right after a node loss


async def provisioned_tenant(admin: PocketBase) -> dict:
    """A new tenant with its account, service users and streams (nats_account_public_key)."""
    tenant = await new_tenant(admin)

    async def ready() -> dict | None:
        row = await admin.get("tenants", tenant["id"])
        return row if row.get("nats_account_public_key") else None
    return await eventually(ready, PROVISION_WITHIN, f"tenant {tenant['slug']} provisioned")


@dataclass
class Node:
    spec: NatsNode
    process: ManagedProcess
    cluster: Cluster
    paused: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def resolver_dir(self) -> Path:
        return self.spec.directory / "resolver"

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to the routes."""
        self.process.kill()

    def start(self) -> None:
        """Start again (same name, ports and dirs; a new server id) and wait for health."""
        self.process = start_node(self.cluster.layout, self.spec, self.cluster.specs)
        _RUNNING.append(self.process)

    def pause(self) -> None:
        """SIGSTOP: the node hangs with every socket open."""
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGCONT)
        self.paused = False


@dataclass
class Cluster:
    layout: DataLayout
    specs: list[NatsNode]
    nodes: list[Node] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url_list(self) -> str:
        return join_nats_urls(self.urls)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def by_url(self, url: str) -> Node:
        return next(n for n in self.nodes if n.url == url)

    def others(self, node: Node) -> list[Node]:
        return [n for n in self.nodes if n is not node]

    async def meta_ready(self) -> None:
        """Every node is up and they agree on a JetStream meta leader."""
        async def agreed() -> bool:
            leaders = await asyncio.gather(*(asyncio.to_thread(meta_leader, n.spec)
                                             for n in self.nodes))
            return len(set(leaders)) == 1 and bool(leaders[0])
        await eventually(agreed, 20, "one JetStream meta leader for every node")

    async def follower(self) -> Node:
        """A node that leads neither JetStream's meta group nor a KV bucket (the bridge's
        leader lease): tests about accounts kill that one; test_jetstream and
        test_failover lose leaders too."""
        await self.meta_ready()
        found = await asyncio.to_thread(leaders, self.nodes[0].spec)
        return next((n for n in reversed(self.nodes) if n.name not in found),
                    next(n for n in reversed(self.nodes) if n.name != found[0]))

    def stop(self) -> None:
        for node in self.nodes:
            if node.paused:
                node.resume()
            node.process.stop()


@pytest.fixture(scope="package")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="package")
def cluster(cluster_dir: Path) -> Iterator[Cluster]:
    layout = DataLayout(cluster_dir)
    bootstrap(layout)
    os.environ.setdefault("CAIRN_NATS_MAX_FILE_STORE", "64TB")
    os.environ.setdefault("CAIRN_NATS_MAX_MEMORY_STORE", "64GB")
    specs = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(),
                      layout.nats_dir / "nodes" / f"n{i + 1}") for i in range(NODES)]
    env = Cluster(layout, specs)
    for spec, proc in zip(specs, start_cluster(layout, specs), strict=True):
        env.nodes.append(Node(spec, proc, env))
        _RUNNING.append(proc)
    yield env
    env.stop()


@pytest.fixture(scope="package")
def cluster_pb(cluster_dir: Path) -> Iterator[PbEnv]:
    layout = DataLayout(cluster_dir)
    email, password = "admin@cairn.test", secrets.token_urlsafe(18)
    upsert_superuser(layout, email, password)
    port = free_port()
    env = PbEnv(layout, port, email, password, start_pocketbase(layout, port))
    _RUNNING.append(env.process)
    set_rate_limits(env, enabled=False)
    yield env
    env.process.stop()


@pytest.fixture(scope="package")
async def cluster_admin(cluster_pb: PbEnv) -> AsyncIterator[PocketBase]:
    pb = PocketBase(cluster_pb.url)
    await pb.auth_superuser(cluster_pb.admin_email, cluster_pb.admin_password)
    yield pb
    await pb.close()


@pytest.fixture(scope="package")
async def bridge_handle(cluster: Cluster, cluster_pb: PbEnv) -> AsyncIterator[BridgeHandle]:
    """The bridge with every node's URL and R3 streams."""
    config = BridgeConfig(
        data_dir=cluster.layout.root, pb_url=cluster_pb.url, nats_url=cluster.url_list,
        admin_email=cluster_pb.admin_email, admin_password=cluster_pb.admin_password,
        user_jwt_ttl=3600, nats_replicas=3,
    )
    handle = BridgeHandle(config)
    await handle.start()
    yield handle
    await handle.stop()


@pytest.fixture
async def cluster_bridge(bridge_handle: BridgeHandle) -> BridgeHandle:
    """The package's bridge, started again when it stopped itself since the last test: a
    bridge that loses its leader lease (leader.py) stands down, and the nodes killed and
    hung here can cost it the lease (reported; not what these tests are about)."""
    bridge = bridge_handle.bridge
    if bridge is None or bridge.stopping.is_set():
        await bridge_handle.stop()
        await bridge_handle.start()
    return bridge_handle
