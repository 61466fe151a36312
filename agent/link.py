"""The agent's NATS connection: the shared supervised link (cairn_common/supervised.py) with
every configured URL, TLS, the device's own inbox prefix, and its creds file.

The link renews the JWT ahead of its expiry (over NATS while it is valid, through PocketBase
once it expired: `DeviceCredentials`), and
at once when the server says it expired or was revoked; it reopens after any close and
never keeps two connections: commands are subscribed in a queue group, so while a renewed
connection overlaps the old one for a moment, each request still reaches one of them.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

from agent.config import AgentConfig
from agent.context import Stats
from cairn_common.natsauth import device_inbox
from cairn_common.renewable import Renewable
from cairn_common.supervised import LinkSettings, OnConnect, SupervisedLink

Link = SupervisedLink


def agent_link(config: AgentConfig, stats: Stats, credentials: Renewable,
               on_connect: OnConnect, on_reconnect: Callable[[], None] | None = None) -> Link:
    settings = LinkSettings(
        name=f"cairn-agent/{config.device.code}", label="agent",
        servers=tuple(config.nats.urls),
        # the agent role subscribes only under its own prefix (no one reads its replies)
        inbox_prefix=device_inbox(config.device.code), tls=tls_context(config),
        ping_interval=config.nats.ping_interval, max_outstanding_pings=3, reconnect_time_wait=1.0,
        backoff_max=60.0,  # recovery from an expired JWT is a rate-limited PocketBase login
    )
    def reconnected() -> None:
        stats.reconnect_times.append(time.monotonic())
        if on_reconnect is not None:
            on_reconnect()

    return SupervisedLink(settings, credentials, on_connect, on_reconnect=reconnected)


def tls_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    tls = cfg.nats.tls
    if not (tls.ca or tls.cert):
        return None
    context = ssl.create_default_context(cafile=str(cfg.path(tls.ca)) if tls.ca else None)
    if tls.cert:
        context.load_cert_chain(str(cfg.path(tls.cert)),
                                str(cfg.path(tls.key)) if tls.key else None)
    return context
