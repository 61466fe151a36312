"""The inventory document (telemetry.inventory and the `inventory` command).

Every part is gathered on its own: a part that cannot be read becomes null and never
costs the whole document. Blocking work (files, DNS, statvfs) runs in worker threads,
`ip` as a subprocess, each with a deadline.

Given the agent's config, the document also says what this agent will run ("allowed"),
so a dashboard can offer pickers instead of free text; it only echoes the local
whitelists, it widens nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import platform
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.collectors import proc
from agent.config import AgentConfig

log = logging.getLogger(__name__)

GIB = 1024**3
PART_TIMEOUT = 5.0
MAX_SCRIPTS = 200  # scripts listed in "allowed": the document stays small
T = TypeVar("T")


def parse_os_release(text: str) -> dict[str, str]:
    """/etc/os-release (shell-style KEY=value, optionally quoted) -> dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            values[key] = value
    return values


@functools.lru_cache(maxsize=1)
def os_info() -> dict[str, str | None]:
    """{platform, name, version}: the distribution on Linux (/etc/os-release), the
    release elsewhere. Read once and cached: the health command calls it from the event
    loop, and the OS does not change under a running agent without a reboot."""
    system = platform.system().lower() or sys.platform
    if system == "linux":
        for path in ("/etc/os-release", "/usr/lib/os-release"):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    release = parse_os_release(f.read())
            except OSError:
                continue
            return {
                "platform": system,
                "name": release.get("NAME") or "Linux",
                "version": release.get("VERSION_ID") or release.get("VERSION"),
            }
        return {"platform": system, "name": "Linux", "version": None}
    if system == "darwin":
        return {"platform": system, "name": "macOS", "version": platform.mac_ver()[0] or None}
    if system == "windows":
        return {"platform": system, "name": f"Windows {platform.release()}".strip(),
                "version": platform.version() or None}
    return {"platform": system, "name": platform.system() or None,
            "version": platform.release() or None}


async def collect_inventory(version: str, config: AgentConfig | None = None) -> dict[str, Any]:
    """The inventory document; `version` is the agent's own version. With `config`, it
    has an "allowed" part (see `allowed`)."""
    os_part, fqdn, cpu_model, memory, disks, boot, interfaces = await asyncio.gather(
        _part("os", asyncio.to_thread(os_info)),
        _part("fqdn", asyncio.to_thread(socket.getfqdn)),
        _part("cpu model", asyncio.to_thread(_cpu_model)),
        _part("memory", asyncio.to_thread(_memory_total)),
        _part("disks", asyncio.to_thread(_disks)),
        _part("boot time", asyncio.to_thread(_boot_time)),
        _part("network interfaces", _interfaces()),
    )
    doc: dict[str, Any] = {
        "hostname": _safe(socket.gethostname),
        "fqdn": fqdn,
        "os": {**(os_part or {"platform": sys.platform, "name": None, "version": None}),
               "kernel": platform.release() or None},
        "architecture": platform.machine() or None,
        "cpu": {"count": os.cpu_count(), "model": cpu_model},
        "memory_total_gb": None if memory is None else round(memory / GIB, 2),
        "python_version": platform.python_version(),
        "agent_version": version,
        "network_interfaces": interfaces,
        "disks": disks,
        "boot_time": boot,
    }
    if config is not None:
        doc["allowed"] = await allowed(config)
    return doc


async def allowed(config: AgentConfig) -> dict[str, list[str] | None]:
    """What this agent will run: {commands, scripts, services, logs}, straight from the
    whitelists of agent.yaml. "scripts" is null only when listing them timed out (or
    failed unexpectedly), like any other part."""
    configured = config.commands.scripts_directory
    directory = str(config.path(configured)) if configured else ""
    scripts = await _part("allowed scripts", asyncio.to_thread(allowed_scripts, directory))
    return {
        "commands": list(config.commands.allowed),
        "scripts": scripts,
        "services": list(config.services.allowed),
        "logs": list(config.logs.allowed_paths),
    }


def allowed_scripts(directory: str, limit: int = MAX_SCRIPTS) -> list[str]:
    """File names in `directory` that exec would run, sorted, at most `limit`; [] when
    the directory is unset, missing or unreadable (then exec runs no script either)."""
    # imported here: agent.commands imports this module (health uses os_info)
    from agent.commands.exec import script_refusal

    if not directory:
        return []
    real = os.path.realpath(directory)
    try:
        names = sorted(os.listdir(real))
    except OSError:
        return []
    found: list[str] = []
    for name in names:
        if len(found) >= limit:
            break
        if script_refusal(name, real) is None:
            found.append(name)
    return found


async def _part(name: str, work: Awaitable[T]) -> T | None:
    try:
        return await asyncio.wait_for(work, PART_TIMEOUT)
    except Exception as exc:  # one part failing must not cost the document
        log.debug("inventory: %s unavailable: %r", name, exc)
        return None


def _safe(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception:
        return None


def _cpu_model() -> str | None:
    """'model name' (x86), 'Model' or 'Hardware' (ARM) from /proc/cpuinfo; else platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return platform.processor() or None
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            found.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if key in found:
            return found[key]
    return platform.processor() or None


def _memory_total() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            return proc.parse_meminfo(f.read())[0]
    except (OSError, ValueError):
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _disks() -> list[dict[str, Any]]:
    if sys.platform.startswith("linux"):
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            filesystems = proc.disk_usage(proc.parse_mounts(f.read()))
        sizes = [(fs.mount, fs.size_bytes, fs.free_bytes) for fs in filesystems]
    else:
        root = os.environ.get("SystemDrive", "C:") + "\\" if sys.platform == "win32" else "/"
        usage = shutil.disk_usage(root)
        sizes = [(root, float(usage.total), float(usage.free))]
    return [
        {"mount": mount, "total_gb": round(size / GIB, 2), "free_gb": round(free / GIB, 2),
         "free_percent": round(100 * free / size, 2)}
        for mount, size, free in sizes if size > 0
    ]


def _boot_time() -> str | None:
    with open("/proc/stat", encoding="utf-8") as f:
        boot = proc.parse_stat(f.read())[2]
    if boot is None:
        return None
    return datetime.fromtimestamp(boot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _interfaces() -> list[dict[str, Any]]:
    """Interfaces with addresses from `ip -j addr`; names only (addresses null) where `ip`
    is unavailable."""
    if shutil.which("ip"):
        try:
            return parse_ip_addr(await _run("ip", "-j", "addr", "show"))
        except (OSError, ValueError, TimeoutError) as exc:
            log.debug("inventory: ip -j addr failed: %r", exc)
    return await asyncio.to_thread(_names_only)


def _names_only() -> list[dict[str, Any]]:
    return [{"name": name, "mac": _sys_mac(name), "state": None, "addresses": None}
            for _, name in socket.if_nameindex()]


def parse_ip_addr(output: str) -> list[dict[str, Any]]:
    """`ip -j addr` JSON -> [{name, mac, state, addresses: [{family, address, prefixlen}]}]."""
    result = []
    for link in json.loads(output):
        mac = link.get("address") if link.get("link_type") != "loopback" else None
        result.append({
            "name": link.get("ifname"),
            "mac": mac,
            "state": link.get("operstate"),
            "addresses": [
                {"family": "ipv4" if a.get("family") == "inet" else "ipv6",
                 "address": a.get("local"), "prefixlen": a.get("prefixlen")}
                for a in link.get("addr_info", []) if a.get("family") in ("inet", "inet6")
            ],
        })
    return result


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), PART_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise OSError(f"{argv[0]} exited with {process.returncode}")
    return out.decode("utf-8", errors="replace")


def _sys_mac(name: str) -> str | None:
    try:
        with open(f"/sys/class/net/{name}/address", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None
