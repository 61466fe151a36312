"""Actions: webhooks with retries (respx for the outbound HTTP), publish, dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import respx

from rule_router.actions import ACTIONS, DEADLETTER_SUBJECT, deadletter_payload, publish, webhook
from rule_router.errors import ActionError
from rule_router.evaluate import evaluate
from rule_router.model import PublishOut, WebhookOut
from rule_router.parse import parse_rules

pytestmark = pytest.mark.timeout(20)
URL = "https://hooks.example.com/cpu"


def out(attempts=3, backoff=0.001, **kw):
    return WebhookOut(url=URL, method="POST", headers={"Content-Type": "application/json"},
                      body=b'{"cpu": 95}', timeout=0.5, attempts=attempts, backoff=backoff,
                      safe_url=URL, **kw)


class Sleeps:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def test_actions_table():
    assert ACTIONS == {"publish": publish.run, "webhook": webhook.run}
    assert DEADLETTER_SUBJECT == "alerts.deadletter"


@respx.mock
async def test_webhook_success_sends_method_headers_body():
    route = respx.post(URL).mock(return_value=httpx.Response(204))
    async with httpx.AsyncClient() as client:
        result = await webhook.run(out(), client)
    assert result.ok and result.attempts == 1 and result.status == 204 and result.error is None
    request = route.calls.last.request
    assert request.content == b'{"cpu": 95}'
    assert request.headers["content-type"] == "application/json"


@respx.mock
async def test_webhook_retries_5xx_and_429_with_exponential_backoff():
    route = respx.post(URL).mock(side_effect=[httpx.Response(500), httpx.Response(429),
                                              httpx.Response(503), httpx.Response(200)])
    sleeps = Sleeps()
    async with httpx.AsyncClient() as client:
        result = await webhook.run(out(attempts=5, backoff=0.5), client, sleep=sleeps)
    assert result.ok and result.attempts == 4 and route.call_count == 4
    assert sleeps.delays == [0.5, 1.0, 2.0]


@respx.mock
async def test_webhook_backoff_is_capped():
    respx.post(URL).mock(return_value=httpx.Response(502))
    sleeps = Sleeps()
    async with httpx.AsyncClient() as client:
        result = await webhook.run(out(attempts=6, backoff=1), client, max_backoff=4,
                                   sleep=sleeps)
    assert not result.ok and sleeps.delays == [1, 2, 4, 4, 4]


@respx.mock
@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ConnectError])
async def test_webhook_retries_timeouts_and_connection_errors(error):
    route = respx.post(URL).mock(side_effect=[error("boom"), error("boom"),
                                              httpx.Response(200)])
    async with httpx.AsyncClient() as client:
        result = await webhook.run(out(attempts=3), client)  # real sleeps, tiny backoff
    assert result.ok and result.attempts == 3 and route.call_count == 3


@respx.mock
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 301])
async def test_webhook_does_not_retry_other_client_errors(status):
    route = respx.post(URL).mock(return_value=httpx.Response(status, text="nope"))
    async with httpx.AsyncClient() as client:
        result = await webhook.run(out(attempts=5), client)
    assert not result.ok and result.attempts == 1 and route.call_count == 1
    assert result.status == status and result.error == f"HTTP {status}: nope"


@respx.mock
async def test_webhook_gives_up_after_the_last_attempt_into_a_dead_letter():
    route = respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    (rule,) = parse_rules(f"name: cpu\nactions: [{{webhook: '{URL}', retries: 3, "
                          f"backoff: 0.001}}]\n", "row9", {})
    firing = evaluate(rule, "agents.web1.telemetry.system", b'{"cpu": 95}')
    (action,) = firing.actions
    async with httpx.AsyncClient() as client:
        result = await webhook.run(action, client)
    assert not result.ok and result.attempts == 3 and route.call_count == 3
    assert result.error == "timed out after 10s (gave up after 3 attempts)"
    now = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    doc = json.loads(deadletter_payload(firing, action, result, firing.payload, now=now))
    assert doc == {
        "rule": "cpu", "rule_id": "row9#0", "subject": "agents.web1.telemetry.system",
        "action": {"type": "webhook", "index": 0, "method": "POST", "url": URL},
        "error": "timed out after 10s (gave up after 3 attempts)", "attempts": 3,
        "status": None, "original": {"cpu": 95}, "timestamp": "2024-01-02T03:04:05.000Z"}


@respx.mock
async def test_webhook_last_status_is_reported():
    respx.post(URL).mock(return_value=httpx.Response(500))
    async with httpx.AsyncClient() as client:
        result = await webhook.run(out(attempts=2), client)
    assert (result.ok, result.status, result.attempts) == (False, 500, 2)
    assert result.error == "HTTP 500 (gave up after 2 attempts)"


async def test_webhook_unusable_url_fails_without_retry():
    async with httpx.AsyncClient() as client:
        result = await webhook.run(
            WebhookOut("ftp://x/y", "POST", {}, b"", attempts=3, backoff=0.001), client)
    assert not result.ok and result.attempts == 1 and "request failed" in result.error


class FakeNats:
    def __init__(self, fail=False):
        self.sent = []
        self.fail = fail

    async def publish(self, subject, payload=b"", headers=None):
        if self.fail:
            raise RuntimeError("connection closed")
        self.sent.append((subject, payload, headers))


async def test_publish_hands_subject_payload_headers_to_nats():
    nc = FakeNats()
    await publish.run(PublishOut("alerts.x", b"{}", {"A": "1"}), nc)
    await publish.run(PublishOut("alerts.y", b"raw"), nc)
    assert nc.sent == [("alerts.x", b"{}", {"A": "1"}), ("alerts.y", b"raw", None)]


async def test_publish_failure_becomes_action_error_and_can_be_dead_lettered():
    (rule,) = parse_rules("actions: [{publish: alerts.x}]", "r", {})
    firing = evaluate(rule, "agents.a.telemetry.system", b"not json")
    with pytest.raises(ActionError, match="connection closed") as info:
        await publish.run(firing.actions[0], FakeNats(fail=True))
    doc = json.loads(deadletter_payload(firing, firing.actions[0], info.value))
    assert doc["action"] == {"type": "publish", "index": 0, "subject": "alerts.x"}
    assert doc["original"] == "not json" and doc["attempts"] == 1
    assert doc["timestamp"].endswith("Z")
