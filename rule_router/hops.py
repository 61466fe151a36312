"""Hop counts: how many rules a message has already passed through.

A rule on `alerts.x` that publishes to `alerts.x` (or two rules that publish to each
other's subjects) would otherwise bounce messages forever, at the cost of every tenant on
the router. So every message the router publishes (alerts and dead letters) carries a
`Cairn-Hops` header, the incoming count plus one (a message without it has 0 hops), and a
message arriving with MAX_HOPS or more is not evaluated again. A rule cannot set or reset
the header itself. A rule that publishes where its own filter listens is flagged at
validation (still valid: the hop limit stops it). The hop count bounds depth only; breadth
(one message fanning out into many) is `fanout.py`'s, with `Cairn-Budget` beside this one.
"""

from __future__ import annotations

from collections.abc import Mapping

from rule_router.model import PublishAction, Rule, RuleWarning
from rule_router.subjects import may_match

HOPS_HEADER = "Cairn-Hops"
MAX_HOPS = 3
_MAX_DIGITS = 6  # a longer value is nonsense (and int() of a huge string is costly)


def hops(headers: Mapping[str, str] | None) -> int:
    """The hop count of a received message: 0 without the header or for a malformed value."""
    if not headers:
        return 0
    value = headers.get(HOPS_HEADER)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == HOPS_HEADER.lower()), None)
    text = (value or "").strip()
    if not text.isdigit() or len(text) > _MAX_DIGITS:
        return 0
    return int(text)


def with_hops(headers: Mapping[str, str] | None, count: int) -> dict[str, str]:
    """`headers` plus `Cairn-Hops: count`; any header of that name (any case) is replaced."""
    out = {k: v for k, v in (headers or {}).items() if k.lower() != HOPS_HEADER.lower()}
    out[HOPS_HEADER] = str(count)
    return out


def self_loop_warnings(rule: Rule) -> tuple[RuleWarning, ...]:
    """Publish actions whose subject the rule's own filter can match."""
    found = []
    for action in rule.actions:
        if not isinstance(action, PublishAction):
            continue
        pattern = [p if isinstance(p, str) else None for p in action.subject.parts]
        if may_match(rule.subject, pattern):
            found.append(RuleWarning(
                f"warning: publishes to {action.subject.text}, which its own subject filter "
                f"{rule.subject} matches; the loop stops after {MAX_HOPS} hops", action.line))
    return tuple(found)


def limit_warning(subject: str) -> str:
    """Written into a rule's row when a message it would see arrived at the hop limit."""
    return (f"warning: a message on {subject} had already passed through {MAX_HOPS} rules "
            f"(the {HOPS_HEADER} limit) and was not evaluated: do rules publish in a loop?")
