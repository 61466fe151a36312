"""Which addresses webhooks may reach, CAIRN_ROUTER_WEBHOOK_ALLOW (bare and tenant-scoped
entries), and the early check of webhook URLs whose host is written as an address; webhook
bounds at validation."""

from __future__ import annotations

import ipaddress

import pytest

from rule_router.addresses import (
    EgressPolicy,
    classify,
    literal_refusal,
    name_refusal,
    parse_ip,
)
from rule_router.errors import RuleError
from rule_router.parse import parse_rules

NONE = EgressPolicy()


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local: cloud metadata"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("172.31.255.255", "private"), ("192.168.0.1", "private"), ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("0.1.2.3", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("100.64.0.1", "CGNAT (shared address space)"), ("fec0::1", "site-local"),
    ("::ffff:127.0.0.1", "loopback, IPv4-mapped"),
    ("::ffff:169.254.169.254", "link-local: cloud metadata, IPv4-mapped"),
    ("::ffff:10.0.0.1", "private, IPv4-mapped"),
    ("2002:7f00:1::", "loopback, IPv4 inside IPv6"),  # 6to4
    ("64:ff9b::a9fe:a9fe", "link-local: cloud metadata, IPv4 inside IPv6"),  # NAT64
    ("192.0.2.1", "special-purpose (not globally routable)"),
    ("::127.0.0.1", "reserved"),
])
def test_non_public_addresses_are_classified(address, kind):
    assert classify(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "172.32.0.1", "100.128.0.1", "::ffff:8.8.8.8"])
def test_public_addresses_are_fine(address):
    assert classify(ipaddress.ip_address(address)) is None


def test_every_spelling_of_an_address_is_recognised():
    for spelled in ("127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "[::1]", "fe80::1%eth0"):
        ip = parse_ip(spelled)
        assert ip is not None and classify(ip) in ("loopback", "link-local"), spelled
    assert parse_ip("example.com") is None


def test_the_allow_setting_takes_hosts_and_cidrs():
    policy = EgressPolicy.parse(" 10.0.0.0/8, Hooks.Internal. ,127.0.0.1,[::1], bad/cidr, ")
    assert policy.hosts == {"hooks.internal"}
    assert [str(n) for n in policy.networks] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    private = ipaddress.ip_address("192.168.1.5")
    assert policy.refusal("hooks.internal", private) is None  # a listed name: any address
    assert policy.refusal("HOOKS.internal.", private) is None
    assert policy.refusal("other.internal", private) is not None
    assert policy.refusal("x", ipaddress.ip_address("10.9.9.9")) is None  # in a listed network
    assert policy.refusal("x", ipaddress.ip_address("::ffff:10.9.9.9")) is None
    assert policy.refusal("x", ipaddress.ip_address("127.0.0.2")) is not None  # only .1
    assert NONE.refusal("x", ipaddress.ip_address("8.8.8.8")) is None


def test_a_refusal_by_address_names_its_class_and_by_name_neither_address_nor_class():
    ip = ipaddress.ip_address("10.1.2.3")
    assert NONE.refusal("10.1.2.3", ip) == (
        "refused: 10.1.2.3 is not a public address (private); webhooks may reach it only "
        "if CAIRN_ROUTER_WEBHOOK_ALLOW lists it")
    by_name = NONE.refusal("db.corp.example", ip)
    # one message for every refused name: it does not say where (or whether) it resolves
    assert by_name == name_refusal("db.corp.example") == (
        "refused: db.corp.example does not resolve to a public address; webhooks may reach "
        "it only if CAIRN_ROUTER_WEBHOOK_ALLOW lists it")
    assert NONE.refusal("db.corp.example", ipaddress.ip_address("127.0.0.1")) == by_name


SCOPED = ("127.0.0.1, a-slug:10.0.0.0/8, a-slug:hooks.internal, b-slug:[fd00::/8], "
          "[fd00:1::/32], fe80::1, 2001:db8::/32, a-slug:bad/cidr")


def test_a_scoped_entry_applies_to_its_tenant_only():
    a, b, bare = (EgressPolicy.parse(SCOPED, t) for t in ("a-slug", "b-slug", None))
    private, name = ipaddress.ip_address("10.1.2.3"), "hooks.internal"
    assert a.refusal("x", private) is None and a.refusal(name, private) is None
    for other in (b, bare, EgressPolicy.parse(SCOPED, "c-slug")):
        # refused for everyone else, with the message of an entry that does not exist
        assert other.refusal("x", private) == NONE.refusal("x", private)
        assert other.refusal(name, private) == NONE.refusal(name, private)
    # bare entries are everyone's (positive control in every tenant)
    for policy in (a, b, bare):
        assert policy.refusal("x", ipaddress.ip_address("127.0.0.1")) is None
        assert policy.refusal("x", ipaddress.ip_address("fd00:1::5")) is None  # bracketed
        assert policy.refusal("x", ipaddress.ip_address("fe80::1")) is None  # not `slug:`
    assert b.refusal("x", ipaddress.ip_address("fd00::5")) is None
    assert a.refusal("x", ipaddress.ip_address("fd00::5")) is not None
    # ambiguous: read as `2001:` + `db8::/32`, which allows less, never more
    for tenant in (None, "a-slug", "2001"):
        assert EgressPolicy.parse(SCOPED, tenant).refusal(
            "x", ipaddress.ip_address("2001:db8::1")) is not None
    assert a.networks == (ipaddress.ip_network("127.0.0.1/32"),
                          ipaddress.ip_network("10.0.0.0/8"),
                          ipaddress.ip_network("fd00:1::/32"), ipaddress.ip_network("fe80::1"))


def test_validation_applies_the_rows_tenant(monkeypatch):
    monkeypatch.setenv("CAIRN_ROUTER_WEBHOOK_ALLOW", "a-slug:127.0.0.1")
    text = HOOK.format(url="http://127.0.0.1:9/x")
    assert parse_rules(text, "row", {}, tenant="a-slug")
    with pytest.raises(RuleError) as scoped:
        parse_rules(text, "row", {}, tenant="b-slug")
    monkeypatch.setenv("CAIRN_ROUTER_WEBHOOK_ALLOW", "")
    with pytest.raises(RuleError) as unlisted:
        parse_rules(text, "row", {}, tenant="b-slug")
    assert scoped.value.row_message == unlisted.value.row_message == (
        "line 2: actions[0].webhook: refused: 127.0.0.1 is not a public address (loopback); "
        "webhooks may reach it only if CAIRN_ROUTER_WEBHOOK_ALLOW lists it")


@pytest.mark.parametrize(("pattern", "refused"), [
    (["http://127.0.0.1:8080/x"], True),
    (["http://localhost/x"], True),
    (["http://api.localhost/x"], True),
    (["http://[::ffff:7f00:1]/x"], True),
    (["http://169.254.169.254/latest/meta-data/"], True),
    (["http://user:pw@10.0.0.1/x"], True),
    (["http://2130706433/"], True),
    (["http://127.0.0.1:", None, "/x"], True),  # the host is fixed, only the port is not
    (["http://127.0.0.1:", None, "@example.com/x"], False),  # the host is example.com
    (["http://10.0.0.", None, "/x"], False),  # not known until rendered: checked at connect
    (["http://", None, "/x"], False),
    (["https://hooks.example.com/x"], False),
])
def test_literal_hosts_are_judged_early(pattern, refused):
    assert (literal_refusal(pattern, NONE) is not None) is refused


def test_literal_hosts_can_be_allowed():
    assert literal_refusal(["http://localhost/x"], EgressPolicy.parse("localhost")) is None
    assert literal_refusal(["http://localhost/x"], EgressPolicy.parse("127.0.0.1")) is None
    assert literal_refusal(["http://127.0.0.1/x"], EgressPolicy.parse("127.0.0.0/8")) is None


HOOK = "actions:\n  - webhook: '{url}'\n"


def test_a_webhook_to_a_literal_non_public_address_is_invalid_unless_allowed():
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://169.254.169.254/",
                "http://[fd00::1]/", "http://0.0.0.0:8090/"):
        with pytest.raises(RuleError, match="CAIRN_ROUTER_WEBHOOK_ALLOW lists it") as info:
            parse_rules(HOOK.format(url=url), "row", {}, egress=NONE)
        assert info.value.line == 2
    allow = EgressPolicy.parse("127.0.0.1, 169.254.169.254, fd00::/8, 0.0.0.0")
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/", "http://[fd00::1]/",
                "http://0.0.0.0:8090/", "https://hooks.example.com/x"):
        assert parse_rules(HOOK.format(url=url), "row", {}, egress=allow)
    # a host from ${ENV} cannot be known here: the connect-time check decides
    assert parse_rules(HOOK.format(url="${BASE}/x"), "row", {"BASE": "http://10.0.0.1"},
                       egress=NONE)


def test_the_default_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("CAIRN_ROUTER_WEBHOOK_ALLOW", raising=False)
    with pytest.raises(RuleError, match="loopback"):
        parse_rules(HOOK.format(url="http://127.0.0.1:9/x"), "row", {})
    monkeypatch.setenv("CAIRN_ROUTER_WEBHOOK_ALLOW", "127.0.0.1")
    assert parse_rules(HOOK.format(url="http://127.0.0.1:9/x"), "row", {})


@pytest.mark.parametrize(("key", "over", "limit", "message"), [
    ("retries", "11", "10", "actions[0].retries must be at most 10 attempts (got 11)"),
    ("timeout", "31s", "30s", "actions[0].timeout must be at most 30s (got 31)"),
    ("timeout", "1h", "30", "actions[0].timeout must be at most 30s (got 3600)"),
    ("backoff", "31", "30", "actions[0].backoff must be at most 30s (got 31)"),
    ("backoff", "2m", "30s", "actions[0].backoff must be at most 30s (got 120)"),
])
def test_webhook_numbers_have_upper_bounds(key, over, limit, message):
    text = "actions:\n  - webhook: https://hooks.example.com/x\n    {key}: {value}\n"
    with pytest.raises(RuleError) as info:
        parse_rules(text.format(key=key, value=over), "row", {})
    assert (info.value.message, info.value.line) == (message, 3)
    (rule,) = parse_rules(text.format(key=key, value=limit), "row", {})  # the bound itself
    hook = rule.actions[0]
    assert {"retries": hook.attempts, "timeout": hook.timeout, "backoff": hook.backoff}[key] \
        == float(limit.rstrip("s"))
