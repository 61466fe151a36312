"""The agent's NATS connection: every configured URL, TLS, reconnect forever, and a
supervisor that opens a fresh connection when nats-py gives one up for good (revoked or
expired credentials are re-read from the creds file each time)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS

from agent.config import AgentConfig
from agent.context import Stats
from cairn_common.natsauth import device_inbox
from cairn_common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

OnConnect = Callable[[NATS], Awaitable[None]]


class Link:
    def __init__(self, config: AgentConfig, stats: Stats, on_connect: OnConnect) -> None:
        self.config = config
        self.stats = stats
        self.on_connect = on_connect
        self.nc: NATS | None = None
        self.stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._swap = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def status(self) -> dict[str, Any]:
        nc = self.nc
        if nc is None:
            return {"connected": False, "url": None, "reconnects": 0, "in_msgs": 0,
                    "out_msgs": 0}
        url = nc.connected_url
        return {
            "connected": nc.is_connected,
            "url": f"{url.scheme}://{url.hostname}:{url.port}" if url else None,
            "reconnects": nc.stats["reconnects"],
            "in_msgs": nc.stats["in_msgs"],
            "out_msgs": nc.stats["out_msgs"],
        }

    async def start(self) -> None:
        """Connect (retrying forever with backoff), then keep a connection alive."""
        await self._connect_until_up()
        self._supervisor = asyncio.create_task(self._supervise(), name="nats-supervisor")

    async def replace(self) -> None:
        """Open a connection with the current creds file, switch to it, drop the old one."""
        async with self._swap:
            old = self.nc
            self.nc = await self._open()
            await self.on_connect(self.nc)
            if old is not None and not old.is_closed:
                try:
                    await asyncio.wait_for(old.drain(), 5)
                except (TimeoutError, nats.errors.Error):
                    await old.close()

    async def stop(self, grace: float = 5.0) -> None:
        self.stopping = True
        self._lost.set()
        await cancel_and_wait([self._supervisor])
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), grace)
            except (TimeoutError, nats.errors.Error):
                await self.nc.close()

    async def _supervise(self) -> None:
        while not self.stopping:
            await self._lost.wait()
            self._lost.clear()
            if self.stopping:
                return
            if self.nc is not None and not self.nc.is_closed:
                continue
            log.warning("NATS connection closed for good; opening a new one")
            await self._connect_until_up()

    async def _connect_until_up(self) -> None:
        backoff = 0.5
        while not self.stopping:
            try:
                async with self._swap:
                    self.nc = await self._open()
                    await self.on_connect(self.nc)
                return
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot connect to NATS; retrying",
                            extra={"error": str(exc) or exc.__class__.__name__,
                                   "retry_in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)

    async def _open(self) -> NATS:
        cfg = self.config

        async def on_error(exc: Exception) -> None:
            log.warning("NATS error", extra={"error": str(exc) or exc.__class__.__name__})

        async def on_disconnect() -> None:
            log.warning("NATS disconnected")

        async def on_reconnect() -> None:
            self.stats.reconnect_times.append(time.monotonic())
            log.info("NATS reconnected")

        async def on_closed() -> None:
            self._lost.set()

        options: dict[str, Any] = {
            "servers": list(cfg.nats.urls),
            "name": f"cairn-agent/{cfg.device.code}",
            # the agent role subscribes only under its own prefix (no one reads its replies)
            "inbox_prefix": device_inbox(cfg.device.code),
            "user_credentials": str(cfg.path(cfg.nats.creds_file)),
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "connect_timeout": 5,
            "allow_reconnect": True,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "closed_cb": on_closed,
        }
        tls = _tls_context(cfg)
        if tls is not None:
            options["tls"] = tls
        return await nats.connect(**options)


def _tls_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    tls = cfg.nats.tls
    if not (tls.ca or tls.cert):
        return None
    context = ssl.create_default_context(cafile=str(cfg.path(tls.ca)) if tls.ca else None)
    if tls.cert:
        context.load_cert_chain(str(cfg.path(tls.cert)),
                                str(cfg.path(tls.key)) if tls.key else None)
    return context
