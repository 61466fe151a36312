"""Collectors: golden exporter fixtures, rates between scrapes, /proc, a real HTTP exporter."""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collectors import CollectError, Sample, node_exporter, proc, windows_exporter
from agent.collectors.inventory import collect_inventory, os_info, parse_ip_addr, parse_os_release
from agent.collectors.system import SystemCollector, parse, to_document

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "exporters"
CASES = sorted(p.stem for p in FIXTURES.glob("*.prom"))
NOW = 1_700_000_000.0  # wall clock for sources that do not expose theirs (windows 0.30)


def text(stem: str) -> str:
    return (FIXTURES / f"{stem}.prom").read_text()


def reader(stem: str):
    return node_exporter.parse if stem.startswith("node_exporter") else windows_exporter.parse


def as_json(sample: Sample) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(sample)))


# -- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_fixture_matches_golden_file(case: str) -> None:
    expected = json.loads((FIXTURES / f"{case}.json").read_text())
    if "error" in expected:
        with pytest.raises(CollectError) as info:
            reader(case)(text(case))
        for part in expected["error"]:
            assert part in str(info.value)
        return
    sample = reader(case)(text(case))
    _assert_close(as_json(sample), expected["sample"])
    assert parse(text(case)) == sample, "detection must pick the same reader"
    assert to_document(sample, now=NOW) == expected["document"]


def _assert_close(actual: object, expected: object, where: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float | int) and not isinstance(expected, bool):
        assert actual == pytest.approx(expected, rel=1e-12), where
    else:
        assert actual == expected, where


# -- rates between two scrapes --------------------------------------------------------------


def test_node_exporter_rates_between_two_scrapes() -> None:
    first, second = parse(text("node_exporter_linux")), parse(text("node_exporter_linux_2"))
    doc = to_document(second, first, elapsed=60.0)
    # busy (all but idle/iowait) grew 15 + 15 + 18 + 12 = 60 s; all modes 4 CPUs x 60 s = 240 s
    assert doc["cpu_percent"] == 25.0
    # received: eth0 +6 000 000, eth1 +600 000 in 60 s (lo, docker0, veth ignored)
    assert doc["network"]["rx_bytes_per_sec"] == 110_000.0
    # sent: eth0 +1 200 000, eth1 +0 in 60 s
    assert doc["network"]["tx_bytes_per_sec"] == 20_000.0
    assert doc["uptime_seconds"] == 86460 and doc["load_1m"] == 0.55


def test_windows_exporter_rates_between_two_scrapes() -> None:
    first, second = parse(text("windows_exporter")), parse(text("windows_exporter_2"))
    doc = to_document(second, first, elapsed=60.0, now=NOW + 60)
    # user + privileged grew 30 + 20 + 10 + 15 = 75 s; with idle 4 cores x 60 s = 240 s.
    # dpc and interrupt (inside privileged) also grew and must not count twice.
    assert doc["cpu_percent"] == 31.25
    # Intel NIC +1 200 000 received, +300 000 sent in 60 s; Teredo's growth ignored
    assert doc["network"] == {"rx_bytes_per_sec": 20_000.0, "tx_bytes_per_sec": 5_000.0}
    assert doc["load_1m"] is None and doc["uptime_seconds"] == 86459


def test_counter_reset_after_reboot_reports_since_boot_averages() -> None:
    before, after = parse(text("node_exporter_linux_2")), parse(text("node_exporter_linux_reset"))
    doc = to_document(after, before, elapsed=3600.0)
    # after the reboot 4 CPUs x (30 user + 15 system) = 180 s busy of 4 x 300 s
    assert doc["cpu_percent"] == 15.0
    # eth0 3 000 000 / 600 000 bytes in 300 s of uptime
    assert doc["network"] == {"rx_bytes_per_sec": 10_000.0, "tx_bytes_per_sec": 2_000.0}


def test_one_counter_going_backwards_only_affects_that_rate() -> None:
    first, second = parse(text("node_exporter_linux")), parse(text("node_exporter_linux_2"))
    shrunk = dataclasses.replace(second, net_rx_bytes=1_000_000.0)  # an interface went away
    doc = to_document(shrunk, first, elapsed=60.0)
    assert doc["cpu_percent"] == 25.0
    assert doc["network"]["rx_bytes_per_sec"] == round(1_000_000 / 86460.5, 2)
    assert doc["network"]["tx_bytes_per_sec"] == 20_000.0


counters = st.floats(min_value=0, max_value=1e13, allow_nan=False)


@given(counters, counters, counters, counters, counters, counters,
       st.floats(min_value=0.001, max_value=1e5), st.floats(min_value=1, max_value=1e8))
def test_rates_are_never_negative_or_absurd(b0, t0, b1, t1, rx0, rx1, elapsed, uptime) -> None:
    def sample(busy: float, total: float, rx: float) -> Sample:
        return Sample("builtin", min(busy, total), total, 100.0, 50.0, None, (), rx, rx,
                      boot_time=NOW - uptime, time=NOW)

    doc = to_document(sample(b1, t1, rx1), sample(b0, t0, rx0), elapsed=elapsed)
    assert 0.0 <= doc["cpu_percent"] <= 100.0
    rate = doc["network"]["rx_bytes_per_sec"]
    assert 0.0 <= rate <= max(rx1 / elapsed, rx1 / uptime) * 1.0001 + 0.01


# -- missing metrics and garbage ------------------------------------------------------------


def without(stem: str, *needles: str) -> str:
    return "".join(line for line in text(stem).splitlines(keepends=True)
                   if not any(n in line for n in needles))


def test_missing_cpu_and_memory_are_named() -> None:
    with pytest.raises(CollectError, match="node_cpu_seconds_total"):
        node_exporter.parse(without("node_exporter_linux", "node_cpu_"))
    with pytest.raises(CollectError) as info:
        windows_exporter.parse(without("windows_exporter", "_memory_"))
    assert "memory total" in str(info.value) and "available memory" in str(info.value)
    assert "windows_memory_physical_total_bytes" in str(info.value)


def test_missing_optional_parts_give_empty_disks_and_zero_network() -> None:
    sample = windows_exporter.parse(without("windows_exporter", "logical_disk", "_net_"))
    doc = to_document(sample, now=NOW)
    assert doc["disks"] == []
    assert doc["network"] == {"rx_bytes_per_sec": 0.0, "tx_bytes_per_sec": 0.0}


GARBAGE = {
    "random bytes": random.Random(7).randbytes(600).decode("latin-1"),
    "html": "<!DOCTYPE html>\n<html><head><title>Node Exporter</title></head>\n"
            "<body><a href='/metrics'>Metrics</a></body></html>\n",
    "empty": "",
    "json": json.dumps({"cpu_seconds": 12.5, "memory": [1, 2, 3]}),
    "other exposition": "# TYPE up gauge\nup 1\nhttp_requests_total{code=\"200\"} 7\n",
}


@pytest.mark.parametrize("name", GARBAGE)
@pytest.mark.parametrize("parser", [node_exporter.parse, windows_exporter.parse, parse])
def test_garbage_raises_collect_error(parser, name: str) -> None:
    with pytest.raises(CollectError):
        parser(GARBAGE[name])


def test_non_text_input_raises_collect_error() -> None:
    with pytest.raises(CollectError, match="must be text"):
        parse(b"node_load1 1")  # type: ignore[arg-type]


# -- /proc --------------------------------------------------------------------------------


def test_proc_parsers_on_literals() -> None:
    stat = ("cpu  1000 10 500 8000 200 0 40 50 30 0\ncpu0 500 5 250 4000 100 0 20 25 15 0\n"
            "intr 1 2 3\nbtime 1699913600\n")
    # busy = user+nice+system+irq+softirq+steal = 1600 ticks; guest is inside user
    assert proc.parse_stat(stat) == (16.0, 98.0, 1699913600.0)
    meminfo = "MemTotal:  16384000 kB\nMemFree:  1000000 kB\nMemAvailable:  6000000 kB\n"
    assert proc.parse_meminfo(meminfo) == (16384000 * 1024, 6000000 * 1024)
    old_kernel = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"
    assert proc.parse_meminfo(old_kernel) == (1000 * 1024, 400 * 1024)
    assert proc.parse_loadavg("0.42 0.38 0.31 2/512 12345\n") == 0.42
    assert proc.parse_uptime("86400.50 300000.00\n") == 86400.5
    net_dev = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n"
        "    lo: 9999 10 0 0 0 0 0 0 9999 10 0 0 0 0 0 0\n"
        "  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n"
        "docker0: 500 5 0 0 0 0 0 0 700 7 0 0 0 0 0 0\n"
        "  wlan0: 300 3 0 0 0 0 0 0 400 4 0 0 0 0 0 0\n"
    )
    assert proc.parse_net_dev(net_dev) == (1300.0, 2400.0)
    mounts = (
        "proc /proc proc rw 0 0\n/dev/sda2 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n"
        "/dev/sdb1 /mnt/My\\040Disk xfs rw 0 0\nnas:/export /mnt/nas nfs4 rw 0 0\n"
        "overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0\n"
        "/dev/sdc1 /run/media/alice/USB vfat rw 0 0\ntmpfs /run/user/1000 tmpfs rw 0 0\n"
    )
    assert proc.parse_mounts(mounts) == [("/dev/sda2", "/", "ext4"),
                                         ("/dev/sdb1", "/mnt/My Disk", "xfs"),
                                         ("/dev/sdc1", "/run/media/alice/USB", "vfat")]


def test_proc_garbage_raises_collect_error(tmp_path: Path) -> None:
    for name in ("stat", "meminfo", "loadavg", "uptime", "mounts"):
        (tmp_path / name).write_text("garbage\n")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "dev").write_text("")
    with pytest.raises(CollectError, match="cannot parse"):
        proc.read_sync(str(tmp_path))
    with pytest.raises(CollectError, match="cannot read"):
        proc.read_sync(str(tmp_path / "missing"))


async def test_builtin_reader_on_this_machine() -> None:
    sample = await proc.read()
    assert sample.source == "builtin" and sample.memory_total_bytes > 0
    doc = await SystemCollector((), first_read_gap=0.2).collect()
    assert doc["source"] == "builtin"
    assert doc["memory_total_gb"] > 0 and 0 <= doc["memory_used_percent"] <= 100
    assert 0 <= doc["cpu_percent"] <= 100
    assert doc["disks"] and all(d["total_gb"] > 0 for d in doc["disks"])
    assert doc["uptime_seconds"] > 0 and doc["load_1m"] >= 0


# -- SystemCollector against a real HTTP server ---------------------------------------------


class Exporter(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, list[tuple[int, str]]]] = {}

    def do_GET(self) -> None:
        queue = self.routes.get(self.path, [(404, "not found")])
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def serve(path: str, *responses: tuple[int, str]) -> str:
    Exporter.routes[path] = list(responses)
    return path


def nothing_listens() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/metrics"


async def test_node_exporter_first_collect_double_reads_then_remembers(exporter: str) -> None:
    serve("/node", (200, text("node_exporter_linux")), (200, text("node_exporter_linux_2")),
          (200, text("node_exporter_linux_reset")))
    collector = SystemCollector((f"{exporter}/node",), first_read_gap=0.05)
    doc = await collector.collect()
    assert doc["source"] == "node_exporter"
    assert doc["cpu_percent"] == 25.0  # between the two reads of the first collect
    assert doc["network"]["rx_bytes_per_sec"] > 110_000.0  # 6 600 000 B in well under 60 s
    doc = await collector.collect()  # the host rebooted meanwhile: counters went back
    assert doc["cpu_percent"] == 15.0
    assert doc["network"] == {"rx_bytes_per_sec": 10_000.0, "tx_bytes_per_sec": 2_000.0}


async def test_windows_exporter_detected(exporter: str) -> None:
    serve("/win", (200, text("windows_exporter")), (200, text("windows_exporter_2")))
    doc = await SystemCollector((f"{exporter}/win",), first_read_gap=0.05).collect()
    assert doc["source"] == "windows_exporter" and doc["cpu_percent"] == 31.25


async def test_nothing_listening_falls_back_to_builtin() -> None:
    doc = await SystemCollector((nothing_listens(),), timeout=1.0, first_read_gap=0.05).collect()
    assert doc["source"] == "builtin"


async def test_http_500_and_html_try_the_next_exporter(exporter: str) -> None:
    serve("/broken", (500, "internal error"))
    serve("/html", (200, GARBAGE["html"]))
    serve("/ok", (200, text("node_exporter_linux")))
    urls = (f"{exporter}/broken", f"{exporter}/html", f"{exporter}/ok")
    doc = await SystemCollector(urls, first_read_gap=0.05).collect()
    assert doc["source"] == "node_exporter"
    doc = await SystemCollector(urls[:2], first_read_gap=0.05).collect()
    assert doc["source"] == "builtin"


async def test_no_source_at_all_names_the_urls(exporter: str) -> None:
    serve("/broken", (500, "internal error"))
    urls = (f"{exporter}/broken", nothing_listens())
    with pytest.raises(CollectError) as info:
        await SystemCollector(urls, timeout=1.0, builtin=False).collect()
    message = str(info.value)
    assert message.startswith(f"no exporter answered at {urls[0]}, {urls[1]} and no built-in")
    assert "HTTP 500" in message


# -- inventory ----------------------------------------------------------------------------


async def test_inventory_on_this_machine() -> None:
    doc = await collect_inventory("1.2.3")
    assert doc["agent_version"] == "1.2.3" and doc["hostname"]
    assert set(doc) >= {"hostname", "fqdn", "os", "architecture", "cpu", "memory_total_gb",
                        "python_version", "network_interfaces", "disks", "boot_time"}
    assert set(doc["os"]) == {"platform", "name", "version", "kernel"}
    assert doc["os"]["platform"] == "linux" and doc["os"]["name"]
    assert doc["cpu"]["count"] >= 1 and doc["memory_total_gb"] > 0
    assert any(i["name"] == "lo" for i in doc["network_interfaces"])
    assert doc["disks"] and doc["boot_time"].endswith("Z")
    assert os_info() == {k: doc["os"][k] for k in ("platform", "name", "version")}


def test_inventory_parsers() -> None:
    release = 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\n# comment\nID=debian\n'
    assert parse_os_release(release) == {"NAME": "Debian GNU/Linux", "VERSION_ID": "12",
                                         "ID": "debian"}
    ip = json.dumps([{"ifname": "eth0", "address": "02:00:00:00:00:01", "operstate": "UP",
                      "link_type": "ether", "addr_info": [
                          {"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
                          {"family": "inet6", "local": "fd00::2", "prefixlen": 64}]}])
    assert parse_ip_addr(ip) == [{"name": "eth0", "mac": "02:00:00:00:00:01", "state": "UP",
                                  "addresses": [
                                      {"family": "ipv4", "address": "192.0.2.2", "prefixlen": 24},
                                      {"family": "ipv6", "address": "fd00::2", "prefixlen": 64}]}]
