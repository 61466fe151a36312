"""windows_exporter exposition -> Sample.

Metric names changed across windows_exporter releases, so each value accepts the current
name first and the older ones after it (the `wmi_` prefix of the old wmi_exporter is read
as `windows_`):

- CPU: windows_cpu_time_total{core,mode}. `privileged` already contains the `dpc` and
  `interrupt` time (perfmon: "DPC Time is a component of Privileged Time"), so busy is
  user + privileged and total is that plus idle; adding dpc/interrupt would count twice.
- memory total: windows_memory_physical_total_bytes (0.30+), windows_cs_physical_memory_bytes,
  windows_os_visible_memory_bytes.
- memory available: windows_memory_available_bytes, windows_memory_physical_free_bytes,
  windows_os_physical_memory_free_bytes.
- boot time: windows_system_boot_time_timestamp_seconds (0.30+),
  windows_system_boot_time_timestamp, windows_system_system_up_time (the old name, which
  despite it holds the boot time as a Unix timestamp).
- clock (optional): windows_time_current_timestamp_seconds, windows_os_time.
- disks: windows_logical_disk_size_bytes / free_bytes{volume}; unmounted volumes
  (HarddiskVolumeN) and _Total are skipped.
- network: windows_net_bytes_received_total / bytes_sent_total{nic}; tunnel and loopback
  pseudo adapters (isatap, Teredo, ...) are skipped.
Windows has no load average: load1 is None.
"""

from __future__ import annotations

import re

from agent.collectors import (
    CollectError,
    Sample,
    Series,
    dedupe_filesystems,
    is_virtual_nic,
    parse_exposition,
    total,
)

SOURCE = "windows_exporter"
BUSY_MODES = frozenset({"user", "privileged"})
COUNTED_MODES = BUSY_MODES | {"idle"}

MEMORY_TOTAL = (
    "windows_memory_physical_total_bytes",
    "windows_cs_physical_memory_bytes",
    "windows_os_visible_memory_bytes",
)
MEMORY_AVAILABLE = (
    "windows_memory_available_bytes",
    "windows_memory_physical_free_bytes",
    "windows_os_physical_memory_free_bytes",
)
BOOT_TIME = (
    "windows_system_boot_time_timestamp_seconds",
    "windows_system_boot_time_timestamp",
    "windows_system_system_up_time",
)
CLOCK = ("windows_time_current_timestamp_seconds", "windows_os_time")
_UNMOUNTED_VOLUME = re.compile(r"^(HarddiskVolume\d+|_Total)$", re.IGNORECASE)


def parse(text: str) -> Sample:
    """Parse a windows_exporter /metrics page; CollectError when CPU or memory is missing."""
    return from_series(parse_exposition(text))


def is_windows_exporter(series: Series) -> bool:
    """Whether the exposition comes from windows_exporter (detection by metric names)."""
    return any(name.startswith(("windows_", "wmi_")) for name in series)


def from_series(series: Series) -> Sample:
    """Build the Sample from parsed series; optional parts come out empty, zero or None."""
    series = {_modern(name): values for name, values in series.items()}
    cpu = [(labels, v) for labels, v in series.get("windows_cpu_time_total", [])
           if labels.get("mode") in COUNTED_MODES]
    mem_total = total(series, *MEMORY_TOTAL)
    mem_available = total(series, *MEMORY_AVAILABLE)
    missing = []
    if not cpu:
        missing.append("windows_cpu_time_total")
    if not mem_total:
        missing.append(f"memory total (one of {', '.join(MEMORY_TOTAL)})")
    if mem_available is None:
        missing.append(f"available memory (one of {', '.join(MEMORY_AVAILABLE)})")
    if missing or mem_total is None or mem_available is None:
        raise CollectError(f"windows_exporter metrics missing: {'; '.join(missing)}")

    boot = total(series, *BOOT_TIME)
    now = total(series, *CLOCK)
    return Sample(
        source=SOURCE,
        cpu_busy_seconds=sum(v for labels, v in cpu if labels["mode"] in BUSY_MODES),
        cpu_total_seconds=sum(v for _, v in cpu),
        memory_total_bytes=mem_total,
        memory_available_bytes=mem_available,
        load1=None,
        filesystems=_filesystems(series),
        net_rx_bytes=_nic_total(series, "windows_net_bytes_received_total"),
        net_tx_bytes=_nic_total(series, "windows_net_bytes_sent_total"),
        boot_time=boot if boot else None,
        time=now if now else None,
    )


def _modern(name: str) -> str:
    return "windows_" + name[4:] if name.startswith("wmi_") else name


def _filesystems(series: Series) -> tuple:
    free = {
        labels.get("volume", ""): v
        for labels, v in series.get("windows_logical_disk_free_bytes", [])
    }
    entries = []
    for labels, size in series.get("windows_logical_disk_size_bytes", []):
        volume = labels.get("volume", "")
        if volume and not _UNMOUNTED_VOLUME.match(volume) and volume in free:
            entries.append((volume, volume, size, free[volume]))
    return dedupe_filesystems(entries)


def _nic_total(series: Series, name: str) -> float:
    return sum(v for labels, v in series.get(name, []) if not is_virtual_nic(labels.get("nic", "")))
