"""The dispatcher's encoding and the health verdict, on literal inputs."""

from __future__ import annotations

import json
import time

import pytest

from agent import config as config_mod
from agent.commands.health import status
from agent.context import Context, Stats
from agent.dispatcher import Dispatcher, decode, encode
from agent.errors import CommandError


def test_oversized_output_is_cut_and_flagged():
    reply = {"status": "success", "output": "x" * 2_000_000, "timestamp": "t"}
    body = encode(reply, 1024 * 1024)
    assert len(body) <= 1024 * 1024
    doc = json.loads(body)
    assert doc["truncated"] is True and doc["status"] == "success"


def test_oversized_log_lines_keep_the_newest():
    lines = [f"{i:08d} " + "y" * 200 for i in range(20_000)]
    doc = json.loads(encode({"status": "success", "lines": lines}, 64 * 1024))
    assert doc["truncated"] is True
    assert doc["lines"][-1] == lines[-1] and len(doc["lines"]) < len(lines)


def test_small_reply_is_untouched():
    assert json.loads(encode({"status": "pong"}, 1024)) == {"status": "pong"}


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\xff\xfe", "not valid JSON"), (b"null", "JSON object"), (b'"s"', "JSON object"),
     (b"{", "not valid JSON"), (b"x" * 300_000, "too large")],
)
def test_decode_rejects(data, message):
    with pytest.raises(CommandError, match=message):
        decode(data)


def test_empty_body_means_no_arguments():
    assert decode(b"") == {} and decode(b"  ") == {}


async def test_handler_crash_becomes_an_internal_error_reply(monkeypatch):
    from agent import commands

    async def boom(request, ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(commands.COMMANDS, "ping", boom)
    ctx = Context(config=config_mod.from_dict({"device": {"code": "abc"}}))
    reply = await Dispatcher(ctx).run("ping", b"{}")
    assert reply["status"] == "error" and "internal error in ping" in reply["error"]
    assert ctx.stats.commands_errored == 1 and ctx.stats.commands_processed == 1


def test_health_verdicts():
    fresh = Stats()
    assert status(False, fresh) == "unhealthy"
    assert status(True, fresh) == "healthy"
    all_failed = Stats(metrics_failures=3)
    assert status(True, all_failed) == "degraded", "every scrape failing is not healthy"
    half = Stats(metrics_count=2, metrics_failures=2)
    assert status(True, half) == "healthy"
    mostly_failed = Stats(metrics_count=1, metrics_failures=2)
    assert status(True, mostly_failed) == "degraded"
    flappy = Stats()
    flappy.reconnect_times.extend([time.monotonic()] * 11)
    assert status(True, flappy) == "degraded"
