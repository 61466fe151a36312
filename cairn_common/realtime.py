"""Following PocketBase's realtime stream, dead links included (issue 11).

`follow_realtime` subscribes, runs `on_connect` (the caller's reconcile), then hands over
events, and reconnects with backoff whenever the link is lost. PocketBase writes nothing on
an idle SSE stream, so a silently dead link (TCP still open, nothing delivered; a half-open
connection) would look like a quiet one forever. Each connection therefore has a watchdog:

* the reader task stamps every arrival (events and keepalives), whatever the handlers do;
* after `keepalive` seconds without one, it asks PocketBase for a ping on this very stream
  (POST /api/cairn/realtime-ping, pb_hooks/realtime_ping.pb.js);
* the link is dead when nothing has arrived for `dead_after` seconds (so the ping had
  `dead_after - keepalive` seconds to come back), or at once when the ping request fails
  (PocketBase no longer knows the client id, refuses, or cannot be reached): the stream is
  closed, a warning logged, `on_state(False)` called, and the loop reconnects, which runs
  `on_connect` again and so catches up on whatever was missed.

A dead link is thus noticed at most `dead_after` seconds (45 by default) after the last
thing PocketBase delivered. The connect phase (response headers, PB_CONNECT, subscribe) has
the same `dead_after` budget. A slow `on_connect` never counts: events queue up meanwhile and
the reader keeps stamping arrivals.

Against a PocketBase without the ping route (404 from the router itself), the watchdog falls
back to a plain read timeout, warned about once per follower: PocketBase cuts a stream after
5 idle minutes, so silence past `fallback_timeout` (330 s) means a dead link. The route is
tried again on every new connection (a PocketBase restarted with the hook is picked up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cairn_common.pocketbase import (
    KEEPALIVE_EVENT,
    PingUnsupported,
    PocketBase,
    PocketBaseError,
    RealtimeEvent,
)
from cairn_common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

KEEPALIVE = 20.0  # seconds of silence before asking for a ping
DEAD_AFTER = 45.0  # seconds of silence (ping unanswered) before the link is declared dead
FALLBACK_TIMEOUT = 330.0  # read timeout without the ping route (PocketBase idles out at 300)


@dataclass
class _Watch:
    keepalive: float
    dead_after: float
    fallback_timeout: float
    on_state: Callable[[bool], object] | None
    warned_fallback: bool = False


class _Link:
    """One realtime connection: a reader task that queues events and stamps arrivals, and a
    watchdog task that pings on silence and cuts the link when it stays silent."""

    def __init__(self, pb: PocketBase, topics: list[str], watch: _Watch) -> None:
        self.pb, self.topics, self.watch = pb, topics, watch
        self.queue: asyncio.Queue[RealtimeEvent | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.last_arrival = self.loop.time()
        self.client_id = ""
        self.fallback = False
        self.dead = ""  # why the watchdog cut the link, if it did
        self.arrived = asyncio.Event()
        self.reader = asyncio.create_task(self._read(), name="realtime-reader")
        self.watchdog = asyncio.create_task(self._watch(), name="realtime-watchdog")

    async def close(self) -> None:
        await cancel_and_wait([self.watchdog, self.reader])

    async def _read(self) -> None:
        try:
            async for event in self.pb.realtime(self.topics):
                self.last_arrival = self.loop.time()
                self.arrived.set()
                if event.action == "connect":
                    self.client_id = str(event.record.get("clientId", ""))
                if event.topic != KEEPALIVE_EVENT:
                    self.queue.put_nowait(event)
        except PocketBaseError as exc:
            log.info("realtime stream ended", extra={"error": str(exc)})
        except Exception:
            log.exception("realtime reader failed")
        finally:
            self.queue.put_nowait(None)

    async def _watch(self) -> None:
        watch = self.watch
        pinged_for = None  # the arrival stamp a ping was last asked for
        while not self.reader.done():
            now = self.loop.time()
            silent = now - self.last_arrival
            limit = watch.fallback_timeout if self.fallback else watch.dead_after
            if silent >= limit:
                await self._cut(f"nothing from PocketBase for {silent:.1f}s"
                                + ("" if self.client_id else " (no PB_CONNECT)"))
                return
            if self.fallback:
                await asyncio.sleep(self.last_arrival + limit - now)
            elif not self.client_id or pinged_for == self.last_arrival:
                # waiting for PB_CONNECT or the ping: wake on arrival, or at the deadline
                self.arrived.clear()
                try:
                    async with asyncio.timeout(self.last_arrival + limit - now):
                        await self.arrived.wait()
                except TimeoutError:
                    pass
            elif silent < watch.keepalive:
                await asyncio.sleep(self.last_arrival + watch.keepalive - now)
            else:
                pinged_for = self.last_arrival
                try:
                    async with asyncio.timeout(self.last_arrival + limit - now):
                        await self.pb.ping_realtime(self.client_id)
                except PingUnsupported as exc:
                    self._fall_back(exc)
                except TimeoutError:
                    pass  # the deadline has passed: cut on the next turn
                except PocketBaseError as exc:
                    await self._cut(f"keepalive ping failed: {exc}")
                    return

    def _fall_back(self, exc: PingUnsupported) -> None:
        self.fallback = True
        if not self.watch.warned_fallback:
            self.watch.warned_fallback = True
            log.warning("PocketBase has no realtime keepalive route: a dead link is noticed "
                        "by a plain read timeout only", extra={
                            "error": str(exc), "read_timeout": self.watch.fallback_timeout})

    async def _cut(self, reason: str) -> None:
        self.dead = reason
        log.warning("PocketBase realtime link dead; reconnecting", extra={
            "error": reason, "keepalive": self.watch.keepalive,
            "dead_after": self.watch.dead_after})
        if self.watch.on_state:
            self.watch.on_state(False)
        await cancel_and_wait([self.reader])  # its finally ends the queue: the follower
        # sees the end of the stream and reconnects


async def follow_realtime(
    pb: PocketBase, topics: list[str], on_event: Callable[[RealtimeEvent], object],
    on_connect: Callable[[], Awaitable[object]], stopping: asyncio.Event,
    on_state: Callable[[bool], object] | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
    *, keepalive: float = KEEPALIVE, dead_after: float = DEAD_AFTER,
    fallback_timeout: float = FALLBACK_TIMEOUT,
) -> None:
    """Forever: subscribe, then `on_connect` (reconcile), then hand over events; reconnect
    with backoff when cut off (idle timeout, restart, a link silent for `dead_after`
    seconds). Events that arrive while `on_connect` runs wait in a queue, so nothing between
    subscribe and reconcile is lost. Timings in seconds; see the module docstring.
    """
    if not 0 < keepalive < dead_after or fallback_timeout <= 0:
        raise ValueError("follow_realtime needs 0 < keepalive < dead_after and "
                         "fallback_timeout > 0")
    watch = _Watch(keepalive, dead_after, fallback_timeout, on_state)
    backoff = 0.2
    while not stopping.is_set():
        link = _Link(pb, topics, watch)
        try:
            first = await link.queue.get()
            if first is None or link.dead:  # (cut right after PB_CONNECT: no reconcile)
                raise PocketBaseError(link.dead or "realtime stream closed before connect")
            if on_state:
                on_state(True)
            await on_connect()
            backoff = 0.2
            while (event := await link.queue.get()) is not None:
                on_event(event)
        except PocketBaseError as exc:
            if not link.dead:  # the watchdog has said why already
                log.warning("PocketBase link down; will reconnect", extra={"error": str(exc)})
        except retry_on as exc:
            log.warning("resync failed; will retry", extra={"error": str(exc)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected error in on_connect: never fatal
            log.exception("realtime follower step failed; reconnecting",
                          extra={"error": str(exc) or exc.__class__.__name__})
        finally:
            if on_state:
                on_state(False)
            await link.close()
        if not stopping.is_set():
            try:
                async with asyncio.timeout(backoff):
                    await stopping.wait()
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 10.0)
