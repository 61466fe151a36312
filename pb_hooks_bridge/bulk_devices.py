"""`cairn-bridge devices-bulk`: create many device rows in one tenant, each with its own
enrollment secret, through PocketBase's batch API, and hand the secrets to the installer as
a 0600 CSV (`code,secret,tenant`).

- Superuser only (the bridge's login): a tenant admin cannot use it to reach another tenant,
  and the batch API itself refuses non-superusers nothing that API rules would not.
- A batch is one transaction, and PocketBase bcrypt-hashes every password inside it, one
  after another (docs/decisions/0005): chunks go out with a small bounded concurrency.
- Idempotent-ish: codes that already exist are reported and skipped (their secrets are not
  known here and are not changed); a code created by someone else mid-run is skipped too.
- A failure part-way still writes the CSV of the rows created so far (their secrets exist
  nowhere else), then reports the error.
- Secrets never reach a log line or the progress output.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn_common.pocketbase import PocketBase, PocketBaseError
from pb_hooks_bridge.errors import BridgeError

CODE_PATTERN = re.compile(r"^[a-z0-9-]{3,64}$")
PREFIX_PATTERN = re.compile(r"^[a-z0-9-]{1,58}$")  # + "-00001" stays within 64 characters
MAX_COUNT = 100_000
DEFAULT_CHUNK = 50
DEFAULT_CONCURRENCY = 2
LOOKUP_CHUNK = 80  # codes per "which of these exist?" query (keeps the URL short)
BATCH_SETTINGS = {"enabled": True, "maxRequests": 200, "timeout": 10}  # as the bridge sets
RECORDS = "/api/collections/devices/records"


class BulkError(BridgeError):
    """Bad input or a refusal; the message says what to change."""


@dataclass(frozen=True)
class BulkRequest:
    tenant: str  # slug
    codes: list[str]
    out: Path
    force: bool = False
    name_prefix: str = ""
    chunk: int = DEFAULT_CHUNK
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class Created:
    code: str
    secret: str = field(repr=False)
    record_id: str


@dataclass
class BulkResult:
    tenant: str
    created: list[Created] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already existed (in this tenant)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.created) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (f"tenant {self.tenant}: created {len(self.created)} devices in "
                f"{self.seconds:.1f} s ({self.rate:.0f}/s), skipped {len(self.skipped)} "
                "existing")
        if self.skipped:
            text += f" (e.g. {', '.join(self.skipped[:3])})"
        return text


# -- input ----------------------------------------------------------------------------------

def check_count(count: int) -> None:
    if not 1 <= count <= MAX_COUNT:
        raise BulkError(f"--count must be between 1 and {MAX_COUNT} (got {count})")


def codes_from_prefix(prefix: str, count: int) -> list[str]:
    """`P-00001` ... `P-<count>` (five digits, more when count needs them)."""
    check_count(count)
    if not PREFIX_PATTERN.match(prefix):
        raise BulkError(f"--prefix {prefix!r} must match [a-z0-9-]{{1,58}} (device codes are "
                        "[a-z0-9-]{3,64})")
    return [f"{prefix}-{i:05d}" for i in range(1, count + 1)]


def codes_from_file(path: Path) -> list[str]:
    """One code per line; blank lines and `#` comments are ignored."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BulkError(f"cannot read --codes {path}: {exc.strerror or exc}") from exc
    codes = [line.strip() for line in text.splitlines()]
    codes = [c for c in codes if c and not c.startswith("#")]
    if not 1 <= len(codes) <= MAX_COUNT:
        raise BulkError(f"--codes {path} lists {len(codes)} codes; it must list between 1 "
                        f"and {MAX_COUNT}")
    return codes


def check_codes(codes: list[str]) -> None:
    bad = [c for c in codes if not CODE_PATTERN.match(c)]
    if bad:
        shown = ", ".join(repr(c[:70]) for c in bad[:3])
        raise BulkError(f"{len(bad)} code(s) do not match [a-z0-9-]{{3,64}}: {shown}")
    seen: set[str] = set()
    twice: list[str] = []
    for code in codes:
        (twice.append if code in seen else seen.add)(code)
    if twice:
        raise BulkError(f"code(s) listed twice: {', '.join(twice[:3])}")


def check_out(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise BulkError(f"{path} exists; refusing to overwrite it (it may hold the only copy "
                        "of other devices' secrets): choose another --out or pass --force")
    if not path.parent.is_dir():
        raise BulkError(f"directory {path.parent} does not exist")


# -- output ---------------------------------------------------------------------------------

def write_csv(path: Path, tenant: str, rows: list[Created], force: bool) -> None:
    """0600 from the first byte, complete or absent (a temp file, fsynced, then renamed; a
    hard link when not forced, so an existing file is never replaced)."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["code", "secret", "tenant"])
    out.writerows([r.code, r.secret, tenant] for r in rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(buf.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise BulkError(f"{path} appeared while devices were being created; their "
                                f"secrets are in {tmp} (0600): move it somewhere safe") from None
            os.unlink(tmp)
    except BaseException as exc:
        if not isinstance(exc, BulkError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


# -- PocketBase -----------------------------------------------------------------------------

Progress = Callable[[int, int, int, float], None]  # created, skipped, total, seconds


async def batch_limit(pb: PocketBase) -> int:
    """Requests per batch; turns the batch API on (as the bridge does) when it is off.
    Also the superuser check: only a superuser may read the settings."""
    try:
        settings = await pb._send("GET", "/api/settings")
    except PocketBaseError as exc:
        if exc.status in (401, 403):
            raise BulkError("devices-bulk needs the PocketBase superuser login (a tenant "
                            "member, even an owner, may not create devices in bulk)") from exc
        raise
    batch = settings.get("batch") or {}
    if batch.get("enabled") and int(batch.get("maxRequests") or 0) > 0:
        return int(batch["maxRequests"])
    print("note: PocketBase's batch API was off; turned it on (as cairn-bridge run does)",
          file=sys.stderr)
    await pb.update_settings({"batch": BATCH_SETTINGS})
    return int(BATCH_SETTINGS["maxRequests"])


async def find_tenant(pb: PocketBase, slug: str) -> dict[str, Any]:
    tenant = await pb.first("tenants", f"slug = {json.dumps(slug)}")
    if tenant is None:
        raise BulkError(f"no tenant with slug {slug!r} (create it first, in the Admin UI or "
                        "with POST /api/collections/tenants/records)")
    return tenant


async def existing_codes(pb: PocketBase, tenant_id: str, codes: list[str]) -> set[str]:
    """The codes the tenant already has (codes are unique per tenant, not across tenants)."""
    found: set[str] = set()
    for i in range(0, len(codes), LOOKUP_CHUNK):
        part = codes[i:i + LOOKUP_CHUNK]
        either = " || ".join(f"code = {json.dumps(c)}" for c in part)
        query = f"tenant = {json.dumps(tenant_id)} && ({either})"
        found.update(row["code"] for row in await pb.list("devices", filter=query,
                                                          fields="code"))
    return found


def _create_request(tenant_id: str, code: str, secret: str, name_prefix: str) -> dict:
    body = {"tenant": tenant_id, "code": code, "status": "pending", "password": secret,
            "passwordConfirm": secret}
    if name_prefix:
        body["name"] = f"{name_prefix}{code}"[:200]
    return {"method": "POST", "url": f"{RECORDS}?fields=id,code", "body": body}


def _failed_index(exc: PocketBaseError, count: int) -> tuple[int | None, bool]:
    """(index PocketBase names as failed, whether it failed because its code exists)."""
    requests = exc.data.get("requests") if isinstance(exc.data, dict) else None
    if not isinstance(requests, dict) or len(requests) != 1:
        return None, False
    (key, detail), = requests.items()
    if not str(key).isdigit() or not 0 <= int(key) < count:
        return None, False
    response = detail.get("response") if isinstance(detail, dict) else None
    data = response.get("data") if isinstance(response, dict) else None
    code_error = data.get("code") if isinstance(data, dict) else None
    duplicate = isinstance(code_error, dict) and code_error.get("code") == "validation_not_unique"
    return int(key), duplicate


async def _create_chunk(pb: PocketBase, tenant_id: str, codes: list[str], name_prefix: str,
                        result: BulkResult) -> None:
    pending = [(c, secrets.token_urlsafe(24)) for c in codes]
    while pending:
        requests = [_create_request(tenant_id, c, s, name_prefix) for c, s in pending]
        try:
            replies = await pb.batch(requests)
        except PocketBaseError as exc:
            index, duplicate = _failed_index(exc, len(pending))
            if index is None or not duplicate:
                raise BulkError(f"PocketBase refused a batch of {len(pending)} device rows "
                                f"(first code {pending[0][0]}): {exc}") from exc
            result.skipped.append(pending.pop(index)[0])  # created by someone else meanwhile
            continue  # the transaction rolled back: the others go again
        for (code, secret), reply in zip(pending, replies, strict=True):
            result.created.append(Created(code, secret, (reply.get("body") or {}).get("id", "")))
        return


async def create_devices(pb: PocketBase, req: BulkRequest,
                         progress: Progress | None = None) -> BulkResult:
    """Create the rows (pb must be authenticated as a superuser) and write the CSV."""
    check_codes(req.codes)
    check_out(req.out, req.force)
    limit = await batch_limit(pb)
    chunk = max(1, min(req.chunk, limit))
    tenant = await find_tenant(pb, req.tenant)
    result = BulkResult(req.tenant)
    found = await existing_codes(pb, tenant["id"], req.codes)
    result.skipped = [c for c in req.codes if c in found]
    todo = [c for c in req.codes if c not in found]
    total = len(req.codes)
    gate = asyncio.Semaphore(max(1, req.concurrency))
    t0 = time.perf_counter()

    async def one(part: list[str]) -> None:
        async with gate:
            await _create_chunk(pb, tenant["id"], part, req.name_prefix, result)
            if progress is not None:
                progress(len(result.created), len(result.skipped),
                         total, time.perf_counter() - t0)

    tasks = [asyncio.create_task(one(todo[i:i + chunk])) for i in range(0, len(todo), chunk)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.seconds = time.perf_counter() - t0
        _in_request_order(result, req.codes)
        if result.created:  # their secrets exist nowhere else
            await asyncio.to_thread(write_csv, req.out, req.tenant, result.created, req.force)
            print(f"partial: the {len(result.created)} devices created so far are in "
                  f"{req.out}", file=sys.stderr)
        raise
    result.seconds = time.perf_counter() - t0
    _in_request_order(result, req.codes)
    await asyncio.to_thread(write_csv, req.out, req.tenant, result.created, req.force)
    return result


def _in_request_order(result: BulkResult, codes: list[str]) -> None:
    """Chunks finish in any order (they run side by side): the CSV lists the codes as asked."""
    place = {code: i for i, code in enumerate(codes)}
    result.created.sort(key=lambda row: place.get(row.code, len(place)))


def stderr_progress(created: int, skipped: int, total: int, seconds: float) -> None:
    rate = created / seconds if seconds > 0 else 0.0
    done = created + skipped
    end = "\n" if done >= total else ""
    print(f"\rdevices: {done}/{total} ({created} created, {skipped} skipped) "
          f"{rate:.0f}/s", end=end, file=sys.stderr, flush=True)


async def run_cli(pb_url: str, email: str, password: str, req: BulkRequest) -> BulkResult:
    """What `cairn-bridge devices-bulk` does: log in as the superuser, create, report."""
    check_codes(req.codes)
    check_out(req.out, req.force)
    async with PocketBase(pb_url, timeout=120) as pb:
        try:
            await pb.auth_superuser(email, password)
        except PocketBaseError as exc:
            if exc.status == 0:
                raise BulkError(f"PocketBase is not reachable at {pb_url}: is it running? "
                                "(CAIRN_PB_URL / CAIRN_PB_PORT)") from exc
            raise BulkError(f"PocketBase refused the superuser login for {email} "
                            f"(HTTP {exc.status}): devices-bulk needs the superuser") from exc
        try:
            return await create_devices(pb, req, stderr_progress)
        except PocketBaseError as exc:
            if exc.status == 0:
                raise BulkError(f"lost PocketBase at {pb_url}: {exc}") from exc
            raise
