"""The standard NATS `.creds` file: a user JWT and its seed, written 0600."""

from __future__ import annotations

import re
from pathlib import Path

from cairn_common.filemodes import write_private

# The older name of filemodes.write_private (atomic, 0600), kept for its callers.
write_secret = write_private

TEMPLATE = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""

_BLOCK = re.compile(r"-{3,}BEGIN ([A-Z ]+)-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END \1-{3,}")


class CredsError(ValueError):
    """A creds file is missing a block or holds something else."""


def render(jwt: str, seed: str) -> str:
    return TEMPLATE.format(jwt=jwt.strip(), seed=seed.strip())


def parse(text: str) -> tuple[str, str]:
    """(jwt, seed) from creds text."""
    blocks = {name: value for name, value in _BLOCK.findall(text)}
    jwt = blocks.get("NATS USER JWT")
    seed = blocks.get("USER NKEY SEED")
    if not jwt or not seed:
        raise CredsError("creds file must hold a NATS USER JWT block and a USER NKEY SEED block")
    return jwt, seed


def write(path: Path, jwt: str, seed: str) -> None:
    write_private(path, render(jwt, seed))


def read(path: Path) -> tuple[str, str]:
    return parse(path.read_text())
