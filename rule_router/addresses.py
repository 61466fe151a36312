"""Where webhooks may connect: public addresses only, unless the operator allows more.

A webhook URL is written by a tenant admin, and the router runs inside the MSP's network:
without this, a rule could make the router call its own metrics port, PocketBase, the
cloud metadata service (169.254.169.254) or anything else on the private network, and
read the answer back through `alerts.deadletter`. So an address that is loopback,
link-local, private, unique-local, unspecified, multicast, reserved, CGNAT or otherwise
not globally routable (also when wrapped as IPv4-mapped, 6to4 or NAT64 IPv6) is refused,
unless `CAIRN_ROUTER_WEBHOOK_ALLOW` (comma-separated hosts or CIDRs) lists it.

An entry `slug:host-or-cidr` applies to the tenant with that slug only (what the MSP opens
for tenant A is not open to tenant B's rules); a bare entry applies to every tenant. An
IPv6 entry is best written in brackets (`[fd00::/8]`, `a-slug:[fd00::/8]`): an unbracketed
one that reads as `slug:address` (`2001:db8::/32`) is taken as scoped to that "slug",
which allows less, never more.

A refusal for a host *name* says the same whether the name does not resolve or resolves
to an address that is not public, and names no address class: anything more would let a
rule author map the router's internal DNS through dead letters. For an address written
in the URL the class is shown (the author wrote it; nothing is revealed).

The decision is made on the address actually connected to (`actions/egress.py`), after
resolving the name; `literal_refusal` answers early, at validation, for a URL whose host
is written as an address (or `localhost`). Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
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
    def parse(cls, text: str, tenant: str | None = None) -> EgressPolicy:
        """`10.0.0.0/8, 127.0.0.1, hooks.internal, a-slug:10.1.0.0/16`: what `tenant` may
        reach (bare entries, and scoped ones whose slug is `tenant`; without a tenant the
        bare ones only). A malformed CIDR is logged and left out (allowing nothing is the
        safe way to be wrong)."""
        return _parse(text, tenant)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None,
                     tenant: str | None = None) -> EgressPolicy:
        text = (os.environ if environ is None else environ).get(WEBHOOK_ALLOW, "")
        return cls.parse(text, tenant)

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
        if parse_ip(host) is None:
            return name_refusal(host)  # neither the address nor its class: see above
        return (f"refused: {ip} is not a public address ({kind}); webhooks may reach it "
                f"only if {WEBHOOK_ALLOW} lists it")


def name_refusal(host: str) -> str:
    """The one message for a host name that is refused: it does not resolve, or not to a
    public address (the two must not be told apart)."""
    return (f"refused: {host} does not resolve to a public address; webhooks may reach it "
            f"only if {WEBHOOK_ALLOW} lists it")


_SCOPED = re.compile(r"([a-z0-9-]+):(.+)")
_HOST = re.compile(r"[A-Za-z0-9_.-]+")


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return None


def _scope(entry: str) -> tuple[str | None, str]:
    """(slug, target) of a `slug:target` entry, else (None, entry)."""
    m = None if entry.startswith("[") else _SCOPED.fullmatch(entry)
    if m is None:
        return None, entry
    target = m.group(2).strip()
    if _network(target) is None and not _HOST.fullmatch(target):
        return None, entry  # `fe80::1`, `fd00::/8`: an address, not `slug:...`
    if ":" in target and not target.startswith("["):
        log.warning("read as scoped to one tenant; write an IPv6 entry meant for every "
                    "tenant in brackets", extra={"setting": WEBHOOK_ALLOW, "entry": entry,
                                                 "tenant": m.group(1)})
    return m.group(1), target


@lru_cache(maxsize=256)  # validation reads the setting for every row: log a bad entry once
def _parse(text: str, tenant: str | None) -> EgressPolicy:
    hosts, networks = set(), []
    for raw in (e.strip() for e in text.split(",")):
        scope, entry = _scope(raw)
        if not entry or (scope is not None and scope != tenant):
            continue
        network = _network(entry)
        if network is not None:
            networks.append(network)
            continue
        if "/" in entry or any(ch.isspace() for ch in entry):
            log.error("ignored: not a host name or CIDR",
                      extra={"setting": WEBHOOK_ALLOW, "entry": raw})
            continue
        hosts.add(normal_host(entry))
    return EgressPolicy(frozenset(hosts), tuple(networks))


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
