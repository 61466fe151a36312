"""Fan-out: how many messages rules may make the router publish. All the limits live here.

The hop limit (`hops.py`) caps how deep a chain of rules goes, not how wide: one rule on
`alerts.amp.>` with 10 publish actions into `alerts.amp.x0..x9` turns one message into
1 + 10 + 100 + 1000 on a shared router, and the router's CPU and the server's bandwidth
are every tenant's. Three bounds, from the rule's text to the router's runtime:

- Validation: at most MAX_ACTIONS actions per rule and MAX_RULES rules per row.
- Per received message, an output budget carried in the `Cairn-Budget` header next to
  `Cairn-Hops`: a message without it (from a device, a person, a service) may cause at most
  MAX_OUTPUTS messages in total, across every rule and every hop after it. The router
  splits what a message may cause among the messages it publishes for it: with budget B
  and n actions planned, at most B are published and each carries (B - n) // n, so
  the whole tree below one message stays within B. A header value is only ever lowered
  (min with MAX_OUTPUTS): a publisher cannot buy more; a rule cannot set the header.
- Per tenant, a token bucket (PUBLISH_RATE messages/s, bursts of PUBLISH_BURST) over
  everything the router publishes for that tenant (alerts and dead letters), so many
  messages each within their budget still cannot flood the server. Each tenant has its
  own bucket: one tenant past its rate never slows another.

A publish refused by either bound is dropped (not queued: queueing would hand the flood
to the next second), counted (`cairn_router_fanout_dropped_total`,
`cairn_router_publish_throttled_total`), logged at most once a minute per tenant, and the
rule gets a warning in its row (`status` stays `valid`). For acking it counts as done, as
with a message at the hop limit or an action that cannot render: the drop is the rule's
doing and redelivery would only repeat the publishes that did go out (see `tenant.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rule_router.hops import HOPS_HEADER, with_hops

MAX_ACTIONS = 10  # actions per rule (validation)
MAX_RULES = 100  # rules per row or file (validation)
MAX_OUTPUTS = 100  # messages one received message may cause, across all rules and hops
PUBLISH_RATE = 1000.0  # messages per second the router publishes for one tenant
PUBLISH_BURST = 2000  # ... and how many above that rate in one burst
REPORT_EVERY = 60.0  # seconds between log lines (per tenant) and row warnings (per rule)

BUDGET_HEADER = "Cairn-Budget"
RESERVED_HEADERS = (HOPS_HEADER, BUDGET_HEADER)  # set by the router, never by a rule
_MAX_DIGITS = 6


def received_budget(headers: Mapping[str, str] | None) -> int:
    """What a received message may still cause: MAX_OUTPUTS without the header (or with a
    malformed value), else the header's value but never more than MAX_OUTPUTS."""
    if not headers:
        return MAX_OUTPUTS
    value = headers.get(BUDGET_HEADER)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == BUDGET_HEADER.lower()),
                     None)
    text = (value or "").strip()
    if not text.isdigit() or len(text) > _MAX_DIGITS:
        return MAX_OUTPUTS
    return min(int(text), MAX_OUTPUTS)


def stamp(headers: Mapping[str, str] | None, hop: int, budget: int) -> dict[str, str]:
    """`headers` plus `Cairn-Hops: hop` and `Cairn-Budget: budget` (any spelling replaced)."""
    out = {k: v for k, v in with_hops(headers, hop).items()
           if k.lower() != BUDGET_HEADER.lower()}
    out[BUDGET_HEADER] = str(budget)
    return out


@dataclass
class Allowance:
    """The output budget of one received message while its actions run: `left` messages
    may still be published for it, and each carries `child` on."""

    left: int
    child: int

    @classmethod
    def split(cls, budget: int, planned: int) -> Allowance:
        """`planned`: the actions about to run (a webhook counts: it may dead-letter)."""
        child = max(0, (budget - planned) // planned) if planned else 0
        return cls(budget, child)

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class PublishBudget:
    """A token bucket: `rate` tokens a second, at most `burst` saved up; one per publish.
    The clock is injectable (monotonic seconds)."""

    def __init__(self, rate: float = PUBLISH_RATE, burst: int = PUBLISH_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def fanout_warning(subject: str) -> str:
    """Written into a rule's row when publishes for one message went past MAX_OUTPUTS."""
    return (f"warning: a message on {subject} would have caused more than {MAX_OUTPUTS} "
            f"messages in all (the {BUDGET_HEADER} limit); the rest were not published: "
            "do rules fan out into each other?")


def throttle_warning() -> str:
    """Written into a rule's row when the tenant's bucket refused one of its publishes."""
    return (f"warning: this tenant's rules published more than {PUBLISH_RATE:g} messages/s "
            f"(bursts up to {PUBLISH_BURST}); publishes of this rule were dropped")
