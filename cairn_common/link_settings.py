"""What a supervised link is configured with and reports (see supervised.py): settings,
metrics, and how a server's refusal is read."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

REOPENED = Counter("cairn_nats_link_reopened_total",
                   "NATS connections (re)opened by a supervised link, by reason",
                   ["link", "reason"])
RENEWALS = Counter("cairn_nats_link_renewals_total",
                   "Credential renewals of supervised links, by outcome", ["link", "outcome"])
FAILURES = Counter("cairn_nats_link_failures_total",
                   "Failed supervisor steps (connect, on_connect, renew), retried with backoff",
                   ["link"])
CONNECTED = Gauge("cairn_nats_links_connected", "Supervised links connected now", ["link"])

AUTH_REASONS = ("expired", "revoked", "authorization")
# reasons a connection is opened, as metric labels (anything else a caller passes to
# replace() is counted as "requested")
REASONS = ("first", "renewal", "rotation", "closed", "requested", *AUTH_REASONS)
EXPIRY_MARGIN = 2.0  # seconds before exp at which a JWT counts as expired


@dataclass(frozen=True)
class LinkSettings:
    name: str  # the connection name shown in /connz
    label: str  # metrics label: few values ("agent", "bridge-tenant", "router-tenant", ...)
    servers: tuple[str, ...]
    inbox_prefix: str | None = None
    tls: ssl.SSLContext | None = None
    ping_interval: float = 20.0
    max_outstanding_pings: int = 3
    reconnect_time_wait: float = 1.0
    connect_timeout: float = 5.0
    renew_at: float = 0.7  # fraction of the JWT lifetime after which it is renewed
    jitter: float = 0.05  # +- this fraction of the lifetime, so fleets spread out
    backoff_first: float = 0.5
    backoff_max: float = 30.0
    retire_max: float = 3600.0  # longest an old connection is kept for in-flight work


OnConnect = Callable[[NATS], Awaitable[None]]


def auth_reason(error: BaseException | None) -> str | None:
    """"expired", "revoked" or "authorization" when the server refused our credentials.

    Only nats-server's own `-ERR` texts count ("User/Account Authentication Expired",
    "... Revoked", "Authorization Violation"): a TLS "certificate has expired" is not a JWT
    problem, and renewing would not fix it."""
    if error is None:
        return None
    text = str(error).lower()
    if "authentication expired" in text:
        return "expired"
    if "authentication revoked" in text:
        return "revoked"
    if isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in text:
        return "authorization"
    return None


def connection_status(nc: NATS | None) -> dict[str, Any]:
    """The `nats` part of an agent's health document, for one connection (or none)."""
    if nc is None:
        return {"connected": False, "url": None, "reconnects": 0, "in_msgs": 0,
                "out_msgs": 0}
    url = nc.connected_url
    return {"connected": nc.is_connected,
            "url": f"{url.scheme}://{url.hostname}:{url.port}" if url else None,
            "reconnects": nc.stats["reconnects"], "in_msgs": nc.stats["in_msgs"],
            "out_msgs": nc.stats["out_msgs"]}
