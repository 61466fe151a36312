"""NATS server URL lists, the one parser every component uses.

`CAIRN_NATS_URL` (bridge, router, launcher) and the agent's `--nats`/`nats.urls` accept one
URL or a comma-separated list ("nats://n1:4222, nats://n2:4222"); nats-py gets them as
`servers=[...]` and fails over between them. A bare `host:port` gets `nats://`.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlparse

SCHEMES = ("nats", "tls", "ws", "wss")


class NatsUrlError(ValueError):
    """A URL list is empty or holds something that is not a NATS server URL."""


def parse_nats_urls(value: str | Iterable[str], what: str = "CAIRN_NATS_URL",
                    ) -> tuple[str, ...]:
    """Every URL in `value` (a comma-separated string, or strings that may each hold a
    comma-separated list), trimmed, deduplicated in order, each checked (nats-py
    defaults a missing port to 4222)."""
    parts = value.split(",") if isinstance(value, str) else [
        piece for item in value for piece in item.split(",")]
    urls: list[str] = []
    for raw in parts:
        url = raw.strip()
        if not url:
            continue
        if "://" not in url:
            url = f"nats://{url}"
        parsed = urlparse(url)
        try:
            parsed.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise NatsUrlError(f"{what}: {raw.strip()!r} has an invalid port") from None
        if parsed.scheme not in SCHEMES or not parsed.hostname:
            raise NatsUrlError(f"{what}: {raw.strip()!r} is not a NATS URL "
                               f"(want {'|'.join(SCHEMES)}://host:port)")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise NatsUrlError(f"{what}: no NATS server URL given")
    return tuple(urls)


def join_nats_urls(urls: Iterable[str]) -> str:
    """The comma-separated form, for `CAIRN_NATS_URL`."""
    return ",".join(urls)
