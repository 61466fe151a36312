"""logs: the tail of big files read from the end, UTF-8 across block boundaries, the
glob whitelist, symlinks that try to smuggle another file in, and clean errors."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from agent.commands import logs
from agent.config import from_dict
from agent.context import Context
from agent.errors import CommandError

pytestmark = pytest.mark.timeout(60)


def make_ctx(tmp_path: Path, allowed: list[str]) -> Context:
    raw = {"device": {"code": "test-device"}, "logs": {"allowed_paths": allowed}}
    return Context(config=from_dict(raw, base_dir=tmp_path))


class CountingReader(io.RawIOBase):
    """A file wrapper that counts the bytes actually read."""

    def __init__(self, inner: io.RawIOBase) -> None:
        self.inner, self.bytes_read = inner, 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.bytes_read += len(data)
        return data


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~50 MB of numbered lines: 'line 0000000 xxxx…' (64 bytes each)."""
    path = tmp_path_factory.mktemp("big") / "big.log"
    total = 50 * 1024 * 1024 // 64
    with path.open("wb") as handle:
        for start in range(0, total, 100_000):
            handle.write(b"".join(b"line %07d %s\n" % (i, b"x" * 50)
                                  for i in range(start, min(start + 100_000, total))))
    return path


async def test_last_lines_of_a_50_mb_file(tmp_path: Path, big_log: Path) -> None:
    ctx = make_ctx(tmp_path, [str(big_log)])
    total = os.path.getsize(big_log) // 64  # noqa: ASYNC240 (test setup)
    reply = await logs.handle({"log_path": str(big_log), "lines": 5000}, ctx)
    assert reply["status"] == "success"
    assert reply["log_path"] == str(big_log)
    assert len(reply["lines"]) == 5000
    assert reply["lines"][0] == f"line {total - 5000:07d} " + "x" * 50
    assert reply["lines"][-1] == f"line {total - 1:07d} " + "x" * 50
    assert "truncated" not in reply


def test_tail_reads_only_the_end(big_log: Path) -> None:
    with big_log.open("rb", buffering=0) as raw:
        counted = CountingReader(raw)  # type: ignore[arg-type]
        result = logs.tail(counted, 100)  # type: ignore[arg-type]
    assert len(result.lines) == 100
    assert counted.bytes_read <= logs.BLOCK_SIZE  # 100 lines of 64 bytes: one block
    assert counted.bytes_read < big_log.stat().st_size / 500


async def test_huge_first_line_is_never_read(tmp_path: Path) -> None:
    path = tmp_path / "sparse.log"
    with path.open("wb") as handle:
        handle.truncate(2 * 1024**3)  # a 2 GiB first "line" of NUL bytes (sparse)
        handle.seek(0, os.SEEK_END)
        handle.write(b"\nfirst\nsecond\r\nthird\n")
    reply = await logs.handle({"log_path": str(path), "lines": 3},
                              make_ctx(tmp_path, [str(path)]))
    assert reply["lines"] == ["first", "second", "third"]
    with path.open("rb", buffering=0) as raw:
        counted = CountingReader(raw)  # type: ignore[arg-type]
        assert logs.tail(counted, 3).lines == ["first", "second", "third"]  # type: ignore[arg-type]
    assert counted.bytes_read <= logs.BLOCK_SIZE


async def test_byte_budget_truncates_instead_of_loading_everything(tmp_path: Path) -> None:
    path = tmp_path / "wide.log"
    path.write_bytes(b"".join(b"%d" % i + b"y" * 200_000 + b"\n" for i in range(10)))
    reply = await logs.handle({"log_path": str(path), "lines": 10},
                              make_ctx(tmp_path, [str(path)]))
    assert reply["truncated"] is True
    assert 0 < len(reply["lines"]) < 10
    assert sum(len(line) for line in reply["lines"]) <= logs.MAX_READ_BYTES
    assert reply["lines"][-1].startswith("9y")


def test_multibyte_utf8_across_block_boundaries() -> None:
    rng = random.Random(7)
    alphabet = ["a", "é", "€", "😀", "中", " "]
    for _ in range(300):
        lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                 for _ in range(rng.randint(1, 15))]
        text = "\n".join(lines) + rng.choice(["", "\n"])
        count = rng.randint(1, 20)
        result = logs.tail(io.BytesIO(text.encode()), count, block_size=rng.randint(1, 9))
        expected = text.removesuffix("\n").split("\n") if text else []  # empty: no lines
        assert result.lines == expected[-count:]
        assert all("\ufffd" not in line for line in result.lines)


async def test_character_split_by_the_real_block_size(tmp_path: Path) -> None:
    path = tmp_path / "emoji.log"
    tail_line = "😀" * (logs.BLOCK_SIZE // 4 + 3)  # a 4-byte character straddles the block
    path.write_text("head\n" + tail_line + "\n", encoding="utf-8")
    offset = path.stat().st_size - logs.BLOCK_SIZE - len("head\n")
    assert offset > 0 and offset % 4 != 0  # the first block starts mid-character
    reply = await logs.handle({"log_path": str(path), "lines": 2},
                              make_ctx(tmp_path, [str(path)]))
    assert reply["lines"] == ["head", tail_line]


async def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "bin.log"
    path.write_bytes(b"ok\nbad \xff\xfe here\n")
    reply = await logs.handle({"log_path": str(path), "lines": 5},
                              make_ctx(tmp_path, [str(path)]))
    assert reply["lines"] == ["ok", "bad \ufffd\ufffd here"]


async def test_glob_whitelist(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    (folder / "sub").mkdir(parents=True)
    for name in ("app.log", "a.log", "app.txt", "sub/deep.log"):
        (folder / name).write_text(f"{name}\n")
    ctx = make_ctx(tmp_path, ["logs/*.log"])  # relative: resolved against the config folder
    ok = await logs.handle({"log_path": str(folder / "app.log")}, ctx)
    assert ok["lines"] == ["app.log"]
    ok = await logs.handle({"log_path": f"{tmp_path}//logs/./a.log"}, ctx)
    assert ok["lines"] == ["a.log"]
    for refused in ("app.txt", "sub/deep.log"):  # '*' never crosses a '/'
        with pytest.raises(CommandError, match=r"not in logs\.allowed_paths"):
            await logs.handle({"log_path": str(folder / refused)}, ctx)


async def test_symlink_to_a_forbidden_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    (tmp_path / "logs" / "app.log").symlink_to(secret)
    (tmp_path / "logs" / "real.log").write_text("fine\n")
    (tmp_path / "logs" / "alias.log").symlink_to(tmp_path / "logs" / "real.log")
    ctx = make_ctx(tmp_path, [f"{tmp_path}/logs/*.log"])
    with pytest.raises(CommandError, match=r"resolves to .* not in logs\.allowed_paths"):
        await logs.handle({"log_path": str(tmp_path / "logs" / "app.log")}, ctx)
    ok = await logs.handle({"log_path": str(tmp_path / "logs" / "alias.log")}, ctx)
    assert ok["lines"] == ["fine"]  # a symlink to another allowed file is fine


async def test_missing_file_directory_and_fifo_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "logs" / "dir.log").mkdir(parents=True)
    os.mkfifo(tmp_path / "logs" / "pipe.log")
    ctx = make_ctx(tmp_path, [f"{tmp_path}/logs/*.log"])
    with pytest.raises(CommandError, match="does not exist"):
        await logs.handle({"log_path": f"{tmp_path}/logs/gone.log"}, ctx)
    with pytest.raises(CommandError, match="is a directory"):
        await logs.handle({"log_path": f"{tmp_path}/logs/dir.log"}, ctx)
    with pytest.raises(CommandError, match="not a regular file"):  # and it did not block
        await logs.handle({"log_path": f"{tmp_path}/logs/pipe.log"}, ctx)


async def test_unreadable_file_is_a_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.log"
    path.write_text("x\n")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads everything: make the open fail as it would
        real_open = os.open

        def denied(name: str, flags: int, *args: int) -> int:
            if str(name) == str(path):
                raise PermissionError(13, "Permission denied")
            return real_open(name, flags, *args)
        monkeypatch.setattr(os, "open", denied)
    with pytest.raises(CommandError, match="permission denied"):
        await logs.handle({"log_path": str(path)}, make_ctx(tmp_path, [str(path)]))


async def test_lines_default_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "n.log"
    path.write_text("".join(f"{i}\n" for i in range(300)))
    ctx = make_ctx(tmp_path, [str(path)])
    reply = await logs.handle({"log_path": str(path)}, ctx)
    assert reply["lines"] == [str(i) for i in range(200, 300)]
    assert (await logs.handle({"log_path": str(path), "lines": 10_000}, ctx))["lines"][0] == "0"
    for bad in (0, 10_001, -5):
        with pytest.raises(CommandError, match="between 1 and 10000"):
            await logs.handle({"log_path": str(path), "lines": bad}, ctx)


async def test_empty_file_has_no_lines(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    reply = await logs.handle({"log_path": str(path)}, make_ctx(tmp_path, [str(path)]))
    assert reply["lines"] == []
