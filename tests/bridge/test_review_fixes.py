"""Review fixes in the bridge: the catch-up watermark moves only with delivered events and
applied listings (freshness.py, reconcile.py); guarded writes keep their precondition when
the batch API is off (writer.py); renewal from the JWT's own lifetime (identities.py,
renewal.py); tenants re-read under their lane (events.py); pusher's requests raise
PushError (pusher.py)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from cairn_common import natsjwt, nkey
from cairn_common.pocketbase import PocketBaseError, pb_date
from pb_hooks_bridge.accounts import Account
from pb_hooks_bridge.freshness import Freshness
from pb_hooks_bridge.identities import Identities
from pb_hooks_bridge.permissions import Permissions
from pb_hooks_bridge.pusher import Pusher, PushError
from pb_hooks_bridge.renewal import PAST_THRESHOLD, Renewer
from pb_hooks_bridge.writer import NOT_IF_DISABLED, BatchWriter, superseded
from tests.live import account_ready, eventually, new_device, new_tenant

DAY = 86400

# -- 1. the catch-up watermark ---------------------------------------------------------


def test_own_writes_never_move_the_watermark():
    fresh = Freshness()
    fresh.advance("devices", "2026-01-01 00:00:00.000Z")
    fresh.saw("devices", {"id": "a", "updated": "2026-01-02 00:00:00.000Z"})  # our write
    assert fresh.newest["devices"] == "2026-01-01 00:00:00.000Z"
    # ... but it still makes an older copy of that row stale
    assert fresh.stale("devices", {"id": "a", "updated": "2026-01-01 12:00:00.000Z"})
    fresh.advance("devices", "2026-01-03 00:00:00.000Z")  # a delivered event
    fresh.advance("devices", "2026-01-02 00:00:00.000Z")  # never backwards
    assert fresh.newest["devices"] == "2026-01-03 00:00:00.000Z"


async def test_a_failed_catch_up_leaves_the_watermark(bridge, admin, monkeypatch):
    """Rows listed, applied and rewritten by a catch-up that then fails do not move the
    watermark: the next catch-up lists them (and whatever else changed) again."""
    b = bridge.bridge
    tenant = await account_ready(admin, await new_tenant(admin))
    device = await new_device(admin, tenant)
    await admin.update("devices", device["id"], {"name": "touched"})
    await asyncio.sleep(1.0)  # its events handled
    saved = dict(b.freshness.newest)
    lost = pb_date(time.time() - 30)  # as if the events of the last 30 s were lost
    for collection in ("tenants", "devices", "nats_users"):
        b.freshness.newest[collection] = lost
    ledger = b.reconciler._ledger

    async def failing(summary):
        raise RuntimeError("PocketBase went away mid-catch-up")

    try:
        monkeypatch.setattr(b.reconciler, "_ledger", failing)
        with pytest.raises(RuntimeError):
            await b.reconciler.catch_up(margin=0.5)
        assert b.freshness.newest["devices"] == lost  # the recent rows are listed again
        assert b.freshness.newest["tenants"] == lost
        monkeypatch.setattr(b.reconciler, "_ledger", ledger)
        summary = await b.reconciler.catch_up(margin=0.5)
        assert summary.kind == "catch-up"
        assert b.freshness.newest["devices"] > lost  # applied in full: it moves
    finally:
        for collection, stamp in saved.items():
            b.freshness.advance(collection, stamp)


# -- 2. the precondition without the batch API ------------------------------------------


class _NoBatch:
    """PocketBase whose batch API fails with a 400 that names no sub-request."""

    def __init__(self, pb) -> None:
        self.pb = pb
        self.batches = 0

    async def batch(self, requests):
        self.batches += 1
        raise PocketBaseError("POST /api/batch: HTTP 400: something went wrong", 400, {})

    async def update(self, *args, **kwargs):
        return await self.pb.update(*args, **kwargs)


async def test_batch_off_keeps_the_precondition(bridge, admin):
    tenant = await account_ready(admin, await new_tenant(admin))
    off, other = [await new_device(admin, tenant) for _ in range(2)]
    await admin.update("devices", off["id"], {"status": "disabled"})
    writer = BatchWriter(admin)
    writer.batch_ok = False  # as after a 403/404 from /api/batch

    with pytest.raises(PocketBaseError) as refused:
        await writer.update("devices", off["id"], {"status": "active"}, headers=NOT_IF_DISABLED)
    assert superseded(refused.value)
    assert (await admin.get("devices", off["id"]))["status"] == "disabled"

    results = await asyncio.gather(
        writer.update("devices", other["id"], {"name": "renamed"}),
        writer.update("devices", off["id"], {"status": "active"}, headers=NOT_IF_DISABLED),
        return_exceptions=True)
    assert results[0]["name"] == "renamed"
    assert isinstance(results[1], PocketBaseError) and superseded(results[1])
    assert (await admin.get("devices", off["id"]))["status"] == "disabled"


async def test_unnamed_400_keeps_the_precondition(bridge, admin):
    tenant = await account_ready(admin, await new_tenant(admin))
    off, other = [await new_device(admin, tenant) for _ in range(2)]
    await admin.update("devices", off["id"], {"status": "disabled"})
    pb = _NoBatch(admin)
    writer = BatchWriter(pb)
    results = await asyncio.gather(
        writer.update("devices", off["id"], {"status": "active"}, headers=NOT_IF_DISABLED),
        writer.update("devices", other["id"], {"name": "renamed"}),
        return_exceptions=True)
    assert pb.batches >= 1 and writer.batch_ok  # a 400 leaves the batch API on
    assert isinstance(results[0], PocketBaseError) and superseded(results[0])
    assert results[1]["name"] == "renamed"
    assert (await admin.get("devices", off["id"]))["status"] == "disabled"


async def test_update_sends_headers(bridge, admin):
    tenant = await account_ready(admin, await new_tenant(admin))
    off = await new_device(admin, tenant)
    await admin.update("devices", off["id"], {"status": "disabled"})
    with pytest.raises(PocketBaseError) as refused:
        await admin.update("devices", off["id"], {"status": "active"}, headers=NOT_IF_DISABLED)
    assert refused.value.status == 409
    assert (await admin.update("devices", off["id"], {"name": "x"}))["name"] == "x"


# -- 3. renewal from the JWT's own lifetime --------------------------------------------


def _account() -> Account:
    return Account(tenant_id="t", slug="s", row_id="r", identity=nkey.create("account"),
                   signing=nkey.create("account"), revocations={}, limits={}, active=True)


def _claims(identities: Identities, account: Account, public: str, iat: int, exp: int):
    claims = natsjwt.user_claims(public, "d", issuer_account=account.public_key,
                                 pub_allow=["a.>"], sub_allow=["b.>"], allow_responses=True,
                                 expires=exp)
    claims["iat"] = iat
    return identities.current_grant(account, natsjwt.encode(claims, account.signing))


def test_a_longer_lived_jwt_renews_at_its_own_half_life(monkeypatch):
    """The ttl was lowered to a day: a 30-day JWT is renewed past day 15, not at 29.5."""
    identities = Identities(pb=None, pusher=None, roles=None, audit=None, ttl=DAY)
    account, user = _account(), nkey.create("user")
    public = user.public_key.decode()
    perms = Permissions(["a.>"], [], ["b.>"], [], True)
    now = int(time.time())
    day21 = _claims(identities, account, public, now - 21 * DAY, now + 9 * DAY)
    day10 = _claims(identities, account, public, now - 10 * DAY, now + 20 * DAY)
    assert identities.needs_new_jwt(day21, public, perms) == "renewal"
    assert identities.needs_new_jwt(day10, public, perms) is None
    # a JWT shorter than the ttl (the ttl was raised): still half the configured ttl
    raised = Identities(pb=None, pusher=None, roles=None, audit=None, ttl=30 * DAY)
    short = _claims(raised, account, public, now - DAY // 2, now + DAY // 2)
    assert raised.needs_new_jwt(short, public, perms) == "renewal"

    # the renewal schedule is never due before needs_new_jwt says "renewal"
    for ttl, life in ((DAY, 30 * DAY), (30 * DAY, DAY), (DAY, DAY)):
        checker = Identities(pb=None, pusher=None, roles=None, audit=None, ttl=ttl)
        iat = now
        exp = iat + life
        renewer = Renewer(ttl, renew=None)
        renewer.watch("row", "t", exp, iat)
        due = renewer.due["row"][0]
        grant = _claims(checker, account, public, iat, exp)
        monkeypatch.setattr(time, "time", lambda d=due: d)
        assert checker.needs_new_jwt(grant, public, perms) == "renewal", (ttl, life)
        monkeypatch.setattr(time, "time", lambda d=due: d - 2 * PAST_THRESHOLD)
        assert checker.needs_new_jwt(grant, public, perms) is None, (ttl, life)
        monkeypatch.undo()


# -- 4. tenants re-read under their lane -----------------------------------------------


async def test_a_stale_tenant_copy_never_reactivates(bridge, admin):
    b = bridge.bridge
    tenant = await account_ready(admin, await new_tenant(admin))
    stale = await admin.get("tenants", tenant["id"])  # active
    await admin.update("tenants", tenant["id"], {"active": False})

    async def inactive() -> bool:
        account = b.accounts.get(tenant["id"])
        token = await b.pusher.lookup(account.public_key)
        return not account.active and natsjwt.decode(token)["nats"]["limits"]["conn"] == 0

    await eventually(inactive, 10, "the deactivation handled")
    # the freshness map has not seen the deactivation (its event still queued, or pruned)
    b.freshness.seen.pop(f"tenants:{tenant['id']}", None)
    await b.lanes.call(f"tenants:{tenant['id']}",
                       lambda: b.router.apply("tenants", stale, resend=True))
    account = b.accounts.get(tenant["id"])
    assert account.active is False
    token = await b.pusher.lookup(account.public_key)
    assert natsjwt.decode(token)["nats"]["limits"]["conn"] == 0


# -- 5. pusher's requests --------------------------------------------------------------


class _FailingNats:
    """Every request fails with `exc` (the pusher collects one reply per server: it
    subscribes an inbox and publishes, pusher.py / broadcast.py)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject, cb=None):
        raise self.exc

    async def publish(self, subject, payload, reply=""):
        raise self.exc

    async def request(self, subject, payload, timeout=None):
        raise self.exc


@pytest.mark.parametrize("exc", [nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
                                 nats.errors.ConnectionClosedError(), TimeoutError()])
async def test_pusher_requests_raise_push_error(exc):
    pusher = Pusher(_FailingNats(exc), pb=None, operator=nkey.create("operator"),
                    system_account="")
    with pytest.raises(PushError, match=r"\$SYS\.REQ\.CLAIMS\.LIST"):
        await pusher.list_accounts()
    with pytest.raises(PushError, match=r"\$SYS\.REQ\.ACCOUNT\.AX\.CLAIMS\.LOOKUP"):
        await pusher.lookup("AX")


async def test_lookup_of_an_unknown_account_is_empty(bridge):
    """nats-server answers (empty) for an account it does not hold: '' rather than an
    error, so a brand-new account's first push is not refused."""
    assert await bridge.bridge.pusher.lookup(nkey.create("account").public_key.decode()) == ""
