"""Hop counts: reading and setting the Cairn-Hops header, a rule may not set it, and a rule
that publishes where it listens is valid with a warning."""

from __future__ import annotations

import pytest

from rule_router.errors import RuleError
from rule_router.hops import HOPS_HEADER, MAX_HOPS, hops, self_loop_warnings, with_hops
from rule_router.parse import parse_rules
from rule_router.sources import warning_text
from rule_router.subjects import may_match


def test_the_constants():
    assert (HOPS_HEADER, MAX_HOPS) == ("Cairn-Hops", 3)


@pytest.mark.parametrize(("headers", "count"), [
    (None, 0), ({}, 0), ({"Other": "5"}, 0), ({"Cairn-Hops": "2"}, 2),
    ({"cairn-hops": "3"}, 3), ({"Cairn-Hops": " 1 "}, 1), ({"Cairn-Hops": "-1"}, 0),
    ({"Cairn-Hops": "x"}, 0), ({"Cairn-Hops": "1" * 5000}, 0), ({"Cairn-Hops": ""}, 0),
])
def test_reading_the_hop_count(headers, count):
    assert hops(headers) == count


def test_setting_the_hop_count_replaces_any_spelling():
    assert with_hops(None, 1) == {"Cairn-Hops": "1"}
    assert with_hops({"X": "y", "cairn-HOPS": "0"}, 3) == {"X": "y", "Cairn-Hops": "3"}


@pytest.mark.parametrize("name", ["Cairn-Hops", "cairn-hops", "CAIRN-HOPS"])
def test_a_rule_cannot_set_or_reset_the_hop_header(name):
    text = f"subject: alerts.in\nactions:\n  - publish: alerts.out\n    headers: {{{name}: '0'}}\n"
    with pytest.raises(RuleError, match="Cairn-Hops is set by the router") as info:
        parse_rules(text, "row", {})
    assert info.value.line == 4
    assert parse_rules(text.replace(name, "X-Trace"), "row", {})  # other headers are fine


@pytest.mark.parametrize(("filter_", "pattern", "expected"), [
    ("alerts.x.loop", ["alerts.x.loop"], True),
    ("alerts.x.loop", ["alerts.x.lo"], False),
    ("alerts.*.loop", ["alerts.", None, ".loop"], True),
    ("alerts.>", ["alerts.", None], True),
    ("alerts.*", ["alerts.", None, ".b"], False),  # always three tokens or more
    ("alerts.*.b", ["alerts.", None, ".b"], True),
    ("alerts.a", ["alerts.", None, ".b"], False),
    ("agents.*.telemetry.>", ["alerts.", None], False),
    ("alerts.x", ["alerts.x.", None], False),
    ("alerts.*", ["alerts.x"], True),
    ("alerts.*", ["alerts.x.y"], False),
    ("alerts.x.>", ["alerts.", None, ".y"], True),  # the placeholder may be "x"
])
def test_may_match(filter_, pattern, expected):
    assert may_match(filter_, pattern) is expected


def test_a_rule_that_publishes_where_it_listens_is_valid_with_a_warning():
    (loop,) = parse_rules("subject: alerts.x.loop\nactions:\n  - publish: alerts.x.loop\n",
                          "row", {})
    (warning,) = loop.warnings
    assert warning.row_message == (
        "line 3: warning: publishes to alerts.x.loop, which its own subject filter "
        "alerts.x.loop matches; the loop stops after 3 hops")
    assert warning_text([loop]) == warning.row_message
    (templated,) = parse_rules(
        "subject: alerts.*.cpu\nactions:\n  - publish: alerts.x.cpu\n"
        "  - publish: 'alerts.{@subject.1}.cpu'\n  - publish: alerts.done\n", "row", {})
    assert [w.line for w in templated.warnings] == [3, 4]
    (fine,) = parse_rules("subject: agents.*.telemetry.system\nactions:\n"
                          "  - publish: 'alerts.{@subject.1}.cpu'\n", "row", {})
    assert fine.warnings == () == self_loop_warnings(fine) and warning_text([fine]) == ""
