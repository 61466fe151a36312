"""Cluster mode (`CAIRN_NATS_NODES=N`, docs/cluster.md): N nats-server nodes on loopback,
routed to each other, each with its own JetStream store and full resolver.

All nodes run `$CAIRN_DATA_DIR/nats/nats-server-cluster.conf`, a symlink to the
repository's nats-server-cluster.conf beside the nats-server.conf link and the
operator.conf that bootstrap writes once: every node gets the same operator and SYS
account. Node i (1-based) is named `n<i>`, keeps its state under `nats/nodes/n<i>/`
(`store/`, `resolver/`) and listens on the first node's client, monitoring and cluster
ports plus i-1. The single-node store (`nats/store`, `nats/resolver`) is not used in
cluster mode, and is there again when you go back to one node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cairn_common.filemodes import private_dir
from cairn_common.layout import DataLayout
from cairn_stack.nats import REPO_NATS_CONF, REPO_ROOT, link_config, ready_or_stop, server_env
from cairn_stack.processes import ManagedProcess, ProcessError, binary, http_get_text

REPO_CLUSTER_CONF = REPO_ROOT / "nats-server-cluster.conf"
# Each node reserves every tenant's quota x replicas (the account JWT counts each copy,
# accounts.py): three times the single-node defaults (nats.py), still 512 tenants.
CLUSTER_MAX_FILE_STORE = "768GB"
CLUSTER_MAX_MEMORY_STORE = "12GB"


@dataclass(frozen=True)
class NatsNode:
    name: str
    port: int
    monitor_port: int
    cluster_port: int
    directory: Path
    ws_port: int = -1  # NATS over WebSocket (the dashboard); -1: any free port

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route(self) -> str:
        return f"nats://127.0.0.1:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"


def cluster_conf(layout: DataLayout) -> Path:
    """The symlink every node starts from (allowed beside `layout.nats_conf`)."""
    return layout.nats_dir / "nats-server-cluster.conf"


def plan_nodes(layout: DataLayout, count: int, port: int, monitor_port: int,
               cluster_port: int, ws_port: int = -1) -> list[NatsNode]:
    return [NatsNode(f"n{i + 1}", port + i, monitor_port + i, cluster_port + i,
                     layout.nats_dir / "nodes" / f"n{i + 1}",
                     ws_port + i if ws_port > 0 else -1) for i in range(count)]


def node_process(layout: DataLayout, node: NatsNode, nodes: list[NatsNode]) -> ManagedProcess:
    """One node (not started). Bootstrap must have written operator.conf first."""
    for directory in (layout.nats_dir, node.directory.parent, node.directory,
                      node.directory / "store", node.directory / "resolver"):
        private_dir(directory)
    link_config(layout.nats_conf, REPO_NATS_CONF)  # the cluster conf includes it
    conf = link_config(cluster_conf(layout), REPO_CLUSTER_CONF)
    env = server_env(node.port, node.monitor_port, node.directory / "store",
                     node.directory / "resolver", node.ws_port)
    if not os.environ.get("CAIRN_NATS_MAX_FILE_STORE"):
        env["CAIRN_NATS_MAX_FILE_STORE"] = CLUSTER_MAX_FILE_STORE
    if not os.environ.get("CAIRN_NATS_MAX_MEMORY_STORE"):
        env["CAIRN_NATS_MAX_MEMORY_STORE"] = CLUSTER_MAX_MEMORY_STORE
    env.update({
        "CAIRN_NATS_SERVER_NAME": node.name,
        "CAIRN_NATS_CLUSTER_PORT": str(node.cluster_port),
        # every node, itself included (nats-server skips a route to itself)
        "CAIRN_NATS_ROUTES": "[" + ", ".join(n.route for n in nodes) + "]",
    })
    return ManagedProcess(name=f"nats-server {node.name}",
                          argv=[binary("nats-server"), "-c", str(conf)],
                          log_path=layout.logs_dir / f"nats-server-{node.name}.log", env=env)


def start_node(layout: DataLayout, node: NatsNode, nodes: list[NatsNode],
               timeout: float = 20) -> ManagedProcess:
    """Start one node (e.g. again, after a kill) and wait until it is healthy."""
    proc = node_process(layout, node, nodes)
    proc.start()
    ready_or_stop(proc, timeout, node.monitor_port)
    return proc


def start_cluster(layout: DataLayout, nodes: list[NatsNode],
                  timeout: float = 30) -> list[ManagedProcess]:
    """Start every node, wait for each to be healthy and for a JetStream meta leader.
    When one fails, the others are stopped and ProcessError names the node, with its log."""
    procs = [node_process(layout, node, nodes) for node in nodes]
    started: list[ManagedProcess] = []
    try:
        for proc in procs:  # all at once: each waits for the others' routes
            proc.start()
            started.append(proc)
        for node, proc in zip(nodes, procs, strict=True):
            ready_or_stop(proc, timeout, node.monitor_port)
        procs[0].wait_until(lambda: bool(meta_leader(nodes[0])), timeout,
                            f"a JetStream meta leader among {len(nodes)} nodes")
    except ProcessError:
        for proc in started:
            proc.stop()
        raise
    return procs


def meta_leader(node: NatsNode) -> str:
    """The JetStream meta leader's name as `node` sees it ('' when none or unreachable)."""
    text = http_get_text(f"{node.monitor_url}/jsz")
    try:
        return str((json.loads(text).get("meta_cluster") or {}).get("leader") or "")
    except (ValueError, AttributeError):
        return ""


def leaders(node: NatsNode) -> list[str]:
    """As `node` sees it: the JetStream meta leader first, then the leader of every KV
    bucket's stream (e.g. the bridges' leader lease). Chaos drills that must not hit a
    leader pick a node outside this list."""
    text = http_get_text(f"{node.monitor_url}/jsz?accounts=true&streams=true")
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {}
    found = [str((body.get("meta_cluster") or {}).get("leader") or "")]
    for account in body.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if str(stream.get("name", "")).startswith("KV_"):
                found.append(str((stream.get("cluster") or {}).get("leader") or ""))
    return found

