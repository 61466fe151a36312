"""The bridge's own NATS connections inside tenant accounts (as its `cairn-bridge` user).

Used to manage the TELEMETRY stream and, later, to dispatch commands. Credentials are kept
in memory and read at every (re)connect, so a renewed JWT is picked up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS

from cairn_common.natsauth import connect_options, service_inbox
from pb_hooks_bridge.identities import BRIDGE_USER

log = logging.getLogger(__name__)


class TenantLinks:
    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        # called with (tenant id, connection) for every new link, e.g. presence watching
        self.on_connect: list[Callable[[str, NATS], Awaitable[None]]] = []
        self.creds: dict[str, tuple[str, str]] = {}
        self.conns: dict[str, NATS] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def set_creds(self, tenant_id: str, jwt: str, seed: str) -> None:
        self.creds[tenant_id] = (jwt, seed)

    async def get(self, tenant_id: str, slug: str) -> NATS:
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            nc = self.conns.get(tenant_id)
            if nc is not None and not nc.is_closed:
                return nc
            if tenant_id not in self.creds:
                raise LookupError(f"no cairn-bridge credentials for tenant {slug} yet")

            async def on_error(exc: Exception) -> None:
                log.warning("tenant link error", extra={"tenant": slug, "error": str(exc)})

            nc = await nats.connect(
                self.nats_url, name=f"cairn-bridge/{slug}", max_reconnect_attempts=-1,
                reconnect_time_wait=0.5, connect_timeout=5, error_cb=on_error,
                inbox_prefix=service_inbox(BRIDGE_USER),
                **connect_options(lambda: self.creds[tenant_id]),
            )
            self.conns[tenant_id] = nc
            for hook in self.on_connect:
                await hook(tenant_id, nc)
            return nc

    async def close(self, tenant_id: str) -> None:
        nc = self.conns.pop(tenant_id, None)
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def close_all(self) -> None:
        for tenant_id in list(self.conns):
            await self.close(tenant_id)
