"""Built-in Linux reader: /proc and statvfs -> Sample, used when no exporter answers.

One pure `parse_*` per file (tested on literal strings); `read()` does the I/O in a
worker thread so the event loop never waits on the filesystem.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

from agent.collectors import (
    CollectError,
    Filesystem,
    Sample,
    dedupe_filesystems,
    is_pseudo_filesystem,
    is_virtual_nic,
)

SOURCE = "builtin"
# statvfs on a mount whose server is gone blocks forever and would pin a worker thread
# each scrape; the built-in reader leaves network filesystems to node_exporter.
NETWORK_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "9p", "lustre", "gpfs",
})


def parse_stat(text: str, ticks_per_second: float = 100.0) -> tuple[float, float, float | None]:
    """/proc/stat -> (busy seconds, total seconds, boot time) summed over all CPUs.

    Fields: user nice system idle iowait irq softirq steal guest guest_nice. guest and
    guest_nice are already inside user and nice, so they are not added again; idle and
    iowait are the idle part.
    """
    cpu: list[float] | None = None
    boot: float | None = None
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            cpu = [float(x) for x in fields[1:9]]
        elif fields and fields[0] == "btime" and len(fields) > 1:
            boot = float(fields[1])
    if not cpu or len(cpu) < 4:
        raise ValueError("no aggregate 'cpu' line in /proc/stat")
    total = sum(cpu)
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0.0)
    return (total - idle) / ticks_per_second, total / ticks_per_second, boot


def parse_meminfo(text: str) -> tuple[float, float]:
    """/proc/meminfo -> (total, available) bytes; MemFree + Buffers + Cached before 3.14."""
    kib: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            kib[key.strip()] = float(parts[0])
    if kib.get("MemTotal", 0.0) <= 0:
        raise ValueError("no MemTotal in /proc/meminfo")
    available = kib.get("MemAvailable")
    if available is None:
        available = kib.get("MemFree", 0.0) + kib.get("Buffers", 0.0) + kib.get("Cached", 0.0)
    return kib["MemTotal"] * 1024, available * 1024


def parse_loadavg(text: str) -> float:
    """/proc/loadavg -> the 1-minute load average."""
    return float(text.split()[0])


def parse_uptime(text: str) -> float:
    """/proc/uptime -> seconds since boot."""
    return float(text.split()[0])


def parse_net_dev(text: str) -> tuple[float, float]:
    """/proc/net/dev -> (received, transmitted) bytes over non-virtual interfaces."""
    rx = tx = 0.0
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9 or is_virtual_nic(name.strip()):
            continue
        rx += float(fields[0])
        tx += float(fields[8])
    return rx, tx


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[tuple[str, str, str]]:
    """/proc/mounts -> [(device, mount point, fstype)] of real, local filesystems.

    Mount points escape blanks as octal (\\040); pseudo and network filesystems are
    left out (see NETWORK_FSTYPES for why).
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount, fstype = (_unescape(field) for field in fields[:3])
        if is_pseudo_filesystem(fstype, mount) or fstype in NETWORK_FSTYPES:
            continue
        mounts.append((device, mount, fstype))
    return mounts


def disk_usage(mounts: list[tuple[str, str, str]]) -> tuple[Filesystem, ...]:
    """statvfs each mount point (blocking: call from a thread). Mount points that are
    files (a container's bind-mounted /etc/hosts) or unreadable ones are skipped."""
    entries = []
    for device, mount, _ in mounts:
        try:
            if not os.path.isdir(mount):
                continue
            st = os.statvfs(mount)
        except OSError:
            continue
        entries.append((device, mount, float(st.f_blocks * st.f_frsize),
                        float(st.f_bavail * st.f_frsize)))
    return dedupe_filesystems(entries)


def _read_file(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_sync(proc: str = "/proc") -> Sample:
    """Read every source file once (blocking). CollectError names the file that failed."""
    texts: dict[str, str] = {}
    try:
        for name in ("stat", "meminfo", "loadavg", "uptime", "net/dev", "mounts"):
            texts[name] = _read_file(f"{proc}/{name}")
    except OSError as exc:
        raise CollectError(f"built-in reader cannot read {exc.filename}: {exc.strerror}") from exc
    now = time.time()
    try:
        ticks = float(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError):
        ticks = 100.0
    try:
        busy, total, _ = parse_stat(texts["stat"], ticks)
        mem_total, mem_available = parse_meminfo(texts["meminfo"])
        uptime = parse_uptime(texts["uptime"])
        load1 = parse_loadavg(texts["loadavg"])
        rx, tx = parse_net_dev(texts["net/dev"])
        mounts = parse_mounts(texts["mounts"])
    except (ValueError, IndexError) as exc:
        raise CollectError(f"built-in reader cannot parse {proc}: {exc}") from exc
    return Sample(
        source=SOURCE,
        cpu_busy_seconds=busy,
        cpu_total_seconds=total,
        memory_total_bytes=mem_total,
        memory_available_bytes=mem_available,
        load1=load1,
        filesystems=disk_usage(mounts),
        net_rx_bytes=rx,
        net_tx_bytes=tx,
        boot_time=now - uptime,
        time=now,
    )


async def read(proc: str = "/proc") -> Sample:
    """Read /proc in a worker thread (file reads and statvfs block)."""
    return await asyncio.to_thread(read_sync, proc)
