"""Commands rows -> NATS requests to agents, results back on the row (SPEC §5).

Never twice: right before sending, the dispatcher writes the audit row `command.sent`
(target `commands/<id>`); a unique index lets only one dispatcher ever write it, so a
bridge restart or a second bridge cannot send a row again. Devices that do not answer a
presence probe keep their commands `queued`; the queue is drained, in creation order, when
the device shows up again (its heartbeat). Expired rows are never sent.

Commands run in the lanes' `commands` pool, never in the identity pool (a revocation must
not wait behind a hung `exec`): one at a time per device, in order; at most
PER_TENANT at once per tenant (each holds its slot until the reply or its timeout), and the
pool's own bound overall.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import datetime
from typing import Any

import nats

from cairn_common.pocketbase import PocketBase, PocketBaseError, pb_date
from pb_hooks_bridge import command_payloads
from pb_hooks_bridge.audit import AuditWriter
from pb_hooks_bridge.lanes import COMMANDS, Lanes
from pb_hooks_bridge.tenants import Tenants
from pb_hooks_bridge.writer import BatchWriter

log = logging.getLogger(__name__)

DEFAULT_TTL = 3600  # a row without expires_at expires one hour after it was created
PROBE_TIMEOUT = 2.0
PER_TENANT = 16  # commands in flight at once per tenant
IN_FLIGHT = 256  # commands in flight at once overall


def pb_now() -> str:
    return pb_date(time.time())


def history_refusal(exc: PocketBaseError) -> bool:
    """PocketBase refused a write that would rewrite a command's history
    (pb_hooks/commands.pb.js): the row finished before this write."""
    return exc.status == 400 and any(
        isinstance(v, dict) and v.get("code") == "cairn_command_history"
        for v in (exc.data or {}).values())


def parse_date(value: str) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CommandDispatcher:
    def __init__(self, pb: PocketBase, tenants: Tenants, audit: AuditWriter,
                 lanes: Lanes) -> None:
        self.pb = pb
        self.tenants = tenants
        self.audit = audit
        self.lanes = lanes
        self.writer = BatchWriter(pb)
        self.offline: set[str] = set()  # device ids whose last probe found nobody

    def submit(self, row_id: str, device_id: str, tenant_id: str = "") -> None:
        """Per device, in submission order: the queue is drained in creation order."""
        self.lanes.submit(f"device-commands:{device_id}", lambda: self.dispatch(row_id),
                          pool=COMMANDS, group=tenant_id)

    async def drain_queue(self, device_id: str) -> int:
        rows = await self.pb.list(
            "commands", filter=f'device = "{device_id}" && (status = "queued" || status = "")',
            sort="created", fields="id,device,tenant")
        for row in rows:
            self.submit(row["id"], device_id, row.get("tenant", ""))
        return len(rows)

    async def dispatch(self, row_id: str) -> str:
        try:
            row = await self.pb.get("commands", row_id, expand="device")
        except PocketBaseError as exc:
            if exc.status == 404:
                return "gone"
            raise
        if (row.get("status") or "queued") != "queued":
            return "not queued"
        if self._expired(row):
            await self._finish(row, "expired", error="expired before the device was reachable")
            return "expired"
        payload = row.get("payload") or {}
        problem = command_payloads.problem(row.get("command", ""), payload)
        device = (row.get("expand") or {}).get("device")
        if problem is None and device is None:
            problem = "the device no longer exists"
        elif problem is None and device.get("tenant") != row.get("tenant"):
            problem = "the device belongs to another tenant"
        elif problem is None and device.get("status") == "disabled":
            problem = "the device is disabled"
        if problem:
            await self._finish(row, "failed", error=problem)
            return "rejected"
        account = await self.tenants.account_for(row["tenant"])
        if account is None or not account.active:
            return "queued"  # tenant inactive: keep it until it comes back or expires
        code = device["code"]
        held = contextlib.AsyncExitStack()
        try:  # held until the reply: a renewal of the link never cuts a command short
            nc = await held.enter_async_context(
                self.tenants.links.hold(account.tenant_id, account.slug))
        except (LookupError, nats.errors.ConnectionClosedError) as exc:  # no link (yet)
            log.info("command kept queued: no link into its tenant yet",
                     extra={"id": row["id"], "error": str(exc)})
            return "queued"
        async with held:
            if not await self._present(nc, code):
                self.offline.add(device["id"])
                if not row.get("status"):  # PocketBase has no defaults: say it in the UI
                    await self.writer.update("commands", row["id"], {"status": "queued"})
                return "queued"
            if device["id"] in self.offline:
                # an earlier row of this device found nobody (its agent's heartbeat can come
                # before its command subscription answers) and stays queued: go through the
                # queue again in creation order, this row included, instead of overtaking
                # it and leaving it behind with nothing left to wake it
                self.offline.discard(device["id"])
                await self.drain_queue(device["id"])
                return "requeued"
            if not await self._claim(row, code):
                return "claimed elsewhere"
            return await self._send(nc, row, code, payload)

    async def _present(self, nc: Any, code: str) -> bool:
        try:
            await nc.request(f"agents.{code}.cmd.ping", b"{}", timeout=PROBE_TIMEOUT)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    async def _claim(self, row: dict[str, Any], code: str) -> bool:
        try:
            await self.pb.create("audit_log", {
                "tenant": row["tenant"], "actor": "bridge", "action": "command.sent",
                "target": f"commands/{row['id']}",
                "details": {"device": code, "command": row["command"],
                            "requested_by": row.get("requested_by", "")},
            })
        except PocketBaseError as exc:
            if exc.status == 400:  # the unique claim exists: sent before, never again
                return False
            raise
        await self.pb.update("commands", row["id"], {"status": "sent", "sent_at": pb_now()})
        return True

    async def _send(self, nc: Any, row: dict[str, Any], code: str,
                    payload: dict[str, Any]) -> str:
        command = row["command"]
        timeout = command_payloads.reply_timeout(command, payload)
        started = time.perf_counter()
        try:
            msg = await nc.request(f"agents.{code}.cmd.{command}",
                                   json.dumps(payload).encode(), timeout=timeout)
        except nats.errors.NoRespondersError:
            await self._finish(row, "failed", error="the device went offline before "
                               "delivery; the command was not run")
            return "failed"
        except nats.errors.TimeoutError:
            await self._finish(row, "failed", started=started,
                               error=f"no reply within {timeout:.0f} s: outcome unknown")
            return "failed"
        try:
            reply = json.loads(msg.data)
        except ValueError:
            reply = {"status": "error", "error": "the agent's reply was not JSON",
                     "raw": msg.data[:2000].decode(errors="replace")}
        outcome = "failed" if not isinstance(reply, dict) or reply.get(
            "status") == "error" else "succeeded"
        await self._finish(row, outcome, response=reply, started=started,
                           error=reply.get("error", "") if isinstance(reply, dict) else "")
        return outcome

    async def _finish(self, row: dict[str, Any], status: str, error: str = "",
                      response: Any = None, started: float | None = None) -> None:
        patch: dict[str, Any] = {"status": status, "completed_at": pb_now(),
                                 "error": error[:2000]}
        if response is not None:
            patch["response"] = response
        if started is not None:
            patch["duration_ms"] = round((time.perf_counter() - started) * 1000)
        try:
            await self.writer.update("commands", row["id"], patch)
        except PocketBaseError as exc:
            if not history_refusal(exc):
                raise
            # finished meanwhile (another path, another bridge): the first outcome stands
            log.info("command already finished", extra={"id": row["id"], "status": status,
                                                        "error": str(exc)})
            return
        self.audit.record(f"command.{status}", row.get("tenant"), f"commands/{row['id']}",
                          {"command": row.get("command"), "device": row.get("device"),
                           "requested_by": row.get("requested_by", ""), "error": error})
        log.info("command finished", extra={"id": row["id"], "command": row.get("command"),
                                            "status": status})

    def _expired(self, row: dict[str, Any]) -> bool:
        deadline = parse_date(row.get("expires_at", ""))
        if deadline is None:
            created = parse_date(row.get("created", "")) or time.time()
            deadline = created + DEFAULT_TTL
        return time.time() >= deadline

    async def give_up_on_sent(self, before: float) -> int:
        """At start: a `sent` row from before this process began has no waiter any more."""
        stamp = pb_date(before)
        rows = await self.pb.list("commands",
                                  filter=f'status = "sent" && sent_at < "{stamp}"')
        for row in rows:
            await self._finish_quietly(row, "failed", "outcome unknown: the bridge restarted "
                                       "while waiting for the reply (not re-sent)")
        return len(rows)

    async def sweep(self) -> dict[str, int]:
        """Expire queued rows past their deadline; fail `sent` rows whose reply can no longer
        come (the bridge that sent them stopped): never re-sent."""
        counts = {"expired": 0, "unknown": 0}
        queued = await self.pb.list("commands", filter='status = "queued" || status = ""',
                                    fields="id,device,tenant,command,created,expires_at,"
                                           "requested_by,status")
        for row in queued:
            if self._expired(row):
                if await self._finish_quietly(row, "expired",
                                              "expired before the device was reachable"):
                    counts["expired"] += 1
        sent = await self.pb.list("commands", filter='status = "sent"')
        for row in sent:
            started = parse_date(row.get("sent_at", "")) or 0
            waited = command_payloads.reply_timeout(row["command"], row.get("payload") or {})
            # no waiter in any live bridge can be older than its own reply timeout
            if time.time() - started > waited + 30:
                if await self._finish_quietly(row, "failed", "outcome unknown: the bridge "
                                              "stopped while waiting for the reply (not "
                                              "re-sent)"):
                    counts["unknown"] += 1
        return counts

    async def _finish_quietly(self, row: dict[str, Any], status: str, error: str) -> bool:
        """One row of a sweep: its failure is logged and never ends the sweep (the next
        sweep tries again)."""
        try:
            await self._finish(row, status, error=error)
            return True
        except PocketBaseError as exc:
            log.warning("command not finished by the sweep", extra={
                "id": row.get("id"), "status": status, "error": str(exc)})
            return False
