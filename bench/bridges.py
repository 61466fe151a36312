"""A `cairn-bridge run` child process with its own /metrics port, for failover drills (the
two-bridges tests and `python -m bench failover`)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from cairn_common.layout import DataLayout
from cairn_stack.processes import ManagedProcess, free_port, http_get_text


def metric(port: int, name: str) -> float:
    """A metric's value from a /metrics page (-1 when absent or not answering)."""
    for line in http_get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


class BridgeProcess:
    def __init__(self, name: str, layout: DataLayout, pb_url: str, nats_url: str,
                 login_file: Path) -> None:
        self.port = free_port()
        self.proc = ManagedProcess(
            name=name, argv=[sys.executable, "-m", "pb_hooks_bridge", "run",
                             "--metrics-port", str(self.port)],
            log_path=layout.logs_dir / f"{name}.log",
            env={"CAIRN_DATA_DIR": str(layout.root), "CAIRN_PB_URL": pb_url,
                 "CAIRN_NATS_URL": nats_url, "CAIRN_BRIDGE_LOGIN_FILE": str(login_file)})
        self.proc.start()

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def value(self, name: str) -> float:
        return metric(self.port, name)

    async def until(self, name: str, wanted: float, timeout: float) -> float:
        """Seconds until metric `name` equals `wanted` (AssertionError past `timeout`)."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self.proc.running:
                raise AssertionError(f"{self.proc.name} exited:\n{self.proc.log_tail()}")
            if await asyncio.to_thread(self.value, name) == wanted:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.proc.name}: {name} != {wanted} after {timeout:.0f} s:\n"
                             f"{self.proc.log_tail()}")
