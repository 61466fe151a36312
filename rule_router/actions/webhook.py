"""The webhook action: an HTTP request with retries (tenacity).

Retried: 5xx, 429, timeouts and connection errors — with exponential backoff starting at
`out.backoff` seconds and doubling, capped at `MAX_BACKOFF`. Not retried: other 4xx,
3xx (redirects are never followed), requests that can never work (bad URL/protocol) and
destinations the egress policy refuses (`EgressRefused`). After the last attempt the
result is a failure; the caller dead-letters it. Never raises for HTTP problems.

Bounded, because the URL and the numbers come from a tenant's rule and the server at the
other end may be hostile: each attempt (connect to last byte) ends after `out.timeout`
(at most MAX_TIMEOUT), attempts and waits are capped as in `model`, at most BODY_READ bytes
of a response are read, and what reaches a dead letter is `excerpt()`: one printable line
of at most EXCERPT characters. Headers the HTTP client owns (`Host`, framing, `Proxy-*`;
`model.reserved_webhook_header`) are refused at validation and again here, whoever built
the action.

`progress` keeps the JetStream message that caused the call alive: a webhook with its
retries may take longer than the consumer's ack wait, and a message not heard of for an
ack wait is delivered again (a second call, a second dead letter). It is awaited before
every attempt and at the start of every backoff wait, and every `every` seconds while an
attempt or a wait is outstanding (a single slow attempt can outlast the ack wait too).
Its failures are ignored: it only ever buys time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cairn_common.tasks import cancel_and_wait
from rule_router.errors import EgressRefused
from rule_router.model import (
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    MAX_TIMEOUT,
    WebhookOut,
    WebhookResult,
    reserved_webhook_header,
)

EXCERPT = 200  # characters of a response body (or error text) in a dead letter
BODY_READ = 4096  # bytes of a failed response read at most
PROGRESS_EVERY = 10.0  # seconds between `progress` calls (the caller passes ack wait / 3)

Progress = Callable[[], Awaitable[None]]


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """One printable line of at most `limit` characters: whitespace runs become one space,
    other control and invisible characters (bidi overrides included) become `\\uXXXX`."""
    pieces: list[str] = []
    size = 0
    for ch in " ".join(text.split()):
        piece = ch if ch.isprintable() else f"\\u{ord(ch):04x}"
        if size + len(piece) > limit:  # too long: cut at a whole piece, mark the cut
            while pieces and size + 1 > limit:
                size -= len(pieces.pop())
            return "".join(pieces).rstrip() + "…"
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


async def _read_some(response: httpx.Response, limit: int = BODY_READ) -> bytes:
    """The first bytes of a body as sent; a compressed one is not read (it could expand
    without bound, and its bytes say nothing)."""
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return b""
    data = bytearray()
    try:
        async for chunk in response.aiter_raw():
            data += chunk[: limit - len(data)]
            if len(data) >= limit:
                break
    except httpx.StreamConsumed:  # a response built in memory (a mock transport)
        return response.content[:limit]
    return bytes(data)


async def _touch(progress: Progress | None) -> None:
    if progress is None:
        return
    try:
        await progress()
    except Exception:  # keeping a message alive must never fail the call
        return


@contextlib.asynccontextmanager
async def _ticking(progress: Progress | None, every: float) -> AsyncIterator[None]:
    """Call `progress` every `every` seconds while the block runs."""
    if progress is None:
        yield
        return

    async def tick() -> None:
        while True:
            await asyncio.sleep(every)
            await _touch(progress)

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        await cancel_and_wait([ticker])


async def run(out: WebhookOut, client: httpx.AsyncClient, *,
              max_backoff: float = MAX_BACKOFF, sleep: Any = None,
              progress: Progress | None = None,
              every: float = PROGRESS_EVERY) -> WebhookResult:
    """Send `out` through `client`; retry as described above; return the outcome."""
    started = time.monotonic()
    reserved = next((name for name in out.headers if reserved_webhook_header(name)), None)
    if reserved is not None:
        return WebhookResult(False, 0, None, f"refused: {reserved} is set by the router's "
                             "HTTP client, not by rules")
    attempts = 0
    timeout = min(out.timeout, MAX_TIMEOUT)
    backoff = min(out.backoff, max_backoff)

    async def attempt() -> tuple[int, bytes]:
        await _touch(progress)
        async with _ticking(progress, every):
            return await send()

    nap = sleep or asyncio.sleep

    async def pause(seconds: float) -> None:
        await _touch(progress)
        async with _ticking(progress, every):
            await nap(seconds)

    async def send() -> tuple[int, bytes]:
        nonlocal attempts
        attempts += 1
        request = client.build_request(out.method, out.url, headers=dict(out.headers),
                                       content=out.body, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                response = await client.send(request, stream=True, follow_redirects=False)
                try:
                    status = response.status_code
                    body = b"" if response.is_success else await _read_some(response)
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError):
            raise _Retryable(f"timed out after {timeout:g}s") from None
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError):
            raise
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {excerpt(str(exc) or type(exc).__name__)}") \
                from None
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status}", status)
        return status, body

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, min(out.attempts, MAX_ATTEMPTS))),
        wait=wait_exponential(multiplier=backoff, max=max_backoff),
        retry=retry_if_exception_type(_Retryable),
        reraise=True,
        sleep=pause,
    )
    try:
        status, body = await retrying(attempt)
    except _Retryable as exc:
        return WebhookResult(False, attempts, exc.status,
                             f"{exc} (gave up after {attempts} attempts)",
                             time.monotonic() - started)
    except EgressRefused as exc:
        return WebhookResult(False, attempts, None, str(exc), time.monotonic() - started)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return WebhookResult(False, attempts, None, f"request failed: {excerpt(str(exc))}",
                             time.monotonic() - started)
    elapsed = time.monotonic() - started
    if 200 <= status < 300:
        return WebhookResult(True, attempts, status, None, elapsed)
    snippet = excerpt(body.decode("utf-8", errors="replace"))
    return WebhookResult(False, attempts, status,
                         f"HTTP {status}" + (f": {snippet}" if snippet else ""), elapsed)
