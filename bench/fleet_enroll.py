"""Fleet simulator, control-plane side: the device rows (bulk path), their enrollment
through PocketBase and the bridge (agent/credentials.py `register_key`, the real agent's
steps), a service user to command them, and a progress bar."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.credentials import register_key
from cairn_common import creds, nkey
from cairn_common.pocketbase import PocketBase
from pb_hooks_bridge.bulk_devices import BulkRequest, BulkResult, codes_from_prefix, create_devices


class Bar:
    """`label [#####-----] done/total rate/s` on stderr, redrawn at most 5 times a second."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.t0 = time.perf_counter()
        self._drawn = 0.0

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._drawn < 0.2 and done < self.total:
            return
        self._drawn = now
        width = 30
        filled = int(width * done / self.total) if self.total else width
        rate = done / (now - self.t0) if now > self.t0 else 0.0
        print(f"\r{self.label:<10} [{'#' * filled}{'-' * (width - filled)}] "
              f"{done}/{self.total} {rate:.0f}/s {extra}  ", end="", file=sys.stderr,
              flush=True)

    def done(self, done: int, extra: str = "") -> None:
        self.update(done, extra, force=True)
        print(file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Enrolled:
    code: str
    jwt: str
    seed: str


async def create_tenant(admin: PocketBase, slug: str, agents: int) -> dict[str, Any]:
    """A tenant whose connection limit fits the fleet (the default, 25,000, counts service
    users too); waits for the bridge to provision its account."""
    limits = {"max_connections": max(25_000, agents + 100)}
    tenant = await admin.create("tenants", {"name": slug, "slug": slug, "active": True,
                                            "limits": limits})
    deadline = time.monotonic() + 60
    while not (await admin.get("tenants", tenant["id"]))["nats_account_public_key"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bridge did not provision tenant {slug} within 60 s")
        await asyncio.sleep(0.1)
    return tenant


async def bulk_rows(admin: PocketBase, slug: str, prefix: str, n: int,
                    out: Path) -> BulkResult:
    bar = Bar("create", n)
    result = await create_devices(
        admin, BulkRequest(slug, codes_from_prefix(prefix, n), out, chunk=100),
        lambda created, skipped, total, _s: bar.update(created + skipped))
    bar.done(len(result.created))
    return result


@contextlib.contextmanager
def one_tls_context() -> Iterator[None]:
    """`register_key` opens an httpx client per call, and each one builds a TLS context from
    the CA bundle (about 21 ms of CPU here, even for an http:// URL). A real agent enrolls
    once; thousands in one process made that, not the control plane, the limit (about 24
    enrollments/s at 1,000 agents). While enrolling, every new client shares one context
    (same CA bundle, same checks)."""
    context = ssl.create_default_context()
    with _patched(httpx, "AsyncClient", functools.partial(httpx.AsyncClient, verify=context)):
        yield


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


async def enroll_all(pb_url: str, slug: str, rows: list[tuple[str, str]], concurrency: int
                     ) -> tuple[list[Enrolled], float]:
    """Each (code, secret) of tenant `slug`: a new nkey (the seed stays here), registered
    like the agent does; returns the enrolled agents and the seconds taken."""
    bar = Bar("enroll", len(rows))
    gate = asyncio.Semaphore(concurrency)
    enrolled: list[Enrolled] = []
    t0 = time.perf_counter()

    async def one(code: str, secret: str) -> None:
        async with gate:
            user = nkey.create("user")
            issued = await register_key(pb_url, f"{slug}/{code}", secret,
                                        user.public_key.decode(),
                                        timeout=120)
            enrolled.append(Enrolled(code, issued.jwt, user.seed.decode()))
            bar.update(len(enrolled))

    with one_tls_context():
        await asyncio.gather(*(one(code, secret) for code, secret in rows))
    seconds = time.perf_counter() - t0
    bar.done(len(enrolled))
    return enrolled, seconds


async def service_creds(admin: PocketBase, tenant: dict[str, Any], name: str
                        ) -> tuple[str, str]:
    """A `service` user of the tenant (what a dashboard or the dispatcher holds)."""
    row = await admin.create("nats_users", {"tenant": tenant["id"], "name": name,
                                            "role": "service", "active": True})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = await admin.get("nats_users", row["id"])
        if got.get("creds"):
            return creds.parse(got["creds"])
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no creds for service user {name} within 30 s")


async def set_auth_rate_limit(admin: PocketBase, enabled: bool | None) -> bool | None:
    """Turn PocketBase's rate limiter on/off; returns the previous state. Every simulated
    agent logs in from 127.0.0.1, where real ones come from as many addresses."""
    settings = await admin._send("GET", "/api/settings")
    before = bool((settings.get("rateLimits") or {}).get("enabled"))
    if enabled is not None and enabled != before:
        await admin.update_settings({"rateLimits": {"enabled": enabled}})
    return before


async def count_password_logins(admin: PocketBase, since: str, until: str) -> int | None:
    """Device password logins PocketBase logged between two times (its request log, the
    logs API). None when PocketBase keeps no request log (logs.maxDays 0)."""
    settings = await admin._send("GET", "/api/settings")
    if not int((settings.get("logs") or {}).get("maxDays") or 0):
        return None
    query = (f'data.url ~ "/api/collections/devices/auth-with-password" && '
             f'created >= {json.dumps(since)} && created < {json.dumps(until)}')
    body = await admin._send("GET", "/api/logs", params={"filter": query, "perPage": 1})
    return int(body["totalItems"])
