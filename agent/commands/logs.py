"""logs: the last N lines of a whitelisted log file, read backwards from its end.

Both the requested path and the real path it resolves to must match `logs.allowed_paths`
(exactly or by glob), so a symlink cannot smuggle another file in. The read seeks
backwards in blocks and stops as soon as it has N lines (or a byte budget that keeps the
reply within a NATS message), in a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import os
import stat
import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, BinaryIO

from agent.commands.request import check
from agent.context import Context
from agent.errors import CommandError

DEFAULT_LINES = 100
MAX_LINES = 10_000
MAX_PATH_CHARS = 4096
BLOCK_SIZE = 64 * 1024
# At most this many bytes are read per request: a reply must fit in one NATS message
# (1 MiB by default), and a file with enormous lines must not be loaded whole.
MAX_READ_BYTES = 512 * 1024
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Tail:
    """The last lines of a file, oldest first; truncated when the byte budget cut it."""

    lines: list[str]
    truncated: bool
    bytes_read: int


async def handle(request: dict[str, Any], ctx: Context) -> dict[str, Any]:
    check(request, {"log_path": str}, {"lines": int})
    count = request.get("lines", DEFAULT_LINES)
    if not 1 <= count <= MAX_LINES:
        raise CommandError(f"lines must be between 1 and {MAX_LINES}")
    requested = request["log_path"]
    path = _checked_path(requested)
    entries = [str(ctx.config.path(p)) for p in ctx.config.logs.allowed_paths]
    tail = await asyncio.to_thread(_whitelisted_tail, path, requested, count, entries)
    reply: dict[str, Any] = {"status": "success", "log_path": requested, "lines": tail.lines}
    if tail.truncated:
        reply["truncated"] = True
    return reply


def _checked_path(path: str) -> str:
    """An absolute, literal, printable path without '..', normalised (// and /./ collapsed).
    Wildcards belong in the whitelist, never in a request."""
    if not path:
        raise CommandError("log_path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise CommandError(f"log_path is too long (at most {MAX_PATH_CHARS} characters)")
    if "\x00" in path:
        raise CommandError("log_path contains a NUL byte")
    if "\n" in path or "\r" in path:
        raise CommandError("log_path contains a line break")
    if any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn"} for c in path):
        raise CommandError("log_path contains control or format characters")
    if not os.path.isabs(path):
        raise CommandError(f"log_path {_show(path)} must be an absolute path")
    if _GLOB_CHARS.intersection(path):
        raise CommandError(f"log_path {_show(path)} must be a literal path: the wildcard "
                           "characters * ? [ are refused")
    if ".." in path.replace("\\", "/").split("/"):
        raise CommandError(f"log_path {_show(path)} contains '..'; refused")
    return os.path.normpath(path)


def _whitelisted_tail(path: str, requested: str, count: int, entries: list[str]) -> Tail:
    """Check the path and its real path against the whitelist, then read. Blocking
    (realpath touches the filesystem): runs in a thread."""
    patterns = [os.path.normpath(entry) for entry in entries]
    if not _allowed(path, patterns):
        raise CommandError(f"log path {_show(requested)} is not in logs.allowed_paths")
    real = os.path.realpath(path)
    if not _allowed(real, [*patterns, *map(_real_pattern, patterns)]):
        raise CommandError(f"log path {_show(requested)} resolves to {_show(real)}, "
                           "which is not in logs.allowed_paths; refused")
    return read_tail_of(real, count, requested)


def _allowed(path: str, patterns: list[str]) -> bool:
    """Exact match, or a glob matched component by component: '*' never crosses a '/'."""
    parts = _components(path)
    for pattern in patterns:
        if path == pattern:
            return True
        if _GLOB_CHARS.intersection(pattern):
            wanted = _components(pattern)
            if len(wanted) == len(parts) and all(
                    fnmatchcase(part, want) for part, want in zip(parts, wanted, strict=True)):
                return True
    return False


def _components(path: str) -> list[str]:
    return os.path.normcase(path).replace("\\", "/").split("/")


def _real_pattern(pattern: str) -> str:
    """The pattern with its literal leading directories resolved (e.g. /var → /private/var),
    so the real path of an allowed file still matches."""
    parts = pattern.split(os.sep)
    literal = next((i for i, part in enumerate(parts) if _GLOB_CHARS.intersection(part)),
                   len(parts))
    head = os.sep.join(parts[:literal]) or os.sep
    return os.path.join(os.path.realpath(head), *parts[literal:])


def read_tail_of(path: str, count: int, shown: str | None = None) -> Tail:
    """Open `path` (a regular file only, never following a last-component symlink, never
    blocking on a FIFO) and return its last `count` lines. Blocking: run it in a thread."""
    shown = _show(shown or path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CommandError(f"log file {shown} does not exist") from None
    except PermissionError:
        raise CommandError(f"log file {shown} cannot be read: permission denied") from None
    except IsADirectoryError:
        raise CommandError(f"log path {shown} is a directory, not a file") from None
    except OSError as exc:
        raise CommandError(f"log file {shown} cannot be opened: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise CommandError(f"log path {shown} is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise CommandError(f"log path {shown} is not a regular file")
        handle = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    with handle:
        try:
            return tail(handle, count)
        except OSError as exc:
            raise CommandError(f"log file {shown} cannot be read: {exc.strerror}") from None


def tail(handle: BinaryIO, count: int, *, block_size: int = BLOCK_SIZE,
         budget: int = MAX_READ_BYTES) -> Tail:
    """The last `count` lines of a seekable binary file, reading backwards block by block.

    Lines are split on b"\\n" (never inside a UTF-8 sequence) before decoding, so block
    boundaries cannot garble a multibyte character; a final "\\r" is dropped (CRLF logs).
    """
    end = handle.seek(0, os.SEEK_END)
    position, blocks, newlines, read = end, [], 0, 0
    trailing: bool | None = None
    # The first kept line is complete once `count` newlines precede the file's last line.
    while position > 0 and read < budget:
        step = min(block_size, position, budget - read)
        position -= step
        handle.seek(position)
        block = _read_exactly(handle, step)
        read += len(block)
        if trailing is None:
            trailing = block.endswith(b"\n")
        blocks.append(block)
        newlines += block.count(b"\n")
        if newlines - (1 if trailing else 0) >= count:
            break
    data = b"".join(reversed(blocks))
    if data.endswith(b"\n"):
        data = data[:-1]
    pieces = data.split(b"\n") if end > 0 else []
    cut = position > 0 and len(pieces) <= count  # the oldest piece may be a partial line
    if position > 0 and len(pieces) > 1:
        pieces = pieces[1:]  # starts mid-line: not a whole line
    elif cut and pieces:
        pieces[0] = pieces[0].lstrip(bytes(range(0x80, 0xC0)))  # no half characters
    lines = [p.removesuffix(b"\r").decode("utf-8", errors="replace") for p in pieces[-count:]]
    return Tail(lines=lines, truncated=cut, bytes_read=read)


def _read_exactly(handle: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = handle.read(left)
        if not chunk:  # the file shrank under us (rotation): take what there is
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _show(text: str, limit: int = 120) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "…"
