"""The bridge's own NATS connections inside tenant accounts (as its `cairn-bridge` user).

Used to manage the tenant's streams, to watch heartbeats (presence) and to dispatch
commands. Each is a supervised link (cairn_common/supervised.py): renewed ahead of its
JWT's expiry with the JWT the bridge issued itself (`set_creds`, fed from the
`cairn-bridge` row), reopened after any close, and never doubled: heartbeats are
subscribed in a queue group, so while a renewed connection overlaps the old one each
heartbeat is counted once. A command request holds its connection (`hold`) until the
reply: a renewal never cuts an hour-long `exec` short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.client import Client as NATS

from cairn_common.nats_urls import parse_nats_urls
from cairn_common.natsauth import service_inbox
from cairn_common.renewable import MemoryCredentials
from cairn_common.supervised import LinkSettings, SupervisedLink
from pb_hooks_bridge.identities import BRIDGE_USER

log = logging.getLogger(__name__)

CONNECT_WAIT = 15.0  # seconds get() waits for a link's first connection
QUEUE = "cairn-bridge"  # queue group of the bridge's subscriptions in tenant accounts

OnLink = Callable[[str, NATS], Awaitable[None]]


class TenantLinks:
    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.servers = parse_nats_urls(nats_url)
        # called with (tenant id, connection) for every new connection, e.g. presence
        self.on_connect: list[OnLink] = []
        # asked for a fresh cairn-bridge JWT when a renewal waited too long for one
        self.refresh: Callable[[str], Awaitable[None]] | None = None
        self.creds: dict[str, MemoryCredentials] = {}
        self.links: dict[str, SupervisedLink] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def conns(self) -> dict[str, NATS]:
        """The current connection of every tenant link that has one."""
        return {t: link.nc for t, link in self.links.items() if link.nc is not None}

    def set_creds(self, tenant_id: str, jwt: str, seed: str) -> None:
        held = self.creds.get(tenant_id)
        if held is None:
            held = self.creds[tenant_id] = MemoryCredentials(
                refresh=lambda: self._refresh(tenant_id))
        held.set(jwt, seed)  # an older JWT (a listing behind an event) is ignored

    async def get(self, tenant_id: str, slug: str) -> NATS:
        link = await self.link(tenant_id, slug)
        nc = link.nc
        if nc is None:
            raise LookupError(f"no NATS connection for tenant {slug} right now")
        return nc

    @contextlib.asynccontextmanager
    async def hold(self, tenant_id: str, slug: str) -> AsyncIterator[NATS]:
        """The tenant's connection, kept from retiring until the block ends."""
        link = await self.link(tenant_id, slug)
        with link.hold() as nc:
            yield nc

    async def link(self, tenant_id: str, slug: str) -> SupervisedLink:
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            link = self.links.get(tenant_id)
            if link is None:
                held = self.creds.get(tenant_id)
                if held is None or not held.jwt:
                    raise LookupError(f"no cairn-bridge credentials for tenant {slug} yet")
                settings = LinkSettings(
                    name=f"cairn-bridge/{slug}", label="bridge-tenant", servers=self.servers,
                    inbox_prefix=service_inbox(BRIDGE_USER), ping_interval=10,
                    reconnect_time_wait=0.5, backoff_max=10.0)

                async def on_connect(nc: NATS, tenant_id: str = tenant_id) -> None:
                    for hook in self.on_connect:
                        await hook(tenant_id, nc)

                link = self.links[tenant_id] = SupervisedLink(settings, held, on_connect)
            try:
                await asyncio.wait_for(asyncio.shield(link.start()), CONNECT_WAIT)
            except TimeoutError:
                raise LookupError(f"tenant {slug}: NATS not reachable within "
                                  f"{CONNECT_WAIT:.0f} s (the link keeps trying)") from None
            return link

    async def _refresh(self, tenant_id: str) -> None:
        if self.refresh is not None:
            await self.refresh(tenant_id)

    async def close(self, tenant_id: str) -> None:
        """Stop the tenant's link and forget its creds (a deactivated or deleted tenant's
        cairn-bridge user is revoked; reactivation issues new ones). Under the tenant's
        lock, so a `link()` running at the same time cannot leave a link behind."""
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            link = self.links.pop(tenant_id, None)
            self.creds.pop(tenant_id, None)
            if link is not None:
                await link.stop(grace=2.0)
        if self._locks.get(tenant_id) is lock and not lock.locked():
            del self._locks[tenant_id]

    async def close_all(self) -> None:
        for tenant_id in list(self.links):
            await self.close(tenant_id)
