"""Running a program safely: argv only (never a shell), bounded in time and in output.

Every command the agent runs goes through `run`: its own session and process group (so a
timeout can kill everything it started), stdin closed, stdout+stderr merged into one pipe
that the agent owns (so a grandchild holding the pipe open cannot hang the read), output
capped, and a minimal environment unless the caller passes one.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from agent.errors import CommandError

DEFAULT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
# After the direct child exits, how long a grandchild may keep the pipe open before the
# agent stops reading: background jobs a script leaves behind must not stall the reply.
PIPE_GRACE = 0.5
_IS_WINDOWS = sys.platform == "win32"


@dataclass(frozen=True)
class RunResult:
    """What happened: exit code (None when killed by the timeout), capped output, timing."""

    exit_code: int | None
    output: str
    truncated: bool
    timed_out: bool
    duration_ms: float


class _Capture(asyncio.Protocol):
    """Collects the pipe up to `limit` bytes; past it keeps draining (and discarding) so
    the program never blocks on a full pipe: the timeout, not the cap, bounds its life."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def eof_received(self) -> bool:
        self._done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> str:
        # A cap that cuts a multibyte character leaves no garbage: the incomplete tail is
        # dropped (final=False); invalid bytes elsewhere become U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(b"".join(self.chunks), final=not self.truncated)


def default_env() -> dict[str, str]:
    """The environment a child gets when the caller passes none: nothing inherited."""
    if _IS_WINDOWS:
        # Windows programs need a few system variables to start at all (SYSTEMROOT above
        # all); pass those through and nothing else.
        keep = ("SYSTEMROOT", "WINDIR", "PATH", "PATHEXT", "COMSPEC", "TEMP", "TMP")
        return {k: os.environ[k] for k in keep if k in os.environ}
    return dict(DEFAULT_ENV)


async def run(argv: list[str], *, timeout: float, max_output: int,
              cwd: str | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Run argv, return its merged output; on timeout kill its whole process group.

    Raises CommandError when the program cannot be started at all.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise CommandError("internal: argv must be a non-empty list of strings")
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    # The agent owns the pipe (not asyncio's stdout=PIPE) so it can stop reading and close
    # it while a grandchild still holds the write end. Windows: the Proactor loop cannot
    # read an os.pipe(); a Windows port would use stdout=PIPE there.
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd, cwd=cwd,
            env=default_env() if env is None else dict(env), **_group_kwargs())
    except (OSError, ValueError) as exc:
        os.close(read_fd)
        raise CommandError(f"cannot start {argv[0]!r}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from exc
    finally:
        os.close(write_fd)  # only the child (and what it starts) holds the write end now

    capture = _Capture(max_output)
    transport: asyncio.ReadTransport | None = None
    timed_out = False
    try:
        transport, _ = await loop.connect_read_pipe(lambda: capture,
                                                    os.fdopen(read_fd, "rb", 0))
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        # All output the child wrote is in the pipe; EOF comes at once unless something it
        # left behind (or something that escaped the group) still holds the write end.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(capture.closed), PIPE_GRACE)
    except BaseException:
        _kill_group(proc)  # the caller was cancelled: never leave the program running
        raise
    finally:
        if transport is not None:
            transport.close()
    return RunResult(
        exit_code=None if timed_out else proc.returncode,
        output=capture.text(),
        truncated=capture.truncated,
        timed_out=timed_out,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )


def _group_kwargs() -> dict[str, object]:
    if _IS_WINDOWS:
        # Windows has no process groups to kill with a signal; a new process group at least
        # detaches console signals. A Job Object would be needed to kill grandchildren.
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's whole process group (its pid is the group id: new session).

    The group outlives its leader while any member lives, so this also reaches
    grandchildren after the direct child has exited. Programs that leave the group on
    purpose (setsid, double fork) escape: only cgroups/job objects could catch those.
    """
    if _IS_WINDOWS:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
