"""What a tenant runtime refuses on its rules' behalf, and how it says so.

Three refusals, each counted in a metric, logged at most once per REPORT_EVERY and, where
a rule is to blame, reported to the rule's source through `on_warn` (a row's `error`,
`status` left `valid`) at most once per REPORT_EVERY per rule:

- a message at the hop limit (`hops.py`): not evaluated; every rule it would have met is
  told (rules publishing in a loop);
- the server's answer to someone else's JetStream request aimed at a rule's subject
  (`replies.py`): not evaluated; logged only, no rule is to blame;
- a publish past the received message's output budget or the tenant's publish rate
  (`fanout.py`): dropped; the rule that wanted it is told.

One `Guards` per tenant runtime: its bucket and its report windows are that tenant's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rule_router import metrics
from rule_router.fanout import (
    REPORT_EVERY,
    Allowance,
    PublishBudget,
    fanout_warning,
    throttle_warning,
)
from rule_router.hops import MAX_HOPS, limit_warning
from rule_router.model import Firing, Rule
from rule_router.throttle import Throttle

log = logging.getLogger(__name__)

Warn = Callable[[Rule, str], None]
_DROP_LOG = {"fanout": "publishes dropped: past the fan-out budget of their message",
             "throttled": "publishes dropped: the tenant is past its publish rate"}


class Guards:
    def __init__(self, slug: str, on_warn: Warn | None = None) -> None:
        self.slug = slug
        self.on_warn = on_warn
        self.budget = PublishBudget()
        self.reports = Throttle()
        self.dropped = {"fanout": 0, "throttled": 0, "server-reply": 0, "hop-limit": 0}

    def at_hop_limit(self, rules: list[Rule], subject: str) -> None:
        metrics.LOOP_DROPPED.inc()
        self.dropped["hop-limit"] += 1
        for rule in rules:
            if not self.reports.allow(("hop-limit", rule.id), REPORT_EVERY):
                continue
            log.warning("message at the hop limit not evaluated; rules publishing in a loop?",
                        extra={"tenant": self.slug, "rule": rule.name, "subject": subject,
                               "hops": MAX_HOPS})
            if self.on_warn is not None:
                self.on_warn(rule, limit_warning(subject))

    def server_reply(self, subject: str, why: str) -> None:
        metrics.SERVER_REPLIES_DROPPED.inc()
        self.dropped["server-reply"] += 1
        if self.reports.allow("log:server-reply", REPORT_EVERY):
            log.warning("a JetStream answer sent into a rule's subject was not evaluated",
                        extra={"tenant": self.slug, "subject": subject, "error": why})

    def may_publish(self, firing: Firing, allowance: Allowance) -> bool:
        """Take one unit of the received message's output budget and one token of the
        tenant's bucket; False (counted and reported) when either is spent."""
        if not allowance.take():
            metrics.FANOUT_DROPPED.inc()
            self._dropped(firing.rule, "fanout", fanout_warning(firing.subject))
            return False
        if not self.budget.take():
            metrics.PUBLISH_THROTTLED.inc()
            self._dropped(firing.rule, "throttled", throttle_warning())
            return False
        return True

    def _dropped(self, rule: Rule, kind: str, warning: str) -> None:
        self.dropped[kind] += 1
        if self.reports.allow(f"log:{kind}", REPORT_EVERY):  # once a minute per tenant
            log.warning(_DROP_LOG[kind], extra={"tenant": self.slug, "rule": rule.name})
        if self.on_warn is not None and self.reports.allow((kind, rule.id), REPORT_EVERY):
            self.on_warn(rule, warning)
