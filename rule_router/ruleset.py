"""An immutable set of rules with its subject index: swapped whole, never edited, so no
message is ever evaluated against half a rule set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rule_router.model import Rule
from rule_router.subjects import SubjectIndex, subject_matches

TELEMETRY = "agents.*.telemetry.>"
MAX_EXACT = 32


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    index: SubjectIndex[Rule] = field(default_factory=SubjectIndex)

    @classmethod
    def build(cls, by_source: Mapping[str, list[Rule]]) -> RuleSet:
        rules = tuple(rule for source in sorted(by_source) for rule in by_source[source])
        return cls(rules, SubjectIndex(rules))

    def core_filters(self) -> set[str]:
        """Subjects to follow with core subscriptions (everything but telemetry's part).

        Each subscription costs a queue and a task in nats-py, so past MAX_EXACT filters
        they are folded into one `<first token>.>` per first token: the subject index still
        decides which rules a message meets, and a message that meets none costs a lookup.
        """
        exact = {r.subject for r in self.rules if not _only_telemetry(r.subject)}
        if len(exact) <= MAX_EXACT:
            return exact
        return {">" if f.split(".", 1)[0] in ("*", ">") else f.split(".", 1)[0] + ".>"
                for f in exact}


def _only_telemetry(filter_: str) -> bool:
    return subject_matches(TELEMETRY, filter_.replace("*", "x").replace(">", "x.y"))
