"""node_exporter (Linux and FreeBSD) exposition -> Sample.

Metric names are node_exporter's documented ones: node_cpu_seconds_total{cpu,mode},
node_memory_MemTotal_bytes / MemAvailable_bytes (Linux meminfo) or node_memory_size_bytes
/ free / inactive / cache (FreeBSD), node_load1, node_filesystem_size_bytes /
avail_bytes{device,fstype,mountpoint}, node_network_receive_bytes_total /
transmit_bytes_total{device}, node_boot_time_seconds and node_time_seconds.
"""

from __future__ import annotations

from agent.collectors import (
    CollectError,
    Sample,
    Series,
    dedupe_filesystems,
    is_pseudo_filesystem,
    is_virtual_nic,
    parse_exposition,
    total,
)

SOURCE = "node_exporter"
# Waiting for I/O is idle time from the CPU's point of view (as in top's "id" + "wa").
IDLE_MODES = frozenset({"idle", "iowait"})


def parse(text: str) -> Sample:
    """Parse a node_exporter /metrics page; CollectError when CPU or memory is missing."""
    return from_series(parse_exposition(text))


def is_node_exporter(series: Series) -> bool:
    """Whether the exposition comes from node_exporter (detection by metric names)."""
    return any(name.startswith("node_") for name in series)


def from_series(series: Series) -> Sample:
    """Build the Sample from parsed series; optional parts come out empty or zero."""
    missing: list[str] = []
    cpu = series.get("node_cpu_seconds_total")
    if not cpu:
        missing.append("node_cpu_seconds_total")
    memory = _memory(series)
    if memory is None:
        missing.append("node_memory_MemTotal_bytes and node_memory_MemAvailable_bytes")
    if missing or cpu is None or memory is None:
        raise CollectError(f"node_exporter metrics missing: {', '.join(missing)}")

    busy = sum(value for labels, value in cpu if labels.get("mode") not in IDLE_MODES)
    boot = total(series, "node_boot_time_seconds")
    now = total(series, "node_time_seconds")
    return Sample(
        source=SOURCE,
        cpu_busy_seconds=busy,
        cpu_total_seconds=sum(value for _, value in cpu),
        memory_total_bytes=memory[0],
        memory_available_bytes=memory[1],
        load1=total(series, "node_load1"),
        filesystems=_filesystems(series),
        net_rx_bytes=_nic_total(series, "node_network_receive_bytes_total"),
        net_tx_bytes=_nic_total(series, "node_network_transmit_bytes_total"),
        boot_time=boot if boot else None,
        time=now if now else None,
    )


def _memory(series: Series) -> tuple[float, float] | None:
    """(total, available) bytes. Linux: MemAvailable, or on kernels before 3.14 the usual
    MemFree + Buffers + Cached estimate. FreeBSD: free + inactive + cache pages."""
    mem_total = total(series, "node_memory_MemTotal_bytes")
    if mem_total:
        available = total(series, "node_memory_MemAvailable_bytes")
        if available is None:
            names = ("MemFree", "Buffers", "Cached")
            parts = [total(series, f"node_memory_{n}_bytes") for n in names]
            if parts[0] is None:
                return None
            available = sum(p or 0.0 for p in parts)
        return mem_total, available
    bsd_total = total(series, "node_memory_size_bytes")
    bsd_free = total(series, "node_memory_free_bytes")
    if bsd_total and bsd_free is not None:
        extra = (total(series, f"node_memory_{n}_bytes") or 0.0 for n in ("inactive", "cache"))
        return bsd_total, bsd_free + sum(extra)
    return None


def _filesystems(series: Series) -> tuple:
    sizes = series.get("node_filesystem_size_bytes", [])
    avail = {
        (labels.get("device", ""), labels.get("mountpoint", "")): value
        for labels, value in series.get("node_filesystem_avail_bytes", [])
    }
    entries = []
    for labels, size in sizes:
        device, mount = labels.get("device", ""), labels.get("mountpoint", "")
        if not mount or is_pseudo_filesystem(labels.get("fstype", ""), mount):
            continue
        if (device, mount) in avail:
            entries.append((device, mount, size, avail[(device, mount)]))
    return dedupe_filesystems(entries)


def _nic_total(series: Series, name: str) -> float:
    return sum(
        value for labels, value in series.get(name, [])
        if not is_virtual_nic(labels.get("device", ""))
    )
