"""The telemetry `system` document: scrape an exporter (or read /proc) and turn counters
into percentages and rates.

Sources are tried in order: each configured exporter URL, then the built-in /proc reader
(Linux only). Rates (cpu_percent, network bytes/s) are deltas between this sample and the
previous one *from the same source*, so a fallback never mixes two machines' views.

First sample from a source (agent start, or after a source switch or a pause longer than
`max_age`): the collector reads the same source again after `first_read_gap` (0.5 s) and
reports the rates over that short window, so the first document already shows current
load rather than 0. This costs one extra scrape per source change and applies to
exporters and /proc alike; should the second read fail, see "no usable delta".

No usable delta (counter reset after a reboot, an interface gone, failed second read):
rates fall back to averages since boot (counters / uptime, busy / total CPU time), which
are never negative nor absurd; 0.0 when the uptime is unknown.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import httpx

from agent.collectors import (
    CollectError,
    Sample,
    node_exporter,
    parse_exposition,
    proc,
    windows_exporter,
)

log = logging.getLogger(__name__)

GIB = 1024**3
MAX_BODY_BYTES = 32 * 1024 * 1024
BUILTIN = "builtin"


def parse(text: str) -> Sample:
    """Parse an exposition from whichever exporter produced it (detected by metric names)."""
    series = parse_exposition(text)
    if node_exporter.is_node_exporter(series):
        return node_exporter.from_series(series)
    if windows_exporter.is_windows_exporter(series):
        return windows_exporter.from_series(series)
    raise CollectError("neither node_exporter nor windows_exporter metrics in the response")


async def fetch(client: httpx.AsyncClient, url: str, timeout: float) -> Sample:
    """GET one exporter and parse it; every failure becomes a CollectError naming the URL."""
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", url, headers={"Accept": "text/plain"}) as resp:
                if resp.status_code != 200:
                    raise CollectError(f"{url} answered HTTP {resp.status_code}")
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise CollectError(f"{url} sent more than {MAX_BODY_BYTES} bytes")
    except TimeoutError as exc:
        raise CollectError(f"{url} did not answer within {timeout:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise CollectError(f"{url} did not answer: {exc or type(exc).__name__}") from exc
    text = body.decode("utf-8", errors="replace")
    try:
        return await asyncio.to_thread(parse, text)  # large pages take tens of ms to parse
    except CollectError as exc:
        raise CollectError(f"{url}: {exc}") from exc


def to_document(
    current: Sample,
    previous: Sample | None = None,
    elapsed: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The `system` document (without timestamp) from a sample and, for rates, the
    previous sample of the same source taken `elapsed` seconds earlier.

    Sizes are GiB (1024**3). memory_free_gb is *available* memory (free plus reclaimable
    cache), the figure that says whether a program still fits; disks' free is the space
    an unprivileged user may write.
    """
    clock = current.time if current.time else (time.time() if now is None else now)
    uptime = max(clock - current.boot_time, 0.0) if current.boot_time else None
    cpu, rx, tx = _rates(current, previous, elapsed, uptime)
    mem_total = current.memory_total_bytes
    mem_free = min(max(current.memory_available_bytes, 0.0), mem_total)
    return {
        "cpu_percent": round(cpu, 2),
        "memory_total_gb": _gb(mem_total),
        "memory_free_gb": _gb(mem_free),
        "memory_used_percent": round(100 * (mem_total - mem_free) / mem_total, 2),
        "load_1m": None if current.load1 is None else round(current.load1, 2),
        "disks": [
            {
                "mount": fs.mount,
                "total_gb": _gb(fs.size_bytes),
                "free_gb": _gb(fs.free_bytes),
                "free_percent": round(100 * fs.free_bytes / fs.size_bytes, 2),
            }
            for fs in current.filesystems
        ],
        "network": {"rx_bytes_per_sec": round(rx, 2), "tx_bytes_per_sec": round(tx, 2)},
        "uptime_seconds": None if uptime is None else int(uptime),
        "source": current.source,
    }


def _gb(value: float) -> float:
    return round(value / GIB, 2)


def _rates(
    cur: Sample, prev: Sample | None, elapsed: float | None, uptime: float | None
) -> tuple[float, float, float]:
    """(cpu percent, rx/s, tx/s); a counter that went backwards counts as no delta."""
    has_delta = prev is not None and elapsed is not None and elapsed > 0
    cpu = None
    if has_delta and prev is not None:
        d_total = cur.cpu_total_seconds - prev.cpu_total_seconds
        d_busy = cur.cpu_busy_seconds - prev.cpu_busy_seconds
        if d_total > 0 and d_busy >= 0:
            cpu = 100 * d_busy / d_total
    if cpu is None and cur.cpu_total_seconds > 0:
        cpu = 100 * cur.cpu_busy_seconds / cur.cpu_total_seconds
    if cpu is None:
        cpu = 0.0

    def rate(now_value: float, before: float | None) -> float:
        if has_delta and elapsed and before is not None and now_value >= before:
            return (now_value - before) / elapsed
        return now_value / uptime if uptime else 0.0

    rx = rate(cur.net_rx_bytes, prev.net_rx_bytes if prev else None)
    tx = rate(cur.net_tx_bytes, prev.net_tx_bytes if prev else None)
    return min(max(cpu, 0.0), 100.0), max(rx, 0.0), max(tx, 0.0)


class SystemCollector:
    """Produces `system` documents; remembers the previous sample of each source.

    `builtin` turns the /proc fallback on or off (default: on where there is /proc, i.e.
    Linux); a previous sample older than `max_age` seconds is not used for rates.
    """

    def __init__(
        self,
        exporters: tuple[str, ...],
        timeout: float = 3.0,
        first_read_gap: float = 0.5,
        max_age: float = 3600.0,
        builtin: bool | None = None,
    ) -> None:
        self.exporters = tuple(exporters)
        self.timeout = timeout
        self.first_read_gap = first_read_gap
        self.max_age = max_age
        self.builtin = sys.platform.startswith("linux") if builtin is None else builtin
        self._previous: dict[str, tuple[Sample, float]] = {}
        self._last_source: str | None = None

    async def collect(self) -> dict[str, Any]:
        """One document; CollectError (only) when no source gives one."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                return await self._collect(client)
        except CollectError:
            raise
        except Exception as exc:  # a bug must cost one document, not the telemetry task
            log.exception("system collection failed unexpectedly")
            raise CollectError(f"system collection failed: {exc!r}") from exc

    async def _collect(self, client: httpx.AsyncClient) -> dict[str, Any]:
        key, sample = await self._read_any(client)
        taken = time.monotonic()
        previous = self._previous.get(key)
        if previous is not None and taken - previous[1] > self.max_age:
            previous = None
        if previous is None and self.first_read_gap > 0:
            await asyncio.sleep(self.first_read_gap)
            try:
                second = await self._read(client, key)
            except CollectError as exc:
                log.debug("second read of %s failed: %s", key, exc)
            else:
                previous, sample, taken = (sample, taken), second, time.monotonic()
        self._previous[key] = (sample, taken)
        if previous is None:
            return to_document(sample)
        return to_document(sample, previous[0], elapsed=taken - previous[1])

    async def _read(self, client: httpx.AsyncClient, key: str) -> Sample:
        if key == BUILTIN:
            return await proc.read()
        return await fetch(client, key, self.timeout)

    async def _read_any(self, client: httpx.AsyncClient) -> tuple[str, Sample]:
        errors: list[str] = []
        for url in self.exporters:
            try:
                sample = await fetch(client, url, self.timeout)
            except CollectError as exc:
                errors.append(str(exc))
                continue
            self._note_source(url)
            return url, sample
        urls = ", ".join(self.exporters) or "(none configured)"
        reasons = f" ({'; '.join(errors)})" if errors else ""
        if not self.builtin:
            raise CollectError(
                f"no exporter answered at {urls} and no built-in reader on this platform{reasons}"
            )
        try:
            sample = await proc.read()
        except CollectError as exc:
            raise CollectError(f"no exporter answered at {urls}{reasons}; {exc}") from exc
        self._note_source(BUILTIN, errors)
        return BUILTIN, sample

    def _note_source(self, key: str, errors: list[str] | None = None) -> None:
        """Log when the source changes, not on every scrape."""
        if key != self._last_source:
            why = f" ({'; '.join(errors)})" if errors else ""
            log.info("system telemetry source is now %s%s", key, why)
            self._last_source = key
