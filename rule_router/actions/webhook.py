"""The webhook action: an HTTP request with retries (tenacity).

Retried: 5xx, 429, timeouts and connection errors — with exponential backoff starting at
`out.backoff` seconds and doubling, capped at `MAX_BACKOFF`. Not retried: other 4xx,
3xx, and requests that can never work (bad URL/protocol). After the last attempt the
result is a failure; the caller dead-letters it. Never raises for HTTP problems.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from rule_router.model import WebhookOut, WebhookResult

MAX_BACKOFF = 30.0


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def run(out: WebhookOut, client: httpx.AsyncClient, *,
              max_backoff: float = MAX_BACKOFF, sleep: Any = None) -> WebhookResult:
    """Send `out` through `client`; retry as described above; return the outcome."""
    started = time.monotonic()
    attempts = 0

    async def attempt() -> httpx.Response:
        nonlocal attempts
        attempts += 1
        try:
            response = await client.request(out.method, out.url, headers=dict(out.headers),
                                            content=out.body, timeout=out.timeout)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {out.timeout:g}s") from None
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError):
            raise
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {exc or type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code}", response.status_code)
        return response

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, out.attempts)),
        wait=wait_exponential(multiplier=out.backoff, max=max(max_backoff, out.backoff)),
        retry=retry_if_exception_type(_Retryable),
        reraise=True,
        **({"sleep": sleep} if sleep is not None else {}),
    )
    try:
        response = await retrying(attempt)
    except _Retryable as exc:
        return WebhookResult(False, attempts, exc.status,
                             f"{exc} (gave up after {attempts} attempts)",
                             time.monotonic() - started)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return WebhookResult(False, attempts, None, f"request failed: {exc}",
                             time.monotonic() - started)
    elapsed = time.monotonic() - started
    if response.is_success:
        return WebhookResult(True, attempts, response.status_code, None, elapsed)
    snippet = response.text[:200].strip()
    return WebhookResult(False, attempts, response.status_code,
                         f"HTTP {response.status_code}" + (f": {snippet}" if snippet else ""),
                         elapsed)
