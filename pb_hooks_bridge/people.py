"""People on the bus: `person_keys` rows -> user JWTs with the permissions of the membership.

A person registers the public key of an nkey they made (`cairn login`, the dashboard); the
bridge signs a JWT in the tenant's account with the role of their membership and a short
lifetime (CAIRN_PERSON_JWT_TTL, 12 h). A login is a session: it is never renewed by the
bridge, and a role change re-signs it with the same end. Removing the membership, disabling
the user, deactivating the tenant or deleting the row (logging out) revokes the key; a row
revoked once stays dead (`error` starts with "revoked:") and the person logs in again.

Caches: the rows seen (so a membership's removal finds its keys after PocketBase has
cascade-deleted them), memberships and the disabled users. Each row is handled in its lane
(`person_keys:<id>`); a membership or user change re-queues the rows it touches there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cairn_common import natsjwt, nkey
from cairn_common.natsauth import history_subject, person_inbox
from cairn_common.pocketbase import PocketBase, PocketBaseError, pb_date
from pb_hooks_bridge import metrics
from pb_hooks_bridge.accounts import ALL_USERS, Account
from pb_hooks_bridge.identities import Identities, granted_role
from pb_hooks_bridge.permissions import Permissions

log = logging.getLogger(__name__)

DEAD = "revoked: "  # error prefix of a row whose key was revoked for good
MAX_KEYS_PER_MEMBERSHIP = 10  # live logins of one person in one tenant

# What a person may do on NATS, by membership role. Nobody publishes JetStream API requests
# (a publisher picks the reply subject the server writes stored messages into; see the
# `viewer` role in pb_migrations/1764000003_security.js): people follow live telemetry,
# heartbeats and alerts with plain subscriptions, and replies come to their own inbox.
READS = ["agents.*.telemetry.>", "agents.*.heartbeat", "alerts.>"]
COMMANDS = ["agents.*.cmd.>"]
PERSON_ROLES = {"owner": COMMANDS, "admin": COMMANDS, "operator": COMMANDS, "viewer": []}


def person_permissions(role: str, user_id: str) -> Permissions:
    """The literal permissions of a membership role (KeyError for an unknown role)."""
    # history asks carry the person's own id: answered by the bridge to their inbox only,
    # and counted against them, never against a colleague (history.py)
    publish = [*PERSON_ROLES[role], history_subject(user_id)]
    return Permissions(pub_allow=publish, pub_deny=[],
                       sub_allow=[*READS, f"{person_inbox(user_id)}.>"], sub_deny=[],
                       allow_responses=False)


class PersonBook:
    """What the bridge knows of people: rows, memberships, disabled users."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}  # person_keys id -> row
        self.memberships: dict[str, dict[str, Any]] = {}  # id -> row
        self.gone_memberships: set[str] = set()
        self.disabled: set[str] = set()  # user ids

    def rows_where(self, field: str, value: str) -> list[dict[str, Any]]:
        return [row for row in self.keys.values() if row.get(field) == value]

    def live_logins(self, membership_id: str, but: str) -> int:
        return sum(1 for row in self.keys.values()
                   if row.get("membership") == membership_id and row["id"] != but
                   and row.get("jwt") and not str(row.get("error", "")).startswith(DEAD))


class People:
    def __init__(self, pb: PocketBase, identities: Identities, ttl: int) -> None:
        self.pb = pb
        self.identities = identities
        self.ttl = ttl
        self.book = PersonBook()
        self.requeue: Callable[[dict[str, Any]], None] | None = None  # row -> its lane
        self._events: dict[str, float] = {}  # membership or user id -> last event (monotonic)

    # -- caches fed by events and reconciliation --------------------------------------

    def load(self, memberships: list[dict[str, Any]], disabled: list[str],
             listed_at: float) -> None:
        """Replace the caches with listings begun at `listed_at` (time.monotonic()); what a
        live event changed since is newer than the listing and stays."""
        book = self.book
        fresh = {row["id"]: row for row in memberships if row["id"] not in book.gone_memberships}
        off = set(disabled)
        for row_id, when in self._events.items():
            if when < listed_at:
                continue
            if row_id in book.memberships:
                fresh[row_id] = book.memberships[row_id]
            elif row_id in fresh and row_id in book.gone_memberships:
                fresh.pop(row_id)
            if row_id in book.disabled:
                off.add(row_id)
            else:
                off.discard(row_id)
        # what changed while no event told us (a gap in the realtime stream): those rows
        # go through their lanes again
        touched = {m for m, row in book.memberships.items()
                   if m not in fresh or fresh[m].get("role") != row.get("role")}
        newly_off = off - book.disabled
        book.memberships, book.disabled = fresh, off
        self._events = {k: v for k, v in self._events.items() if v >= listed_at}
        self._requeue([row for row in book.keys.values()
                       if row.get("membership") in touched or row.get("user") in newly_off
                       or (row.get("membership") not in fresh and row.get("jwt"))])

    def membership_changed(self, row: dict[str, Any], deleted: bool) -> None:
        self._events[row["id"]] = time.monotonic()
        before = self.book.memberships.get(row["id"])
        if deleted:
            self.book.memberships.pop(row["id"], None)
            self.book.gone_memberships.add(row["id"])
        else:
            self.book.memberships[row["id"]] = row
            if before is not None and before.get("role") == row.get("role"):
                return
        self._requeue(self.book.rows_where("membership", row["id"]))

    def user_changed(self, row: dict[str, Any], deleted: bool) -> None:
        self._events[row["id"]] = time.monotonic()
        was = row["id"] in self.book.disabled
        if deleted or row.get("disabled"):
            self.book.disabled.add(row["id"])
        else:
            self.book.disabled.discard(row["id"])
        if was != (row["id"] in self.book.disabled):
            self._requeue(self.book.rows_where("user", row["id"]))

    def _requeue(self, rows: list[dict[str, Any]]) -> None:
        if self.requeue is not None:
            for row in rows:
                self.requeue(row)

    def is_legit(self, row: dict[str, Any]) -> bool:
        """A row whose key may hold a JWT now (for the reconciler's ledger)."""
        return bool(row.get("jwt")) and not str(row.get("error", "")).startswith(DEAD)

    # -- one row ----------------------------------------------------------------------

    async def sync(self, account: Account, row: dict[str, Any], deleted: bool = False) -> str:
        target = f"person_keys/{row['id']}"
        known = self.book.keys.get(row["id"], {})
        if deleted:
            self.book.keys.pop(row["id"], None)
            return await self._revoke_row(account, {**known, **row}, target,
                                          "logged out (row deleted)")
        self.book.keys[row["id"]] = row  # before any check: a later change re-queues it
        if str(row.get("error", "")).startswith(DEAD):
            return "unchanged"
        problem = await self._refusal(account, row)
        if problem is not None:
            changed = await self._revoke_row(account, row, target, problem)
            await self._write(row, {"jwt": "", "error": DEAD + problem})
            return "revoked" if changed else "unchanged"
        membership = self.book.memberships[row["membership"]]
        role = str(membership.get("role") or "")
        if role not in PERSON_ROLES:
            await self._write(row, {"error": f"membership role {role!r} is not a Cairn role"})
            return "error"
        try:
            nkey.check_public(row.get("public_key"), "user")
        except nkey.NkeyError as exc:
            await self._write(row, {"error": f"public_key: {exc}"})
            return "error"
        perms = person_permissions(role, row["user"])
        grant = self.identities.current_grant(account, row.get("jwt") or "")
        if grant is not None and grant.get("iat", 0) <= account.revocations.get(ALL_USERS, -1):
            grant = None
        if grant is None and row.get("jwt"):
            return await self._dead(account, row, target, "the JWT is no longer valid")
        if grant is None and self.book.live_logins(row["membership"], row["id"]) >= \
                MAX_KEYS_PER_MEMBERSHIP:
            await self._write(row, {"error": f"more than {MAX_KEYS_PER_MEMBERSHIP} logins in "
                                             "this tenant: log out elsewhere (delete older "
                                             "person_keys rows) and log in again"})
            return "error"
        if grant is not None and _same(grant, row["public_key"], perms, role):
            return "unchanged"
        ends = int(grant["exp"]) if grant and grant.get("exp") else int(time.time()) + self.ttl
        if grant is not None and int(grant.get("exp") or 0) > time.time():  # a role change
            await self.identities.revoke(account, {grant["sub"]: int(grant.get("iat", 0))},
                                         "person", target, f"role changed to {role}")
        if ends <= time.time() + 1:
            return await self._dead(account, row, target, "expired: log in again")
        token, expires = await self.identities.sign(
            account, row["public_key"], f"person {row['user']} {row.get('label') or ''}".strip(),
            perms, None, role, expires_at=ends)
        if not await self._write(row, {"jwt": token, "jwt_expires": pb_date(expires or ends),
                                       "role": role, "error": ""}):
            return "gone"  # logged out meanwhile: the JWT never left this process
        metrics.ISSUED.labels("person").inc()
        self.identities.audit.record("user.issued", account.tenant_id, target, {
            "public_key": row["public_key"], "kind": "person", "user": row["user"],
            "membership": row["membership"], "role": role, "expires": expires,
            "reason": "role changed" if grant else "login"})
        return "issued"

    async def _refusal(self, account: Account, row: dict[str, Any]) -> str | None:
        """Why this row may hold no JWT, or None."""
        membership = await self._membership(row.get("membership", ""))
        if membership is None:
            return "membership removed"
        if membership.get("user") != row.get("user") or \
                membership.get("tenant") != row.get("tenant"):
            return "the membership is another person's or another tenant's"
        if row.get("user") in self.book.disabled:
            return "user disabled"
        if not account.active:
            return "tenant inactive"
        return None

    async def _membership(self, membership_id: str) -> dict[str, Any] | None:
        if membership_id in self.book.memberships:
            return self.book.memberships[membership_id]
        if not membership_id or membership_id in self.book.gone_memberships:
            return None
        try:
            row = await self.pb.get("memberships", membership_id)
        except PocketBaseError as exc:
            if exc.status == 404:
                return None
            raise
        if membership_id not in self.book.gone_memberships:  # (deleted while we asked)
            self.book.memberships[membership_id] = row
        return self.book.memberships.get(membership_id)

    async def _dead(self, account: Account, row: dict[str, Any], target: str,
                    why: str) -> str:
        await self._revoke_row(account, row, target, why)
        await self._write(row, {"jwt": "", "error": DEAD + why})
        return "revoked"

    async def _revoke_row(self, account: Account, row: dict[str, Any], target: str,
                          reason: str) -> bool:
        """Revoke the row's key (every JWT of it issued so far), and the key of the JWT on
        the row: a write whose outcome was unknown may have handed out a JWT the row does
        not show. A dead row was revoked already; an expired session needs nothing."""
        if str(row.get("error", "")).startswith(DEAD):
            return False
        keys = {}
        expires = _epoch(row.get("jwt_expires") or "")
        if row.get("public_key") and (expires is None or expires > time.time()):
            keys[row["public_key"]] = 0
        grant = self.identities.current_grant(account, row.get("jwt") or "")
        if grant is not None and int(grant.get("exp") or 0) > time.time():
            keys[grant["sub"]] = max(keys.get(grant["sub"], 0), int(grant.get("iat", 0)))
        if not keys:
            return False
        return await self.identities.revoke(account, keys, "person", target, reason)

    async def _write(self, row: dict[str, Any], patch: dict[str, Any]) -> bool:
        """False when the row is gone (its delete event does the rest)."""
        if all(row.get(k, "") == v for k, v in patch.items()):
            return True
        try:
            await self.identities.writer.update("person_keys", row["id"], patch)
        except PocketBaseError as exc:
            if exc.status == 404:
                return False
            raise
        row.update(patch)
        if patch.get("error"):
            metrics.ROW_ERRORS.labels("person_keys").inc()
            log.info("person key refused", extra={"id": row["id"], "error": patch["error"]})
        return True


def _epoch(stamp: str) -> float | None:
    """A PocketBase date as epoch seconds (None when empty or unreadable)."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp \
            else None
    except ValueError:
        return None


def _same(grant: dict[str, Any], public_key: str, perms: Permissions, role: str) -> bool:
    """The JWT is for this key, with these permissions and role."""
    nats = grant.get("nats", {})
    wanted = natsjwt.user_claims(
        public_key, "", pub_allow=perms.pub_allow, pub_deny=perms.pub_deny,
        sub_allow=perms.sub_allow, sub_deny=perms.sub_deny,
        allow_responses=perms.allow_responses)["nats"]
    return (grant.get("sub") == public_key and granted_role(grant) == role
            and all(nats.get(k) == wanted.get(k) for k in ("pub", "sub", "resp")))
