"""Telemetry collectors: raw readings from node_exporter, windows_exporter or /proc.

Each reader turns its input into one `Sample` of raw values (counters and gauges, no
rates); `system.SystemCollector` turns two samples into the telemetry `system` document.
The pure helpers here are shared by the readers so that they all skip the same pseudo
filesystems and virtual NICs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from agent.errors import AgentError

__all__ = [
    "CollectError",
    "Filesystem",
    "Sample",
    "Series",
    "dedupe_filesystems",
    "is_pseudo_filesystem",
    "is_virtual_nic",
    "parse_exposition",
    "total",
]


class CollectError(AgentError):
    """No telemetry document could be made; the message says why (what is missing, who
    did not answer). Published as the error on telemetry.system."""


@dataclass(frozen=True)
class Filesystem:
    """One mounted filesystem. `free_bytes` is the space an unprivileged user may still
    write (df's "Avail"), which is what a "disk full" alert should look at."""

    mount: str
    size_bytes: float
    free_bytes: float


@dataclass(frozen=True)
class Sample:
    """Raw readings of one scrape. Counters are cumulative; rates need two samples.

    cpu_busy_seconds / cpu_total_seconds are summed over all CPUs; `time` is the source's
    clock at the read (None when the source does not expose it) and `boot_time` the
    host's boot as a Unix timestamp (None when unknown).
    """

    source: str
    cpu_busy_seconds: float
    cpu_total_seconds: float
    memory_total_bytes: float
    memory_available_bytes: float
    load1: float | None
    filesystems: tuple[Filesystem, ...]
    net_rx_bytes: float
    net_tx_bytes: float
    boot_time: float | None
    time: float | None


Labels = dict[str, str]
Series = dict[str, list[tuple[Labels, float]]]
"""Sample name (e.g. node_cpu_seconds_total) -> [(labels, value)], finite values only."""


def parse_exposition(text: str) -> Series:
    """Parse Prometheus text format into series by sample name.

    Sample names rather than family names: the parser strips `_total` from counter
    families, and the readers look metrics up by the names the exporters document.
    Anything that is not an exposition raises CollectError, never the parser's errors.
    """
    if not isinstance(text, str):
        raise CollectError(f"metrics must be text, got {type(text).__name__}")
    series: Series = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if math.isfinite(sample.value):
                    series.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        raise CollectError(f"not a Prometheus text exposition: {_short(exc)}") from exc
    return series


def _short(exc: Exception, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def total(series: Series, *names: str) -> float | None:
    """Sum of the first of `names` present (alternatives across exporter versions)."""
    for name in names:
        if name in series:
            return sum(value for _, value in series[name])
    return None


# Pseudo, in-memory and image filesystems: no disk space to report. Mostly node_exporter's
# default --collector.filesystem.fs-types-exclude plus tmpfs/ramfs (memory, not disk).
PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devfs",
    "devpts", "devtmpfs", "efivarfs", "erofs", "fdescfs", "fusectl", "fuse.lxcfs",
    "fuse.gvfsd-fuse", "fuse.portal", "hugetlbfs", "iso9660", "linprocfs", "linsysfs",
    "mqueue", "nsfs", "nullfs", "overlay", "proc", "procfs", "pstore", "ramfs", "rootfs",
    "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs",
    "zram",
})
# Mount points below these belong to the kernel or to container runtimes. Not /run as a
# whole: removable drives are mounted under /run/media (its tmpfs is skipped by type).
PSEUDO_MOUNT_ROOTS = (
    "/dev", "/proc", "/sys", "/run/credentials", "/snap", "/var/lib/docker",
    "/var/lib/containers", "/var/lib/kubelet", "/var/lib/lxcfs",
)


def is_pseudo_filesystem(fstype: str, mount: str) -> bool:
    """True for filesystems that hold no user data worth a disk-space figure."""
    if fstype in PSEUDO_FSTYPES:
        return True
    return any(mount == root or mount.startswith(root + "/") for root in PSEUDO_MOUNT_ROOTS)


# Loopback and virtual interfaces whose traffic is already counted on a physical NIC
# (container veths and bridges, libvirt/Windows tunnel adapters).
_VIRTUAL_NIC = re.compile(
    r"^(lo\d*|veth.*|docker\d*|br-.*|virbr.*|cni.*|flannel.*|cali.*|vxlan.*|kube-.*|"
    r"tunl\d*|lxc.*|vnet\d+|ifb\d+|dummy\d*)$"
    r"|isatap|teredo|loopback|pseudo|6to4|_total",
    re.IGNORECASE,
)


def is_virtual_nic(name: str) -> bool:
    """True for interfaces left out of the network totals."""
    return bool(_VIRTUAL_NIC.search(name))


def dedupe_filesystems(entries: list[tuple[str, str, float, float]]) -> tuple[Filesystem, ...]:
    """(device, mount, size, free) -> one Filesystem per device, at its shortest mount point.

    Bind mounts (Kubernetes volumes, btrfs subvolumes) repeat one device at many mount
    points with the same figures; listing it once keeps the document readable. Sorted by
    mount point so documents are stable.
    """
    best: dict[str, tuple[str, float, float]] = {}
    for device, mount, size, free in entries:
        if size <= 0:
            continue
        key = device or mount
        if key not in best or len(mount) < len(best[key][0]):
            best[key] = (mount, size, free)
    return tuple(
        Filesystem(mount=mount, size_bytes=size, free_bytes=min(max(free, 0.0), size))
        for mount, size, free in sorted(best.values())
    )
