"""Where webhooks may connect: public addresses only, unless the operator allows more.

A webhook URL is written by a tenant admin, and the router runs inside the MSP's network:
without this, a rule could make the router call its own metrics port, PocketBase, the
cloud metadata service (169.254.169.254) or anything else on the private network, and
read the answer back through `alerts.deadletter`. So an address that is loopback,
link-local, private, unique-local, unspecified, multicast, reserved, CGNAT or otherwise
not globally routable (also when wrapped as IPv4-mapped, 6to4 or NAT64 IPv6) is refused,
unless `CAIRN_ROUTER_WEBHOOK_ALLOW` (comma-separated hosts or CIDRs) lists it.

The decision is made on the address actually connected to (`actions/egress.py`), after
resolving the name; `literal_refusal` answers early, at validation, for a URL whose host
is written as an address (or `localhost`). Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

WEBHOOK_ALLOW = "CAIRN_ROUTER_WEBHOOK_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NET = ipaddress.ip_network
_CLASSES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (  # checked in this order
    ("unspecified", (_NET("0.0.0.0/8"), _NET("::/128"))),
    ("loopback", (_NET("127.0.0.0/8"), _NET("::1/128"))),
    ("link-local: cloud metadata", (_NET("169.254.169.254/32"), _NET("fd00:ec2::254/128"))),
    ("link-local", (_NET("169.254.0.0/16"), _NET("fe80::/10"))),
    ("private", (_NET("10.0.0.0/8"), _NET("172.16.0.0/12"), _NET("192.168.0.0/16"))),
    ("unique-local", (_NET("fc00::/7"),)),
    ("CGNAT (shared address space)", (_NET("100.64.0.0/10"),)),
    ("multicast", (_NET("224.0.0.0/4"), _NET("ff00::/8"))),
    ("site-local", (_NET("fec0::/10"),)),
    ("reserved", (_NET("240.0.0.0/4"),)),
)
_NAT64 = _NET("64:ff9b::/96")


def classify(ip: IPAddress) -> str | None:
    """The class of a non-public address ("loopback", "private", ...), None if public."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        kind = classify(inner)
        how = "IPv4-mapped" if getattr(ip, "ipv4_mapped", None) else "IPv4 inside IPv6"
        return f"{kind}, {how}" if kind else None
    for name, networks in _CLASSES:
        if any(ip.version == n.version and ip in n for n in networks):
            return name
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "special-purpose (not globally routable)"
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_ip(host: str) -> IPAddress | None:
    """`host` as an address, in every spelling the resolver accepts (`127.1`,
    `0x7f.0.0.1`, `2130706433`, `[::1]`, `fe80::1%eth0`), or None for a name."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class EgressPolicy:
    """What the operator allowed beyond public addresses: host names (any address they
    resolve to) and networks (an address in one, whatever the name)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> EgressPolicy:
        """`10.0.0.0/8, 127.0.0.1, hooks.internal`. A malformed CIDR is logged and left
        out (allowing nothing is the safe way to be wrong)."""
        hosts, networks = set(), []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or any(ch.isspace() for ch in entry):
                log.error("ignored: not a host name or CIDR",
                          extra={"setting": WEBHOOK_ALLOW, "entry": entry})
                continue
            hosts.add(normal_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> EgressPolicy:
        return cls.parse((os.environ if environ is None else environ).get(WEBHOOK_ALLOW, ""))

    def allows(self, host: str, ip: IPAddress) -> bool:
        if normal_host(host) in self.hosts:
            return True
        candidates = [ip] + ([inner] if (inner := embedded_ipv4(ip)) else [])
        return any(c.version == n.version and c in n for c in candidates for n in self.networks)

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why connecting to `ip` (resolved from `host`) is refused, or None."""
        kind = classify(ip)
        if kind is None or self.allows(host, ip):
            return None
        # a name's resolved address is not shown: it would map the router's network
        what = (f"{ip} is not a public address" if parse_ip(host) is not None
                else f"{host} resolves to an address that is not public")
        return f"refused: {what} ({kind}); webhooks may reach it only if {WEBHOOK_ALLOW} lists it"


def literal_refusal(pattern: list[str | None], policy: EgressPolicy) -> str | None:
    """Validation: why a webhook URL whose host is written as an address (or `localhost`)
    is refused, or None when the host is a name or not fixed by the literal text. In
    `pattern` each None is a placeholder whose value is percent-encoded (so it can add to
    a host but never end one); a URL with `${ENV}` parts cannot be judged here."""
    hosts = set()
    for filler in ("0", "1"):  # a host that changes with the filler is not literal
        try:
            hosts.add(urlsplit("".join(filler if p is None else p for p in pattern)).hostname)
        except ValueError:
            return None
    host = hosts.pop() if len(hosts) == 1 else None
    if not host:
        return None
    ip, name = parse_ip(host), normal_host(host)
    if ip is None and (name == "localhost" or name.endswith(".localhost")):
        ip = ipaddress.IPv4Address("127.0.0.1")
        if policy.allows(host, ipaddress.IPv6Address("::1")):
            return None
    return None if ip is None else policy.refusal(host, ip)
