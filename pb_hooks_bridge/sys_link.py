"""The bridge's SYS connection (account pushes on `$SYS.REQ.CLAIMS.*`) as a supervised link.

The SYS user's JWT (made by bootstrap) does not expire, so there is nothing to renew; what
the link adds is that a connection closed for good (a server-side `-ERR`) is reopened with
backoff instead of leaving every push to fail until the bridge restarts.
"""

from __future__ import annotations

from collections.abc import Callable

from cairn_common import creds
from cairn_common.renewable import FixedCredentials
from cairn_common.supervised import LinkSettings, OnConnect, SupervisedLink
from pb_hooks_bridge.config import BridgeConfig


def sys_link(config: BridgeConfig, on_connect: OnConnect,
             on_reconnect: Callable[[], None] | None, purpose: str = "sys",
             servers: tuple[str, ...] | None = None) -> SupervisedLink:
    """`purpose` names another SYS connection (kicker.py: one to each server, `servers`
    that one URL alone)."""
    path = config.layout.sys_user_creds
    held = creds.read(path)  # read once; bootstrap rewrites it only before start
    settings = LinkSettings(
        name=f"cairn-bridge/{purpose}", label=f"bridge-{purpose}",
        servers=servers or config.nats_urls,
        ping_interval=5, reconnect_time_wait=0.5, backoff_max=5.0)
    return SupervisedLink(settings, FixedCredentials(lambda: held), on_connect,
                          on_reconnect=on_reconnect)
