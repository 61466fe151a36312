"""`make run`'s launcher end to end: starts, prints the login, stops cleanly, reruns unchanged."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from bench.stack import launch
from cairn_stack.processes import free_port, tcp_open


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir), "CAIRN_DEMO": "0"}
    env.update(
        CAIRN_NATS_PORT=str(free_port()),
        CAIRN_BRIDGE_METRICS_PORT=str(free_port()),
        CAIRN_ROUTER_METRICS_PORT=str(free_port()),
        CAIRN_NATS_MONITOR_PORT=str(free_port()),
        CAIRN_NATS_WS_PORT=str(free_port()),
        CAIRN_PB_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    return launch(env)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, out
    return out


def _digest(data_dir: Path) -> dict[str, str]:
    files = [*(data_dir / "secrets").iterdir(), data_dir / "nats" / "operator.conf",
             data_dir / "superuser.json"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_stack_starts_prints_login_and_stops(tmp_path):
    env = _env(tmp_path / "data")
    proc, lines = _start(env)
    try:
        _check_running_stack(env, lines)
    except BaseException:
        proc.kill()
        raise
    nats_port = int(env["CAIRN_NATS_PORT"])
    out = _stop(proc, signal.SIGINT)
    assert "stopped." in out
    assert not tcp_open("127.0.0.1", nats_port)
    assert not tcp_open("127.0.0.1", int(env["CAIRN_PB_PORT"]))

    before = _digest(tmp_path / "data")
    proc, lines = _start(env)
    assert any("unchanged" in line for line in lines), lines
    assert not any("generated now" in line for line in lines), "password is printed only once"
    _stop(proc)
    assert _digest(tmp_path / "data") == before


def _check_running_stack(env: dict[str, str], lines: list[str]) -> None:
    text = "\n".join(lines)
    pb_url = f"http://127.0.0.1:{env['CAIRN_PB_PORT']}"
    assert f"{pb_url}/_/" in text
    login = next(line for line in lines if "Login:" in line).split()
    email, password = login[1], login[3]
    resp = httpx.post(f"{pb_url}/api/collections/_superusers/auth-with-password",
                      json={"identity": email, "password": password}, timeout=10)
    assert resp.status_code == 200, resp.text
    cols = httpx.get(f"{pb_url}/api/collections?perPage=200",
                     headers={"Authorization": resp.json()["token"]}, timeout=10).json()
    assert {"tenants", "devices", "commands"} <= {c["name"] for c in cols["items"]}
    assert tcp_open("127.0.0.1", int(env["CAIRN_NATS_PORT"]))


def test_two_stacks_side_by_side(tmp_path):
    first, _ = _start(_env(tmp_path / "a"))
    try:
        second, _lines = _start(_env(tmp_path / "b"))
        _stop(second)
    finally:
        _stop(first)


def test_admin_from_environment(tmp_path):
    env = _env(tmp_path / "data", CAIRN_ADMIN_EMAIL="ops@example.com",
               CAIRN_ADMIN_PASSWORD="correct-horse-battery")
    proc, _lines = _start(env)
    try:
        resp = httpx.post(
            f"http://127.0.0.1:{env['CAIRN_PB_PORT']}/api/collections/_superusers/auth-with-password",
            json={"identity": "ops@example.com", "password": "correct-horse-battery"}, timeout=10)
        assert resp.status_code == 200
        assert not (tmp_path / "data" / "superuser.json").exists()
        # SPEC §11: logins reach sidecars as 0600 files, and no child inherits the admin's
        children = _descendants(proc.pid)
        assert len(children) >= 4  # nats-server, PocketBase, bridge, router
        for pid in children:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"correct-horse-battery" not in environ, pid
            assert b"CAIRN_ADMIN_" not in environ, pid
        login_file = tmp_path / "data" / "secrets" / "bridge-login.json"
        assert login_file.stat().st_mode & 0o077 == 0
        # control: the router (its own login) and the bridge (the file) are logged in
        for part in ("router", "bridge"):
            port = env[f"CAIRN_{part.upper()}_METRICS_PORT"]
            metric = f"cairn_{part}_pocketbase_connected"
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert f"{metric} 1.0" in text, metric
    finally:
        _stop(proc)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            found.append(int(child))
            todo.append(int(child))
    return found


def test_busy_port_is_a_clear_error(tmp_path, pb_env):
    env = _env(tmp_path / "data", CAIRN_PB_PORT=str(pb_env.port))
    done = subprocess.run([sys.executable, "-m", "cairn_stack"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert f"CAIRN_PB_PORT={pb_env.port}" in done.stdout


def test_bad_settings_name_the_variable(tmp_path):
    for key, value, expected in [
        ("CAIRN_NATS_PORT", "abc", "CAIRN_NATS_PORT='abc' is not a port number"),
        ("CAIRN_PB_PORT", "70000", "CAIRN_PB_PORT=70000 is outside"),
        ("CAIRN_DEMO", "maybe", "CAIRN_DEMO='maybe'"),
        ("CAIRN_ADMIN_EMAIL", "x@y.z", "set both CAIRN_ADMIN_EMAIL and CAIRN_ADMIN_PASSWORD"),
    ]:
        done = subprocess.run([sys.executable, "-m", "cairn_stack"],
                              env=_env(tmp_path / "data", **{key: value}),
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (key, done.stdout, done.stderr)
        assert expected in done.stderr
        assert not (tmp_path / "data").exists(), "nothing is written on a settings error"


def test_demo_fleet_answers_the_printed_ping_command(tmp_path):
    env = _env(tmp_path / "data", CAIRN_DEMO="1")
    proc, lines = _start(env)
    try:
        ping_line = next(line for line in lines if "Ping it:" in line)
        argv = ping_line.split("Ping it:", 1)[1].split()
        assert argv[0].endswith("cairn-request")
        done = subprocess.run([sys.executable, "-m", "cairn_stack.request", *argv[1:]],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert '"status": "pong"' in done.stdout
        creds = tmp_path / "data" / "demo" / "admin.creds"
        assert creds.stat().st_mode & 0o777 == 0o600
    except BaseException:
        proc.kill()
        raise
    out = _stop(proc, signal.SIGINT)
    assert "stopped." in out
