"""`CAIRN_NATS_NODES=3 make run`: three routed nodes, every URL handed on, all stopped by
Ctrl-C; a node that cannot start is named, and the others are not left behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import httpx
import yaml

from cairn_stack.processes import tcp_open
from tests.stack.test_stack import _env, _start, _stop


def free_run(count: int, start: int = 20000) -> int:
    """A port p with p .. p+count-1 all free on loopback."""
    for base in range(start, 60000, 97):
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def cluster_env(data_dir, **extra: str) -> dict[str, str]:
    return _env(data_dir, CAIRN_NATS_NODES="3", CAIRN_NATS_PORT=str(free_run(3)),
                CAIRN_NATS_MONITOR_PORT=str(free_run(3, 30011)),
                CAIRN_NATS_CLUSTER_PORT=str(free_run(3, 40023)),
                CAIRN_NATS_WS_PORT=str(free_run(3, 45037)), **extra)


def test_three_nodes_start_route_and_stop(tmp_path):
    env = cluster_env(tmp_path / "data", CAIRN_DEMO="1")
    ports = [int(env["CAIRN_NATS_PORT"]) + i for i in range(3)]
    proc, lines = _start(env)
    try:
        text = "\n".join(lines)
        urls = ",".join(f"nats://127.0.0.1:{p}" for p in ports)
        assert f"NATS:       {urls}" in text
        assert all(tcp_open("127.0.0.1", p) for p in ports)
        routez = httpx.get(f"http://127.0.0.1:{env['CAIRN_NATS_MONITOR_PORT']}/routez",
                           timeout=5).json()
        assert {r["remote_name"] for r in routez["routes"]} == {"n2", "n3"}
        agent_yaml = tmp_path / "data" / "demo" / "agent" / "agent.yaml"
        assert yaml.safe_load(agent_yaml.read_text())["nats"]["urls"] == urls.split(",")
        done = subprocess.run(  # the printed command, against the whole list
            [sys.executable, "-m", "cairn_stack.request", "--server", urls, "--creds",
             str(tmp_path / "data" / "demo" / "admin.creds"), "agents.demo-1.cmd.ping"],
            capture_output=True, text=True, timeout=30)
        assert json.loads(done.stdout)["status"] == "pong", done.stderr
    except BaseException:
        proc.kill()
        raise
    out = _stop(proc, signal.SIGINT)
    assert "stopped." in out
    assert not any(tcp_open("127.0.0.1", p) for p in ports)


def test_a_node_that_cannot_start_is_named(tmp_path):
    env = cluster_env(tmp_path / "data", CAIRN_NATS_MAX_FILE_STORE="lots")
    ports = [int(env["CAIRN_NATS_PORT"]) + i for i in range(3)]
    done = subprocess.run([sys.executable, "-m", "cairn_stack"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout
    assert "error: nats-server n1 exited" in done.stdout, done.stdout
    assert not any(tcp_open("127.0.0.1", p) for p in ports)


def test_a_busy_node_port_is_a_clear_error(tmp_path):
    env = cluster_env(tmp_path / "data")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(env["CAIRN_NATS_PORT"]) + 2))
        busy.listen()
        done = subprocess.run([sys.executable, "-m", "cairn_stack"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"CAIRN_NATS_PORT+2={int(env['CAIRN_NATS_PORT']) + 2}" in done.stdout, done.stdout
