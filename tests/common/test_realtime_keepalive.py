"""Realtime keepalive (issue 11): a silently dead link is noticed and the follower reconnects.

Against the session's real PocketBase (pb_hooks/realtime_ping.pb.js loaded), through a small
TCP proxy that can go silent: sockets stay open, bytes stop flowing (a half-open link, a NAT
that forgot the connection). Timings are shortened to seconds: keepalive 1 s, dead 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from cairn_common.pocketbase import (
    KEEPALIVE_EVENT,
    PingUnsupported,
    PocketBase,
    PocketBaseError,
    RealtimeEvent,
    follow_realtime,
)
from cairn_common.tasks import cancel_and_wait
from tests.live import new_tenant, uid

KEEPALIVE, DEAD_AFTER = 1.0, 2.0
MARGIN = 1.5  # scheduling slack on a loaded (shared) test machine


class SilenceableProxy:
    """TCP proxy to PocketBase. `blackhole()`: every connection open at that moment, and every
    one accepted until `restore()`, goes silent for good: its sockets stay open, whatever
    arrives from either side is read and dropped, and no close is passed on."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.silent = False
        self.conns: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def blackhole(self) -> None:
        self.silent = True
        for conn in self.conns:
            conn["dead"] = True

    def restore(self) -> None:
        self.silent = False

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for conn in self.conns:
            for writer in conn["writers"]:
                writer.close()
        await self.server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: dict[str, Any] = {"dead": self.silent, "writers": [writer]}
        self.conns.append(conn)
        if conn["dead"]:
            await self._pump(reader, None, conn)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        conn["writers"].append(up_writer)
        await asyncio.gather(self._pump(reader, up_writer, conn),
                             self._pump(up_reader, writer, conn))

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter | None,
                    conn: dict[str, Any]) -> None:
        try:
            while data := await src.read(65536):
                if dst is not None and not conn["dead"]:
                    dst.write(data)
                    await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if dst is not None and not conn["dead"]:
                dst.close()  # a real close passes through; a dead link says nothing


class Probe(PocketBase):
    """The real client, counting streams and pings (and optionally pinging a missing route,
    as against a PocketBase without the hook)."""

    def __init__(self, url: str, changed: Callable[[], None], missing_route: bool = False,
                 forgotten: bool = False):
        super().__init__(url)
        self.changed = changed
        self.streams = self.streams_ended = self.pings = 0
        self.forgotten = forgotten  # as if PocketBase no longer knew our client id
        if missing_route:
            self.ping_path = "/api/cairn/no-such-route"

    async def realtime(self, topics: list[str]) -> AsyncIterator[RealtimeEvent]:
        self.streams += 1
        self.changed()
        try:
            async for event in super().realtime(topics):
                yield event
        finally:
            self.streams_ended += 1
            self.changed()

    async def ping_realtime(self, client_id: str) -> None:
        self.pings += 1
        self.changed()
        await super().ping_realtime("x" * 40 if self.forgotten else client_id)


class Follower:
    """follow_realtime on tenants/*, recording what its callbacks see."""

    def __init__(self, url: str, pb_env: Any, connect_delay: float = 0.0,
                 missing_route: bool = False, forgotten: bool = False,
                 **timings: float) -> None:
        self.changed = asyncio.Event()
        self.pb = Probe(url, self.changed.set, missing_route, forgotten)
        self.pb_env, self.connect_delay, self.timings = pb_env, connect_delay, timings
        self.connects = 0
        self.connect_done = 0
        self.states: list[bool] = []
        self.events: list[RealtimeEvent] = []
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pb.auth_superuser(self.pb_env.admin_email, self.pb_env.admin_password)
        self.task = asyncio.create_task(follow_realtime(
            self.pb, ["tenants/*"], self._event, self._connect, self.stopping,
            on_state=self._state, **self.timings))

    async def stop(self) -> None:
        self.stopping.set()
        await cancel_and_wait([self.task])
        await self.pb.close()

    async def _connect(self) -> None:
        self.connects += 1
        self.changed.set()
        if self.connect_delay and self.connects == 1:
            await asyncio.sleep(self.connect_delay)  # a slow reconcile
        self.connect_done += 1
        self.changed.set()

    def _event(self, event: RealtimeEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def _state(self, up: bool) -> None:
        self.states.append(up)
        self.changed.set()

    def saw(self, record_id: str) -> bool:
        return any(e.record.get("id") == record_id for e in self.events)

    async def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout}s (connects={self.connects}, "
                                 f"states={self.states}, streams={self.pb.streams}, "
                                 f"pings={self.pb.pings})") from None


@asynccontextmanager
async def following(url: str, pb_env: Any, **kwargs: Any) -> AsyncIterator[Follower]:
    follower = Follower(url, pb_env, **kwargs)
    await follower.start()
    try:
        yield follower
    finally:
        await follower.stop()


@asynccontextmanager
async def proxy_to(pb_env: Any) -> AsyncIterator[SilenceableProxy]:
    proxy = SilenceableProxy(pb_env.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def _dead_link_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "cairn_common.realtime" and "link dead" in r.getMessage()]


async def test_a_silent_link_is_noticed_and_the_follower_reconnects(pb_env, admin, caplog):
    loop = asyncio.get_running_loop()
    async with proxy_to(pb_env) as proxy, following(
            proxy.url, pb_env, keepalive=KEEPALIVE, dead_after=DEAD_AFTER) as f:
        await f.until(lambda: f.connect_done == 1, 10, "first connect")
        before = await new_tenant(admin)
        await f.until(lambda: f.saw(before["id"]), 5, "event over the healthy link")

        proxy.blackhole()
        silenced = loop.time()
        await f.until(lambda: f.states[-1] is False, DEAD_AFTER + 5, "dead link noticed")
        assert loop.time() - silenced <= DEAD_AFTER + MARGIN
        assert f.connects == 1 and _dead_link_warnings(caplog)
        # a reconnect into the still-silent link is cut in its connect phase too
        await f.until(lambda: f.pb.streams_ended >= 2, DEAD_AFTER + 5, "silent connect cut")
        assert f.connects == 1

        proxy.restore()
        await f.until(lambda: f.connect_done == 2, 15, "reconnect: on_connect again")
        after = await new_tenant(admin)
        await f.until(lambda: f.saw(after["id"]), 5, "event after the reconnect")
        assert any("no PB_CONNECT" in str(getattr(r, "error", ""))
                   for r in _dead_link_warnings(caplog))


async def test_a_ping_for_a_forgotten_client_cuts_the_link_at_once(pb_env, caplog):
    """A half-open stream to a PocketBase that has dropped (or never kept) our client: its
    404 for the ping ends the link without waiting for dead_after."""
    loop = asyncio.get_running_loop()
    async with following(pb_env.url, pb_env, forgotten=True, keepalive=KEEPALIVE,
                         dead_after=10.0) as f:
        await f.until(lambda: f.connect_done == 1, 10, "first connect")
        connected = loop.time()
        await f.until(lambda: f.states[-1] is False, 10, "link cut")
        assert loop.time() - connected <= KEEPALIVE + MARGIN
        assert "keepalive ping failed" in _dead_link_warnings(caplog)[0].error
        assert "404" in _dead_link_warnings(caplog)[0].error
        await f.until(lambda: f.connect_done == 2, 10, "reconnect: on_connect again")


async def test_b_a_healthy_idle_link_stays_up(pb_env, admin, caplog):
    async with proxy_to(pb_env) as proxy, following(
            proxy.url, pb_env, keepalive=KEEPALIVE, dead_after=DEAD_AFTER) as f:
        await f.until(lambda: f.connect_done == 1, 10, "first connect")
        await asyncio.sleep(8)  # idle on purpose: pings alone keep the link alive
        assert f.connects == 1 and f.states == [True] and f.pb.streams == 1
        assert f.pb.pings >= 4
        assert not _dead_link_warnings(caplog)
        tenant = await new_tenant(admin)
        await f.until(lambda: f.saw(tenant["id"]), 5, "event after the idle period")
        assert not any(e.topic == KEEPALIVE_EVENT for e in f.events)  # never to handlers


async def test_a_slow_on_connect_is_not_a_dead_link(pb_env, admin, caplog):
    delay = 2 * DEAD_AFTER
    async with following(pb_env.url, pb_env, connect_delay=delay, keepalive=KEEPALIVE,
                         dead_after=DEAD_AFTER) as f:
        await f.until(lambda: f.connects == 1, 10, "first connect")
        tenant = await new_tenant(admin)  # arrives while the reconcile runs: queued
        await f.until(lambda: f.connect_done == 1, delay + 5, "slow on_connect done")
        await f.until(lambda: f.saw(tenant["id"]), 5, "queued event handed over")
        assert f.connects == 1 and f.states == [True] and f.pb.streams == 1
        assert f.pb.pings >= 2 and not _dead_link_warnings(caplog)


async def test_without_the_ping_route_a_read_timeout_is_used(pb_env, admin, caplog):
    timeout = 2.0
    async with following(pb_env.url, pb_env, missing_route=True, keepalive=KEEPALIVE,
                         dead_after=DEAD_AFTER, fallback_timeout=timeout) as f:
        await f.until(lambda: f.connect_done == 1, 10, "first connect")
        tenant = await new_tenant(admin)
        await f.until(lambda: f.saw(tenant["id"]), 5, "event delivered")
        # nothing arrives on this idle link: the plain read timeout cuts it and reconnects
        await f.until(lambda: f.connect_done == 3, 3 * (timeout + 5), "reconnects")
        assert f.pb.pings >= 2  # the route is tried again on each new link
    missing = [r for r in caplog.records if "no realtime keepalive route" in r.getMessage()]
    assert len(missing) == 1  # warned once


async def _stream(pb: PocketBase, queue: asyncio.Queue[RealtimeEvent]) -> None:
    async for event in pb.realtime(["tenants/*"]):
        queue.put_nowait(event)


@asynccontextmanager
async def realtime_client(pb: PocketBase) -> AsyncIterator[tuple[str, asyncio.Queue[Any]]]:
    queue: asyncio.Queue[RealtimeEvent] = asyncio.Queue()
    task = asyncio.create_task(_stream(pb, queue))
    try:
        async with asyncio.timeout(10):
            connect = await queue.get()
        assert connect.action == "connect"
        yield connect.record["clientId"], queue
    finally:
        await cancel_and_wait([task])


async def _keepalive(queue: asyncio.Queue[RealtimeEvent]) -> RealtimeEvent:
    async with asyncio.timeout(5):
        while (event := await queue.get()).topic != KEEPALIVE_EVENT:
            pass
    return event


async def _user(admin: PocketBase, pb_env: Any) -> PocketBase:
    email, password = f"{uid('rt')}@cairn.test", secrets.token_urlsafe(12)
    await admin.create("users", {"email": email, "password": password,
                                 "passwordConfirm": password, "verified": True})
    pb = PocketBase(pb_env.url)
    await pb.auth_with_password("users", email, password)
    return pb


async def test_c_the_ping_route_serves_only_the_clients_own_auth(pb_env, admin):
    alice, bob = await _user(admin, pb_env), await _user(admin, pb_env)
    anonymous = PocketBase(pb_env.url)
    try:
        async with realtime_client(alice) as (alice_id, alice_stream), \
                realtime_client(admin) as (admin_id, admin_stream):
            await alice.ping_realtime(alice_id)  # the owner
            assert (await _keepalive(alice_stream)).action == "keepalive"
            await admin.ping_realtime(admin_id)  # a superuser, its own
            await _keepalive(admin_stream)
            with pytest.raises(PocketBaseError) as flood:  # again at once: refused
                await alice.ping_realtime(alice_id)
            assert flood.value.status == 429 and "at most one ping" in str(flood.value)
            await asyncio.sleep(1.0)  # the per-client interval passes (time is the input)
            await admin.ping_realtime(alice_id)  # a superuser, anyone's
            await _keepalive(alice_stream)

            for caller, client_id in ((bob, alice_id), (alice, admin_id)):
                with pytest.raises(PocketBaseError) as refused:
                    await caller.ping_realtime(client_id)
                # the same answer as for an id nobody holds: nothing learned about others
                assert refused.value.status == 404
                assert "no realtime client" in str(refused.value)
            with pytest.raises(PocketBaseError) as anon:
                await anonymous.ping_realtime(alice_id)
            assert anon.value.status == 401
            with pytest.raises(PocketBaseError) as unknown:
                await alice.ping_realtime("x" * 40)
            assert unknown.value.status == 404 and not isinstance(unknown.value,
                                                                  PingUnsupported)
            assert "no realtime client" in str(unknown.value)
            with pytest.raises(PocketBaseError) as empty:
                await alice._send("POST", alice.ping_path, json={})
            assert empty.value.status == 400
            await asyncio.sleep(0.2)  # a stray ping would have arrived by now
            while not alice_stream.empty():  # nothing sent for a refused ping
                assert alice_stream.get_nowait().topic != KEEPALIVE_EVENT
    finally:
        for pb in (alice, bob, anonymous):
            await pb.close()


async def test_a_missing_route_is_told_from_an_unknown_client(pb_env, admin):
    old = PocketBase(pb_env.url)
    old.ping_path = "/api/cairn/no-such-route"
    old.token = admin.token
    try:
        with pytest.raises(PingUnsupported):
            await old.ping_realtime("x" * 40)
    finally:
        await old.close()


async def test_timings_are_checked():
    async with PocketBase("http://127.0.0.1:9") as pb:
        with pytest.raises(ValueError):
            await follow_realtime(pb, [], print, _noop, asyncio.Event(), keepalive=5,
                                  dead_after=5)


async def _noop() -> None:
    return None
