"""Per-rule, per-subject firing windows.

The key is `(rule.id, concrete subject)`: a rule on `agents.*.telemetry.system` fires at
most once per window for each device, independently. The window opens when a firing is
allowed (not at every match), so a condition that stays true fires once per window.
Rule ids are `<source>#<index>`, so editing a row keeps its windows. The clock is
injectable (monotonic seconds); expired keys are pruned as the table grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Throttle:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 prune_every: int = 1024) -> None:
        self._clock = clock
        self._until: dict[Hashable, float] = {}
        self._prune_every = prune_every
        self._since_prune = 0

    def allow(self, key: Hashable, window: float | None) -> bool:
        """True (and the window starts now) when `key` has not fired within `window`
        seconds; False while its window is open. A window of None or 0 always allows."""
        if not window:
            return True
        now = self._clock()
        until = self._until.get(key)
        if until is not None and now < until:
            return False
        self._until[key] = now + window
        self._since_prune += 1
        if self._since_prune >= self._prune_every:
            self.prune(now)
        return True

    def prune(self, now: float | None = None) -> int:
        """Forget closed windows; return how many were dropped."""
        now = self._clock() if now is None else now
        expired = [k for k, until in self._until.items() if until <= now]
        for key in expired:
            del self._until[key]
        self._since_prune = 0
        return len(expired)

    def forget(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drop the windows whose key satisfies `predicate` (e.g. of a deleted row)."""
        for key in [k for k in self._until if predicate(k)]:
            del self._until[key]

    def __len__(self) -> int:
        return len(self._until)
