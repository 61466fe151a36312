"""The dispatcher's encoding, its request check and the health verdict, on literal inputs."""

from __future__ import annotations

import json
import time

import pytest
from nats.aio.msg import Msg

from agent import config as config_mod
from agent.commands.health import report, status
from agent.context import Context, Stats
from agent.dispatcher import DROP_LOG_EVERY, Dispatcher, decode, encode, not_a_request
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


# -- only real requests run (agent/dispatcher.py `not_a_request`) ----------------------------
# What nats-server really delivers (seen live in tests/security/test_forged_messages.py):
# a PubAck or API response has no reply subject; a direct get carries Nats-Stream and
# friends; a not-found is an empty body with an inline status that nats-py turns into
# headers["Status"] (and a Description key that is nats-py's Header enum, not a str).

INBOX = "_INBOX_svc_cairn-bridge.abc.1"
DIRECT_GET = {"Nats-Stream": "TELEMETRY", "Nats-Subject": "agents.x.telemetry.system",
              "Nats-Sequence": "2", "Nats-Time-Stamp": "2026-01-01T00:00:00Z"}


def _status_404() -> dict:
    from nats.js.api import Header
    return {"Status": "404", Header.DESCRIPTION: "Message Not Found"}


@pytest.mark.parametrize(
    ("reply", "headers", "reason"),
    [
        ("", None, "no reply subject"),
        (None, None, "no reply subject"),
        ("$JS.ACK.TELEMETRY.c.1.2.2.1700000000.0", None, "the server's"),
        ("$SYS.REQ.SERVER.PING", None, "the server's"),
        ("$KV.config.x", None, "the server's"),
        ("", DIRECT_GET, "no reply subject"),
        (INBOX, DIRECT_GET, "Nats-Stream"),
        (INBOX, {"Nats-Last-Sequence": "7"}, "Nats-Last-Sequence"),
        (INBOX, {"nats-time-stamp": "x"}, "nats-time-stamp"),
        ("__status__", None, "Status"),
        ("agents.other.heartbeat", None, "not an inbox"),
        ("alerts.forged", None, "not an inbox"),
    ],
    ids=["empty-reply", "none-reply", "js-ack", "sys", "kv", "direct-get-no-reply",
         "direct-get-headers", "last-sequence", "lower-case", "status-404",
         "steered-to-a-heartbeat", "steered-to-alerts"],
)
def test_server_made_messages_are_not_requests(reply, headers, reason):
    if reply == "__status__":
        reply, headers = INBOX, _status_404()
    refused = not_a_request(reply, headers)
    assert refused is not None and reason in refused


@pytest.mark.parametrize("headers", [None, {}, {"Nats-Msg-Id": "abc"}, {"traceparent": "x"}])
def test_a_requesters_request_is_a_request(headers):
    """Control: an inbox reply with no server header is what every caller sends."""
    assert not_a_request(INBOX, headers) is None
    assert not_a_request("_INBOX_d-web1.x.y", headers) is None
    assert not_a_request("_INBOX_person_abc123.x.y", headers) is None
    assert not_a_request("_INBOX.abc.1", headers) is None


async def test_dropped_messages_are_counted_not_run_and_logged_once_a_minute(caplog):
    ctx = Context(config=config_mod.from_dict({"device": {"code": "abc"}}))
    dispatcher = Dispatcher(ctx)
    caplog.set_level("WARNING", logger="agent.dispatcher")
    forged = [Msg(None, subject="agents.abc.cmd.rotate_creds", headers=_status_404()),
              Msg(None, subject="agents.abc.cmd.ping", data=b'{"stream":"TELEMETRY","seq":1}'),
              Msg(None, subject="agents.abc.cmd.exec", reply="$JS.ACK.TELEMETRY.c.1.1.1.1.0",
                  data=b'{"command": "true"}')]
    for msg in forged:
        await dispatcher._on_message(msg)
    assert dispatcher.inflight == set(), "a dropped message must not start a handler"
    assert ctx.stats.commands_dropped == 3 and ctx.stats.commands_processed == 0
    warnings = [r for r in caplog.records if "not a request" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].reason == "no reply subject"
    assert report(ctx)["commands"] == {"processed": 0, "errored": 0, "dropped": 3}
    dispatcher._drop_logged -= DROP_LOG_EVERY  # a minute later the next one is logged again
    await dispatcher._on_message(forged[0])
    assert len([r for r in caplog.records if "not a request" in r.getMessage()]) == 2


async def test_a_delivery_under_another_subject_is_dropped():
    """A push consumer's delivery shows the stored message's subject (its last token would
    be taken as the command); a real request's subject is ours."""
    ctx = Context(config=config_mod.from_dict({"device": {"code": "abc"}}))
    dispatcher = Dispatcher(ctx)
    await dispatcher._on_message(Msg(None, subject="agents.evil.telemetry.exec", reply=INBOX,
                                     data=b'{"command": "true"}'))
    assert ctx.stats.commands_dropped == 1 and dispatcher.inflight == set()
