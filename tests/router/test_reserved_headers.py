"""Headers a rule may not set: on a webhook the ones the HTTP client owns (`Host` would
reach the internal virtual hosts behind a public ingress; the framing ones could smuggle a
request), on a publish the ones the router stamps (`Cairn-Hops`, `Cairn-Budget`)."""

from __future__ import annotations

import pytest

from rule_router.errors import RuleError
from rule_router.model import reserved_webhook_header
from rule_router.parse import parse_rules

HOOK = ("actions:\n  - webhook: https://hooks.example.com/x\n"
        "    headers: {{{name}: 'internal.corp'}}\n")
STRUCTURED = ("actions:\n  - http:\n      url: https://hooks.example.com/x\n"
              "      headers:\n        {name}: 'x'\n")
RESERVED = ["Host", "host", "HOST", "Content-Length", "Transfer-Encoding", "Connection",
            "Upgrade", "Proxy-Authorization", "proxy-connection", "Proxy-Anything", "TE",
            "te", "Trailer", "Keep-Alive"]


@pytest.mark.parametrize("name", RESERVED)
def test_a_webhook_may_not_set_a_header_the_client_owns(name):
    with pytest.raises(RuleError) as info:
        parse_rules(HOOK.format(name=name), "row", {})
    assert info.value.row_message == (
        f"line 3: actions[0].headers: {name} is set by the router's HTTP client, not by rules")
    with pytest.raises(RuleError, match=f"actions\\[0\\].http.headers: {name} is set by"):
        parse_rules(STRUCTURED.format(name=name), "row", {})


@pytest.mark.parametrize("name", ["Authorization", "X-Host", "Hostname", "X-Proxy-Id",
                                  "Content-Type", "TE-Extra", "Accept"])
def test_other_webhook_headers_are_fine(name):
    (rule,) = parse_rules(HOOK.format(name=name), "row", {})
    assert rule.actions[0].headers[0][0] == name
    assert not reserved_webhook_header(name)


def test_a_publish_may_carry_http_looking_headers():
    """NATS headers route nothing: only the router's own two are refused there."""
    text = "actions:\n  - publish: alerts.x\n    headers: {Host: a, Connection: b}\n"
    assert parse_rules(text, "row", {})
    with pytest.raises(RuleError, match="Cairn-Hops is set by the router"):
        parse_rules(text.replace("Host", "cairn-hops"), "row", {})
