"""Where rules come from: the `rules` collection (validation written back to the row) or,
for development, a directory of YAML files. Both hand per-tenant rule lists to the app;
an edit that breaks a valid rule keeps the last good version running and says so.

Warnings (a rule that publishes where it listens, found at validation; messages at the hop
limit or publishes past a fan-out bound, reported by the tenant runtime) go to the row's
`error` with `status` left `valid`, or to the log for files.

A row is validated as its tenant's: `${NAME}` and webhook allow entries scoped to the
tenant's slug (`slug:NAME`) count for it, and for no other tenant. Files apply to every
tenant, so only bare entries count for them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cairn_common.pocketbase import PocketBase, PocketBaseError
from rule_router import metrics
from rule_router.errors import RuleError
from rule_router.model import Rule
from rule_router.parse import parse_rules

log = logging.getLogger(__name__)

WARN_EVERY = 60.0  # seconds: a row's runtime warning is written at most this often

SlugOf = Callable[[str], Awaitable[str | None]]  # tenant id -> slug (None: unknown)


def warning_text(rules: list[Rule]) -> str:
    """The row's `error` for a valid row: its rules' warnings, or empty."""
    return "; ".join(w.row_message for r in rules for w in r.warnings)


class RowRules:
    """rules rows -> {tenant id: {row id: [Rule]}} of the last valid enabled versions.
    `slug_of` names a row's tenant for its scoped allow entries (None: bare ones only)."""

    def __init__(self, pb: PocketBase, on_change: Callable[[str], None],
                 slug_of: SlugOf | None = None) -> None:
        self.pb = pb
        self.on_change = on_change
        self.slug_of = slug_of
        self.good: dict[str, dict[str, list[Rule]]] = {}
        # row id -> (yaml, enabled, tenant slug) applied: a new slug validates anew
        self.seen: dict[str, tuple[str, bool, str | None]] = {}
        self.invalid: set[str] = set()
        self.warned: dict[str, tuple[float, str]] = {}  # row id -> (when, runtime warning)

    def rules_for(self, tenant_id: str) -> dict[str, list[Rule]]:
        return dict(self.good.get(tenant_id, {}))

    async def load_all(self) -> None:
        rows = await self.pb.list("rules")
        live = {row["id"] for row in rows}
        for tenant_id, by_row in list(self.good.items()):
            for row_id in [r for r in by_row if r not in live]:
                del by_row[row_id]
                self.on_change(tenant_id)
        self.seen = {k: v for k, v in self.seen.items() if k in live}
        for row in rows:
            await self.apply(row)

    async def apply(self, row: dict[str, Any], deleted: bool = False) -> None:
        tenant_id, row_id = row.get("tenant", ""), row["id"]
        by_row = self.good.setdefault(tenant_id, {})
        if deleted:
            self.seen.pop(row_id, None)
            self.invalid.discard(row_id)
            self.warned.pop(row_id, None)
            if by_row.pop(row_id, None) is not None:
                self.on_change(tenant_id)
            self._gauge()
            return
        text, enabled = row.get("yaml") or "", bool(row.get("enabled"))
        slug = await self.slug_of(tenant_id) if self.slug_of and tenant_id else None
        if self.seen.get(row_id) == (text, enabled, slug):
            return  # our own status write coming back, or nothing that matters changed
        self.seen[row_id] = (text, enabled, slug)
        try:
            rules = parse_rules(text, source=row_id, tenant=slug)
        except RuleError as exc:
            self.invalid.add(row_id)
            kept = " The last valid version stays active." if row_id in by_row else ""
            await self._report(row, "invalid", exc.row_message + kept)
            self._gauge()
            return
        self.invalid.discard(row_id)
        self.warned.pop(row_id, None)
        await self._report(row, "valid", warning_text(rules))
        if enabled:
            by_row[row_id] = rules
        else:
            by_row.pop(row_id, None)
        self.on_change(tenant_id)
        self._gauge()

    async def suspend(self, row_id: str, reason: str) -> None:
        """Take a row's rules out until the row is edited (or disabled and enabled)."""
        for tenant_id, by_row in self.good.items():
            if by_row.pop(row_id, None) is not None:
                self.on_change(tenant_id)
                break
        else:
            return
        self.invalid.add(row_id)
        self._gauge()
        log.error("rule suspended", extra={"rule": row_id, "error": reason})
        await self._report({"id": row_id}, "invalid", reason)

    async def warn(self, row_id: str, message: str) -> None:
        """A runtime warning into a running row's `error`; `status` stays `valid`. The same
        warning is written at most once per WARN_EVERY (a loop repeats it all the time)."""
        rules = next((by_row[row_id] for by_row in self.good.values() if row_id in by_row),
                     None)
        if rules is None or row_id in self.invalid:
            return  # gone, or the row shows why it is invalid: that message stays
        now, last = time.monotonic(), self.warned.get(row_id)
        if last is not None and last[1] == message and now - last[0] < WARN_EVERY:
            return
        self.warned[row_id] = (now, message)
        text = "; ".join(t for t in (warning_text(rules), message) if t)  # validation's first
        await self._report({"id": row_id}, "valid", text)

    async def _report(self, row: dict[str, Any], status: str, error: str) -> None:
        if row.get("status") == status and (row.get("error") or "") == error:
            return
        for attempt in range(3):
            try:
                await self.pb.update("rules", row["id"], {"status": status, "error": error})
                return
            except PocketBaseError as exc:
                if exc.status == 404:
                    return  # deleted meanwhile
                await asyncio.sleep(0.2 * 2**attempt)
                failure = exc
        self.seen.pop(row["id"], None)  # not reported: the next event or resync tries again
        log.warning("could not write the rule's status", extra={"rule": row["id"],
                                                                "error": str(failure)})

    def _gauge(self) -> None:
        metrics.RULES_INVALID.set(len(self.invalid))


class DirRules:
    """*.yaml files in a directory (development): they apply to every tenant, and are
    reloaded when a file changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stamps: dict[Path, float] = {}
        self.good: dict[str, list[Rule]] = {}

    def reload(self) -> bool:
        """Re-read changed files; True when the active rules changed."""
        files = {p: p.stat().st_mtime for p in sorted(self.directory.glob("*.yaml"))}
        if files == self.stamps:
            return False
        changed = False
        for path in [p for p in self.good if Path(p) not in files]:
            del self.good[path]
            changed = True
        for path, stamp in files.items():
            if self.stamps.get(path) == stamp:
                continue
            try:
                self.good[str(path)] = rules = parse_rules(path.read_text(), source=path.name)
                changed = True
                for warning in (w for r in rules for w in r.warnings):
                    log.warning("rules file loaded with a warning",
                                extra={"file": f"{path}:{warning.line}",
                                       "error": warning.message})
            except (RuleError, OSError) as exc:
                where = f"{path}:{exc.line}" if isinstance(exc, RuleError) else str(path)
                log.error("rules file not loaded; the last valid version stays active",
                          extra={"file": where, "error": str(exc)})
        self.stamps = files
        return changed

    def warn(self, source: str, message: str) -> bool:
        """Log a runtime warning for a file's rule; False if not one of ours."""
        if not any(rules and rules[0].source == source for rules in self.good.values()):
            return False
        log.warning("rules file warning", extra={"file": source, "error": message})
        return True

    def suspend(self, source: str, reason: str) -> bool:
        """Take a file's rules out until the file changes; False if not one of ours."""
        for key, rules in self.good.items():
            if rules and rules[0].source == source:
                del self.good[key]
                log.error("rules file suspended", extra={"file": key, "error": reason})
                return True
        return False
