"""Run work concurrently across keys but strictly in order within one key, in pools that
cannot starve each other.

Events for one record must apply in the order they happened; events for different records
may overlap, up to a limit per pool, which is what makes bulk enrollment fast. Pools:

- `identity`: tenants, devices, service users, roles, sidecars. Revocations live here and
  must never wait behind a command.
- `commands`: a command holds its slot until the device replies (up to its reply timeout,
  a minute or more for a hung `exec`), so this pool is also bounded per group (the
  tenant): one tenant's hung commands never hold another tenant's back.
- `requests`: devices' renewals and config fetches; a burst of them (every agent
  reconnecting after a NATS restart) never takes a slot from a revocation.
- `rollout`: one change fanned out to every tenant (a sidecar's new key). Hundreds of
  tenants' jobs at once would hold every identity slot for seconds; in a small pool of
  their own they leave those slots to new tenants, devices and revocations.

A key's lock is taken before any slot, so work queued behind one busy record holds no slot.
Work that must run inside another record's lane while it holds a slot (a tenant issuing
its service users) uses `nested`: the caller lends its slot back while it waits for, and
runs under, the other key's lock only. Nested waits therefore never exhaust a pool, and a
key the current task already holds is entered directly (no self-deadlock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from cairn_common.tasks import cancel_and_wait
from pb_hooks_bridge import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[], Awaitable[T]]

IDENTITY = "identity"
COMMANDS = "commands"
REQUESTS = "requests"  # what devices ask over NATS (device_requests.py)
ROLLOUT = "rollout"  # one change for every tenant (events.py: a sidecar's key)


@dataclass(frozen=True)
class Pool:
    limit: int  # work running at once in this pool
    per_group: int = 0  # at most this many of one group at once (0: no group bound)


class _Slot:
    """The pool slot a running lane task holds; `nested` lends it back while it waits."""

    def __init__(self, pool: str, sem: asyncio.Semaphore) -> None:
        self.pool, self.sem, self.held = pool, sem, False

    async def take(self) -> None:
        await self.sem.acquire()
        self.held = True
        metrics.LANE_BUSY.labels(self.pool).inc()

    def give(self) -> None:
        if self.held:
            self.held = False
            self.sem.release()
            metrics.LANE_BUSY.labels(self.pool).dec()


_SLOT: ContextVar[_Slot | None] = ContextVar("lane_slot", default=None)
_KEYS: ContextVar[frozenset[str]] = ContextVar("lane_keys", default=frozenset())


class Lanes:
    def __init__(self, pools: dict[str, Pool] | int) -> None:
        if isinstance(pools, int):
            pools = {IDENTITY: Pool(pools)}
        self.pools = pools
        self.limits = {name: asyncio.Semaphore(p.limit) for name, p in pools.items()}
        self.locks: dict[str, asyncio.Lock] = {}
        self.pending: dict[str, int] = {}
        self.groups: dict[str, asyncio.Semaphore] = {}
        self.group_users: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def submit(self, key: str, work: Work[object], pool: str = IDENTITY,
               group: str = "") -> asyncio.Task[None]:
        """Queue work on the key's lane; failures are logged, never raised."""
        return self._task(key, self._logged(key, work, pool, group), key)

    async def call(self, key: str, work: Work[T], pool: str = IDENTITY) -> T:
        """Queue work on the key's lane and wait for its result (errors are raised)."""
        return await self._task(key, self._run(key, work, pool, ""), key)

    async def nested(self, key: str, work: Work[T]) -> T:
        """Run work under another key's lock from inside a lane (see the docstring)."""
        held = _KEYS.get()
        if key in held:
            return await work()
        slot = _SLOT.get()
        lent = slot is not None and slot.held
        if lent and slot is not None:
            slot.give()
        lock = self._enter(key)
        try:
            async with lock:
                token = _KEYS.set(held | {key})
                try:
                    return await work()
                finally:
                    _KEYS.reset(token)
        finally:
            self._leave(key)
            if lent and slot is not None:
                await slot.take()

    def busy(self, key: str) -> bool:
        return key in self.pending

    async def drain(self, grace: float) -> None:
        """Wait (bounded) for submitted work, then cancel what is left."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        await cancel_and_wait(pending)

    # -- plumbing ---------------------------------------------------------------------

    def _task(self, key: str, coro: Any, name: str) -> asyncio.Task[Any]:
        self._enter(key)  # now, so tasks reach the key's lock in submission order
        task = asyncio.create_task(self._leaving(key, coro), name=f"lane:{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _leaving(self, key: str, coro: Any) -> Any:
        # a task starts with a copy of its creator's context: it holds no slot or key
        _SLOT.set(None)
        _KEYS.set(frozenset())
        try:
            return await coro
        finally:
            self._leave(key)

    async def _logged(self, key: str, work: Work[object], pool: str, group: str) -> None:
        try:
            await self._run(key, work, pool, group)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed", extra={"key": key})

    async def _run(self, key: str, work: Work[T], pool: str, group: str) -> T:
        async with self.locks[key]:  # FIFO: tasks reach the lock in submission order
            token = _KEYS.set(_KEYS.get() | {key})
            try:
                if group and self.pools[pool].per_group:
                    bound = self._group(pool, group)
                    try:
                        async with bound:
                            return await self._in_slot(pool, work)
                    finally:
                        self._ungroup(pool, group)
                return await self._in_slot(pool, work)
            finally:
                _KEYS.reset(token)

    async def _in_slot(self, pool: str, work: Work[T]) -> T:
        slot = _Slot(pool, self.limits[pool])
        await slot.take()
        token = _SLOT.set(slot)
        try:
            return await work()
        finally:
            _SLOT.reset(token)
            slot.give()

    def _enter(self, key: str) -> asyncio.Lock:
        lock = self.locks.setdefault(key, asyncio.Lock())
        self.pending[key] = self.pending.get(key, 0) + 1
        return lock

    def _leave(self, key: str) -> None:
        self.pending[key] -= 1
        if self.pending[key] == 0:
            del self.pending[key]
            del self.locks[key]

    def _group(self, pool: str, group: str) -> asyncio.Semaphore:
        name = f"{pool}:{group}"
        self.group_users[name] = self.group_users.get(name, 0) + 1
        return self.groups.setdefault(name, asyncio.Semaphore(self.pools[pool].per_group))

    def _ungroup(self, pool: str, group: str) -> None:
        name = f"{pool}:{group}"
        self.group_users[name] -= 1
        if self.group_users[name] == 0:
            del self.group_users[name]
            del self.groups[name]
