"""The supervised link against a real nats-server, with JWTs that live a few seconds.

The JWTs are signed here with a real tenant account's signing key (read as superuser), so
the server enforces their expiry exactly as it does for the bridge's.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from cairn_common import natsjwt, nkey
from cairn_common.renewable import RenewError
from cairn_common.supervised import REOPENED, LinkSettings, SupervisedLink
from tests.live import account_ready, eventually, new_tenant


class Signer:
    """Short-lived JWTs for one user key in one account; counts renewals."""

    def __init__(self, account_row: dict, lifetime: int) -> None:
        self.signing = nkey.from_seed(account_row["signing_seed"], "account")
        self.account = account_row["public_key"]
        self.user = nkey.create("user")
        self.lifetime = lifetime
        self.renewals = 0
        self.refuse = False
        self.jwt = self._sign()

    def _sign(self) -> str:
        iat = int(time.time())
        claims = natsjwt.user_claims(self.user.public_key.decode(), "supervised-test",
                                     issuer_account=self.account, pub_allow=[">"],
                                     sub_allow=[">"], expires=iat + self.lifetime)
        claims["iat"] = iat
        return natsjwt.encode(claims, self.signing)

    def current(self) -> tuple[str, str]:
        return self.jwt, self.user.seed.decode()

    async def renew(self, stale: str) -> None:
        if self.refuse:
            raise RenewError("refused by the test")
        while int(time.time()) <= natsjwt.decode(stale, verify=False)["iat"]:
            await asyncio.sleep(0.05)  # a newer JWT has a later iat
        self.renewals += 1
        self.jwt = self._sign()


@pytest.fixture
async def account(bridge, admin):
    tenant = await account_ready(admin, await new_tenant(admin))
    return await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')


def settings(nats_env, label: str, renew_at: float) -> LinkSettings:
    return LinkSettings(name=f"test/{label}", label=label, servers=(nats_env.url,),
                        renew_at=renew_at, jitter=0.0, backoff_first=0.1, backoff_max=1.0,
                        reconnect_time_wait=0.2)


async def test_renews_ahead_of_expiry_and_each_message_arrives_once(nats_env, account):
    signer = Signer(account, lifetime=4)
    got: list[int] = []

    async def on_connect(nc) -> None:
        async def on_msg(msg) -> None:
            got.append(int(msg.data))
        await nc.subscribe("work.items", queue="workers", cb=on_msg)

    link = SupervisedLink(settings(nats_env, "renew-ahead", 0.5), signer, on_connect)
    publisher = SupervisedLink(settings(nats_env, "renew-ahead-pub", 0.5),
                               Signer(account, lifetime=4), _nothing)
    expired_before = REOPENED.labels("renew-ahead", "expired")._value.get()
    await link.start()
    await publisher.start()
    try:
        sent = 0
        deadline = time.monotonic() + 13  # > 3 lifetimes
        while time.monotonic() < deadline:
            with publisher.hold() as nc:
                await nc.publish("work.items", str(sent).encode())
                await nc.flush()
            sent += 1
            await asyncio.sleep(0.05)
        await eventually(lambda: _async(len(got) >= sent), 5, "every message delivered")
        assert sorted(got) == list(range(sent)), "a message was lost or delivered twice"
        assert signer.renewals >= 3, "renewed ahead of every expiry"
        # a renewal counts before its connection opens: wait for the swap in flight
        await eventually(lambda: _async(link.opened == signer.renewals + 1), 5,
                         "one connection per JWT")
        assert REOPENED.labels("renew-ahead", "expired")._value.get() == expired_before, \
            "the server never had to close a connection for an expired JWT"
        assert link.connected
    finally:
        await link.stop()
        await publisher.stop()


async def test_an_expired_close_renews_at_once_never_retrying_the_dead_jwt(nats_env, account):
    signer = Signer(account, lifetime=3)
    connects: list[str] = []

    async def on_connect(nc) -> None:
        connects.append(signer.jwt)

    # renew_at beyond the lifetime: nothing is renewed ahead, the server closes at expiry
    link = SupervisedLink(settings(nats_env, "renew-late", 5.0), signer, on_connect)
    await link.start()
    try:
        await eventually(lambda: _async(signer.renewals >= 2 and len(connects) >= 3), 15,
                         "two expiries survived")
        assert len(set(connects)) == len(connects), "a JWT was used for two connections"
        assert REOPENED.labels("renew-late", "expired")._value.get() >= 2
        await eventually(lambda: _async(link.connected), 5, "connected again")
    finally:
        await link.stop()


async def test_renewal_refused_backs_off_then_recovers(nats_env, account):
    signer = Signer(account, lifetime=3)
    link = SupervisedLink(settings(nats_env, "renew-refused", 5.0), signer, _nothing)
    await link.start()
    try:
        signer.refuse = True
        refused = 0
        real = signer.renew

        async def counting(stale: str) -> None:
            nonlocal refused
            refused += 1
            await real(stale)

        signer.renew = counting  # type: ignore[method-assign]
        await eventually(lambda: _async(not link.connected), 10, "closed at expiry")
        await asyncio.sleep(2.0)  # a few refused renewals (backoff 0.1 s doubling to 1 s)
        assert not link.connected, "never connected with the expired JWT"
        # the close woke the supervisor; that wake must not turn the backoff into a spin
        assert 1 <= refused <= 8, refused
        signer.refuse = False
        await eventually(lambda: _async(link.connected), 10, "back once renewal works")
    finally:
        await link.stop()


async def test_replace_during_a_revocation_keeps_one_connection(nats_env, account, admin):
    """The old connection closing while a swap is under way never leaves two open."""
    signer = Signer(account, lifetime=60)
    link = SupervisedLink(settings(nats_env, "swap-race", 0.7), signer, _nothing)
    await link.start()
    try:
        for _ in range(5):
            old = link.nc
            signer.jwt = signer._sign()  # a "rotation": new creds, then swap and kill the old
            swap = asyncio.create_task(link.replace("rotation"))
            await old.close()
            await asyncio.wait_for(swap, 10)

        async def one_left() -> bool:
            return await connections_named(nats_env, link.settings.name) == 1

        await eventually(one_left, 10, "one connection left on the server")
        assert link.connected
    finally:
        await link.stop()


async def connections_named(nats_env, name: str) -> int:
    """Open connections with this name, as the server sees them (/connz)."""
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{nats_env.monitor_url}/connz", params={"limit": 10000})
    return sum(1 for c in resp.json().get("connections") or [] if c.get("name") == name)


async def _nothing(nc) -> None:
    return None


async def _async(value):
    return value


def test_only_the_servers_refusals_count_as_credential_trouble():
    import nats as nats_mod

    from cairn_common.link_settings import auth_reason
    assert auth_reason(nats_mod.errors.Error("nats: user authentication expired")) == "expired"
    assert auth_reason(nats_mod.errors.Error("nats: 'User Authentication Revoked'")) == "revoked"
    assert auth_reason(nats_mod.errors.AuthorizationError()) == "authorization"
    # a TLS certificate that expired is not a JWT problem: renewing would not fix it
    assert auth_reason(OSError("certificate verify failed: certificate has expired")) is None
    assert auth_reason(None) is None


async def test_a_refusal_with_no_newer_jwt_reconnects_with_the_valid_one(nats_env, account):
    """An authorization close (not about our JWT) while renewal has nothing newer: the link
    goes on with the JWT it holds instead of staying closed."""
    import nats as nats_mod
    signer = Signer(account, lifetime=120)
    link = SupervisedLink(settings(nats_env, "refused-keep", 0.7), signer, _nothing)
    await link.start()
    try:
        signer.refuse = True
        old = link.nc
        old._err = nats_mod.errors.AuthorizationError()  # as if the server had said so
        await old.close()
        await eventually(lambda: _async(link.connected and link.nc is not old), 10,
                         "reconnected with the JWT it holds")
    finally:
        await link.stop()


async def test_a_refused_renewal_ahead_of_expiry_is_postponed_not_looped(nats_env, account):
    signer = Signer(account, lifetime=120)
    calls = 0
    real = signer.renew

    async def counting(stale: str) -> None:
        nonlocal calls
        calls += 1
        await real(stale)

    signer.renew = counting  # type: ignore[method-assign]
    signer.refuse = True
    # due almost at once (1 % of the lifetime), refused: next try >= 30 s later
    link = SupervisedLink(settings(nats_env, "postponed", 0.01), signer, _nothing)
    await link.start()
    try:
        await eventually(lambda: _async(calls >= 1), 10, "the first renewal attempt")
        await asyncio.sleep(3)  # backoff here is at most 1 s: a loop would call again
        assert calls == 1
        assert link.connected
    finally:
        await link.stop()


async def test_a_close_during_a_backoff_does_not_turn_backoffs_into_a_spin(nats_env, account):
    """Seen once: an agent whose renewals kept failing logged thousands of 'step failed;
    retry_in 60' lines a millisecond. A refused renewal ahead of expiry puts the supervisor
    in a backoff; the server's close at expiry wakes it there; that wake must not stay set
    and cut every later backoff short."""
    signer = Signer(account, lifetime=3)
    calls = 0
    real = signer.renew

    async def counting(stale: str) -> None:
        nonlocal calls
        calls += 1
        await real(stale)

    signer.renew = counting  # type: ignore[method-assign]
    signer.refuse = True
    link = SupervisedLink(settings(nats_env, "close-in-backoff", 0.3), signer, _nothing)
    await link.start()
    try:
        await eventually(lambda: _async(not link.connected), 10, "closed at expiry")
        closed_at = calls
        await asyncio.sleep(2.5)  # backoff 0.1 s doubling to 1 s: a handful of tries
        assert calls - closed_at <= 10, calls - closed_at
    finally:
        await link.stop()


async def test_a_wake_left_set_never_cuts_a_backoff_short(nats_env):
    """The mechanism behind the spin above, directly: a wake-up that arrived earlier (a
    close, a refusal, a swap request) is cleared, and only a stop ends a backoff early."""
    link = SupervisedLink(settings(nats_env, "wake-left", 0.7), Signer.__new__(Signer),
                          _nothing)
    link._wake.set()
    started = time.monotonic()
    await link._sleep(0.5)
    assert time.monotonic() - started >= 0.45
    link._stopping = True
    link._wake.set()
    started = time.monotonic()
    await link._sleep(5.0)
    assert time.monotonic() - started < 0.5
