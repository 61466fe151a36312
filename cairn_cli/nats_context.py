"""A `nats` CLI context per tenant (natscli's own file format, ADR-21 "NATS Configuration
Contexts"): `~/.config/nats/context/<name>.json` naming the server, the creds file and the
person's inbox prefix, so `nats --context cairn-acme sub 'agents.*.heartbeat'` just works."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cairn_common.filemodes import write_private


def context_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nats" / "context"


def context_name(slug: str) -> str:
    return f"cairn-{slug}"


def write_context(directory: Path, slug: str, nats_url: str, creds: Path,
                  inbox_prefix: str, description: str) -> Path:
    """Write (or replace) the context file; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{context_name(slug)}.json"
    body = {"description": description, "url": nats_url, "creds": str(creds),
            "inbox_prefix": inbox_prefix}
    write_private(path, json.dumps(body, indent=2) + "\n")
    return path


def remove_context(directory: Path, slug: str) -> bool:
    path = directory / f"{context_name(slug)}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
