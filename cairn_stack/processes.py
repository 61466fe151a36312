"""Start, wait for and stop the real server processes (nats-server, PocketBase, sidecars)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cairn_common.filemodes import FILE_MODE, private_dir

# Every child (nats-server, PocketBase, the sidecars, the demo agent, one-shot `pocketbase`
# commands) starts with this umask, so the databases, JetStream files and logs it creates are
# 0600/0700 whatever the user's own umask is (SPEC §11).
CHILD_UMASK = 0o077


class ProcessError(RuntimeError):
    """A managed process failed to start or died while we waited for it."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str) -> str:
    """Find a server binary: first beside this interpreter (the venv's bin/), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(f"{name} not found in {beside.parent} or on PATH; run `make install`")
    return found


@dataclass
class ManagedProcess:
    """One child process (umask 077) with its output in a private log file, stopped by SIGTERM
    then SIGKILL."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        private_dir(self.log_path.parent, tighten=False)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        env = {**os.environ, **self.env}
        with os.fdopen(fd, "ab") as log:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C in the terminal reaches only the launcher
                umask=CHILD_UMASK,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ProcessError(
                    f"{self.name} exited (code {self.proc.returncode if self.proc else '?'}) "
                    f"before {what}; last log lines:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.05)
        raise ProcessError(
            f"{self.name}: {what} not reached in {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL with no chance to clean up (failure drills)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def http_get_text(url: str) -> str:
    """The body of a GET, or '' when the server is not answering (yet)."""
    try:
        resp = httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return ""
    return resp.text if resp.status_code == 200 else ""
