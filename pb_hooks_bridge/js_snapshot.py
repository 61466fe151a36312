"""JetStream stream snapshots and restores over the JetStream API (nats-py has no helper).

Snapshot (`$JS.API.STREAM.SNAPSHOT.<stream>`, nats-server `jsStreamSnapshotRequest` and
`streamSnapshot`): the request names a `deliver_subject`; the reply carries the stream's
`config` and `state`; then the server sends the snapshot (an s2-compressed tar, opaque to
us) to the deliver subject in chunks. Every chunk but the last carries a reply subject
`$JS.SNAPSHOT.ACK.<stream>.<id>.<size>.<index>`: publishing to it acknowledges the chunk,
and the server stops sending once more than its window (32 MiB) is unacknowledged, so we
ack each chunk as soon as it is written. A message with an empty body ends the snapshot;
one with a status header other than 2xx is an error.

Restore (`$JS.API.STREAM.RESTORE.<stream>` with `{"config", "state"}`): the reply names a
`deliver_subject`; each chunk is sent there as a request, and the server answers each
with an empty message (or `-ERR ...`); an empty request ends the upload, and its reply is
the stream-create response (stream info, or an error). The server gives up on a restore
that stalls for 5 s.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cairn_common.filemodes import FILE_MODE, private_dir

API = "$JS.API"
CHUNK_SIZE = 128 * 1024
API_TIMEOUT = 10.0
CHUNK_TIMEOUT = 30.0  # seconds without a chunk before a snapshot is given up


class SnapshotError(Exception):
    """The server refused or broke off a snapshot or restore; the message says why."""


@dataclass(frozen=True)
class SnapshotInfo:
    stream: str
    config: dict[str, Any]
    state: dict[str, Any]
    size: int  # bytes of snapshot data written

    @property
    def messages(self) -> int:
        return int(self.state.get("messages") or 0)


def _api_reply(msg: Msg, what: str) -> dict[str, Any]:
    try:
        body = json.loads(msg.data)
    except ValueError as exc:
        raise SnapshotError(f"{what}: unreadable reply {msg.data[:200]!r}") from exc
    if not isinstance(body, dict):
        raise SnapshotError(f"{what}: unexpected reply {msg.data[:200]!r}")
    if body.get("error"):
        err = body["error"]
        raise SnapshotError(f"{what}: {err.get('description', err)} "
                            f"(code {err.get('err_code', err.get('code'))})")
    return body


async def stream_info(nc: NATS, stream: str) -> dict[str, Any] | None:
    """The stream's info, or None when the account has no such stream."""
    msg = await nc.request(f"{API}.STREAM.INFO.{stream}", b"", timeout=API_TIMEOUT)
    body = json.loads(msg.data)
    if body.get("error"):
        if body["error"].get("code") == 404:
            return None
        raise SnapshotError(f"stream info {stream}: {body['error'].get('description')}")
    return body


async def delete_stream(nc: NATS, stream: str) -> None:
    msg = await nc.request(f"{API}.STREAM.DELETE.{stream}", b"", timeout=API_TIMEOUT)
    _api_reply(msg, f"delete stream {stream}")


async def snapshot(nc: NATS, stream: str, out: Path, chunk_size: int = CHUNK_SIZE,
                   ) -> SnapshotInfo:
    """Write the snapshot of `stream` (with its consumers) to `out` (mode 0600)."""
    deliver = nc.new_inbox()
    chunks: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_chunk(msg: Msg) -> None:
        await chunks.put(msg)

    sub = await nc.subscribe(deliver, cb=on_chunk)
    try:
        await nc.flush()
        await asyncio.sleep(0)
        await nc.flush()  # the SUB is on the server before it starts sending
        request = {"deliver_subject": deliver, "no_consumers": False,
                   "chunk_size": chunk_size, "jsck": False}
        reply = await nc.request(f"{API}.STREAM.SNAPSHOT.{stream}",
                                 json.dumps(request).encode(), timeout=API_TIMEOUT)
        body = _api_reply(reply, f"snapshot of {stream}")
        size = await _receive(nc, chunks, stream, out)
    finally:
        await sub.unsubscribe()
    return SnapshotInfo(stream, body.get("config") or {}, body.get("state") or {}, size)


async def _receive(nc: NATS, chunks: asyncio.Queue[Msg], stream: str, out: Path) -> int:
    size = 0
    private_dir(out.parent)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        while True:
            try:
                msg = await asyncio.wait_for(chunks.get(), CHUNK_TIMEOUT)
            except TimeoutError:
                raise SnapshotError(f"snapshot of {stream}: no data for {CHUNK_TIMEOUT:.0f} s "
                                    f"after {size} bytes") from None
            status = (msg.headers or {}).get("Status", "")
            if status and not status.startswith("2"):
                desc = (msg.headers or {}).get("Description", "")
                raise SnapshotError(f"snapshot of {stream}: server sent {status} {desc}".strip())
            if not msg.data:
                break  # EOF
            handle.write(msg.data)
            size += len(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, b"")  # flow control: chunk received
        handle.flush()
        os.fsync(handle.fileno())
    return size


async def restore(nc: NATS, config: dict[str, Any], state: dict[str, Any], data: Path,
                  chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    """Upload the snapshot in `data` as stream `config["name"]`; returns its stream info.
    The stream must not exist."""
    stream = str(config["name"])
    request = json.dumps({"config": config, "state": state}).encode()
    reply = await nc.request(f"{API}.STREAM.RESTORE.{stream}", request, timeout=API_TIMEOUT)
    deliver = _api_reply(reply, f"restore of {stream}").get("deliver_subject")
    if not deliver:
        raise SnapshotError(f"restore of {stream}: the server named no deliver subject")
    with data.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            ack = await nc.request(deliver, chunk, timeout=API_TIMEOUT)
            if ack.data:
                text = ack.data[:200].decode(errors="replace")
                raise SnapshotError(f"restore of {stream}: {text}")
    done = await nc.request(deliver, b"", timeout=max(API_TIMEOUT, 60.0))
    return _api_reply(done, f"restore of {stream}")

