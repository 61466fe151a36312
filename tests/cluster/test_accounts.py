"""Account pushes in a 3-node cluster: a node that was down while an account was created or
a user revoked has it within 10 s of its return (issue 12, SPEC §10)."""

from __future__ import annotations

import time

import nats

from cairn_common import natsjwt
from tests.cluster.conftest import PROVISION_WITHIN, provisioned_tenant
from tests.live import Enrolled, connect, enroll, eventually, new_device, new_tenant

RETURN_WITHIN = 10.0  # seconds after the node is healthy again


async def accepted(url: str, jwt: str, seed: str) -> bool:
    """True when `url` lets these creds in, False when it refuses them as unauthorized."""
    errors: list[Exception] = []
    try:
        nc = await connect(url, jwt, seed, errors=errors, max_reconnect_attempts=0)
    except (nats.errors.Error, OSError) as exc:
        if any("authorization" in str(e).lower() for e in [*errors, exc]):
            return False
        raise
    await nc.close()
    return True


def held_jwt(node, account_public: str) -> str:
    """The account JWT in the node's full-resolver directory ('' when it has none)."""
    path = node.resolver_dir / f"{account_public}.jwt"
    return path.read_text().strip() if path.exists() else ""


async def newest_account_jwt(admin, tenant) -> tuple[str, str]:
    row = await admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
    return row["public_key"], row["jwt"]


async def test_account_pushed_while_a_node_is_down_reaches_it(cluster, cluster_bridge,
                                                              cluster_admin, cluster_pb):
    away = await cluster.follower()
    up = cluster.others(away)
    watch = cluster_bridge.bridge.cluster
    away.kill()
    try:
        tenant = await new_tenant(cluster_admin)

        async def pushed() -> str:  # on the nodes that are up: the push happened
            row = await cluster_admin.first("nats_accounts", f'tenant = "{tenant["id"]}"')
            jwt = row.get("jwt") if row else ""
            return row["public_key"] if jwt and all(held_jwt(n, row["public_key"]) == jwt
                                                    for n in up) else ""

        public = await eventually(pushed, 20, "the account on the nodes that are up")
        assert held_jwt(away, public) == ""
        rounds = watch.repushes
    finally:
        returned = time.monotonic()  # from the restart on, its start-up included
        away.start()

    async def arrived() -> bool:
        _, jwt = await newest_account_jwt(cluster_admin, tenant)
        return held_jwt(away, public) == jwt

    await eventually(arrived, RETURN_WITHIN, "the account on the returning node")
    print(f"account on the returning node after {time.monotonic() - returned:.2f} s")
    await eventually(lambda: _true(watch.repushes > rounds), RETURN_WITHIN,
                     "the bridge pushing every account again for the returning node")
    # JetStream may take a while to place the tenant's R3 streams after a node loss
    await eventually(lambda: _provisioned(cluster_admin, tenant), PROVISION_WITHIN,
                     "tenant provisioned")
    device = await enroll(cluster_pb.url, cluster_admin, await new_device(cluster_admin, tenant))
    assert await accepted(away.url, device.jwt, device.seed)


async def _provisioned(admin, tenant) -> bool:
    return bool((await admin.get("tenants", tenant["id"])).get("nats_account_public_key"))


async def test_revocation_while_a_node_is_down_holds_on_its_return(cluster, cluster_bridge,
                                                                   cluster_admin, cluster_pb):
    tenant = await provisioned_tenant(cluster_admin)
    revoked, kept = [await enroll(cluster_pb.url, cluster_admin,
                                  await new_device(cluster_admin, tenant)) for _ in range(2)]
    away = await cluster.follower()
    up = cluster.others(away)[0]
    for device in (revoked, kept):  # both work on that node before
        assert await accepted(away.url, device.jwt, device.seed)
    away.kill()
    try:
        await cluster_admin.update("devices", revoked.device["id"], {"status": "disabled"})
        await eventually(lambda: _refused(up.url, revoked), 10, "the revocation on a live node")
        public, jwt = await newest_account_jwt(cluster_admin, tenant)
        assert _revokes(jwt, revoked) and not _revokes(held_jwt(away, public), revoked)
    finally:
        returned = time.monotonic()
        away.start()
    await eventually(lambda: _refused(away.url, revoked), RETURN_WITHIN,
                     "the revoked key refused by the returning node")
    print(f"revocation on the returning node after {time.monotonic() - returned:.2f} s")
    assert _revokes(held_jwt(away, public), revoked)  # on its disk: it survives a restart
    assert await accepted(away.url, kept.jwt, kept.seed)  # positive control
    assert not await accepted(away.url, revoked.jwt, revoked.seed)  # and it holds


async def _refused(url: str, device: Enrolled) -> bool:
    return not await accepted(url, device.jwt, device.seed)


async def _true(value: bool) -> bool:
    return value


def _revokes(account_jwt: str, device: Enrolled) -> bool:
    if not account_jwt:
        return False
    revocations = natsjwt.decode(account_jwt, verify=False)["nats"].get("revocations") or {}
    return device.user.public_key.decode() in revocations
