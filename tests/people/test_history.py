"""People read a device's telemetry and the tenant's alerts back in time through the
bridge (`cairn.history.*`, pb_hooks_bridge/history.py), never straight from the streams.

Each refusal has its control in the same setup: the bridge ignores a request whose answer
would go anywhere but a person's inbox while a viewer's own request is answered; a person
of another tenant gets nothing of this tenant's device while this tenant's viewer gets it;
a device may not ask at all.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from cairn_common import creds
from cairn_common.natsauth import device_inbox, history_subject, person_inbox, service_inbox
from pb_hooks_bridge.metrics import HISTORY_REQUESTS
from tests.live import account_ready, connect, enroll, eventually, new_device, new_tenant
from tests.people.world import log_in, new_person, on_bus

DOCS = 12


@pytest.fixture(scope="module")
async def tenant(bridge, admin):
    return await account_ready(admin, await new_tenant(admin))


@pytest.fixture(scope="module")
async def device(tenant, admin, pb_env, nats_env):
    """A device that published DOCS system documents, paced wider than one step of a
    one-minute, 500-point window (0.12 s), and one inventory document."""
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = enrolled.device["code"]
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed, inbox_prefix=device_inbox(code))
    js = nc.jetstream(timeout=5)
    for n in range(DOCS):
        await js.publish(f"agents.{code}.telemetry.system",
                         json.dumps({"cpu_percent": n, "timestamp": "t"}).encode())
        await asyncio.sleep(0.15)  # pacing, not a barrier: each doc in its own step
    await js.publish(f"agents.{code}.telemetry.inventory",
                     json.dumps({"hostname": "web-01", "timestamp": "t"}).encode())
    await js.publish(f"agents.{code}.telemetry.system", b"not json")  # a device may
    yield code, nc, enrolled
    await nc.close()


class Asker:
    """A person's connection that asks in their own name (cairn.history.<kind>.<id>)."""

    def __init__(self, nc: nats.NATS, user_id: str) -> None:
        self.nc, self.user_id = nc, user_id

    async def request(self, subject: str, data: bytes, timeout: float):
        return await self.nc.request(subject, data, timeout=timeout)


@pytest.fixture(scope="module")
async def viewer_nc(tenant, admin, pb_env, nats_env):
    viewer = await new_person(admin, tenant, "viewer")
    nc, _ = await on_bus(nats_env.url, viewer, await log_in(pb_env.url, admin, viewer))
    yield Asker(nc, viewer.user["id"])
    await nc.close()


async def ask(asker: Asker, kind: str, body: object, timeout: float = 10,
              as_user: str | None = None) -> dict:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    subject = history_subject(as_user or asker.user_id, kind)
    reply = await asker.request(subject, data, timeout=timeout)
    return json.loads(reply.data)


async def test_a_viewer_reads_the_last_minute_in_order(device, viewer_nc):
    code = device[0]
    answer = await ask(viewer_nc, "telemetry", {"device": code, "since": 60, "points": 500})
    assert answer["status"] == "ok", answer
    cpu = [m["data"]["cpu_percent"] for m in answer["messages"]]
    assert cpu == list(range(DOCS)), "every document once, oldest first (not-JSON skipped)"
    times = [m["time"] for m in answer["messages"]]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    assert answer["truncated"] is False


async def test_a_dense_window_is_thinned_to_the_points_asked(device, viewer_nc):
    code = device[0]
    answer = await ask(viewer_nc, "telemetry", {"device": code, "since": 60, "points": 3})
    cpu = [m["data"]["cpu_percent"] for m in answer["messages"]]
    assert 1 <= len(cpu) <= 3 and cpu == sorted(set(cpu)), answer
    assert cpu[0] == 0, "the first document of the window starts the series"


async def test_latest_inventory_and_an_empty_series(device, viewer_nc):
    code = device[0]
    answer = await ask(viewer_nc, "latest", {"device": code, "subject": "inventory"})
    assert answer["message"]["data"]["hostname"] == "web-01"
    none = await ask(viewer_nc, "latest", {"device": code, "subject": "service"})
    assert none == {**none, "status": "ok", "message": None}
    # the not-JSON document is the latest system one: shown as nothing, not as an error
    latest = await ask(viewer_nc, "latest", {"device": code})
    assert latest["status"] == "ok" and latest["message"] is None


async def test_recent_alerts_newest_kept_oldest_first(tenant, admin, nats_env, viewer_nc):
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""'), 10)
    nc = await connect(nats_env.url, *creds.parse(svc["creds"]),
                       inbox_prefix=service_inbox("cairn-bridge"))
    try:
        js = nc.jetstream(timeout=5)
        for n in range(5):
            await js.publish(f"alerts.history-test.{n}", json.dumps({"n": n}).encode())
    finally:
        await nc.close()
    answer = await ask(viewer_nc, "alerts", {"limit": 3})
    assert [m["data"]["n"] for m in answer["messages"]] == [2, 3, 4], answer
    assert answer["messages"][-1]["subject"] == "alerts.history-test.4"


@pytest.mark.parametrize(("kind", "body", "words"), [
    ("telemetry", {"device": "web-01", "colour": 1}, "unknown field 'colour'"),
    ("telemetry", {"device": "web-01", "since": "3600"}, "since must be an integer, got str"),
    ("telemetry", {"device": "web-01", "points": True}, "points must be an integer, got bool"),
    ("telemetry", {"device": "web-01", "points": 100000}, "points must be 1..500"),
    ("telemetry", {"device": "web-01", "since": 10**9}, "since must be 60..604800"),
    ("telemetry", {"device": "../x"}, "device must be a device code"),
    ("telemetry", {"device": "web-01", "subject": "inventory"}, "subject must be one of system"),
    ("latest", {}, "device must be a device code"),
    ("alerts", [], "must be a JSON object, got list"),
    ("alerts", b"{nope", "not valid JSON"),
    ("alerts", b"{" + b" " * 5000 + b"}", "request too large"),
    ("erase", {}, "unknown history request"),
])
async def test_bad_requests_are_answered_in_words(kind, body, words, viewer_nc):
    answer = await ask(viewer_nc, kind, body)
    assert answer["status"] == "error" and words in answer["error"], answer


async def test_two_mistakes_are_both_named(viewer_nc):
    answer = await ask(viewer_nc, "alerts", {"limit": "9", "extra": 1})
    assert "unknown field 'extra'" in answer["error"]
    assert "limit must be an integer" in answer["error"]


async def test_an_answer_goes_only_to_the_askers_inbox(tenant, admin, nats_env, device,
                                                      viewer_nc):
    """A service identity (which may publish anywhere) asking in the viewer's name with
    its own inbox, or with a command subject as the reply, is ignored: the bridge would
    otherwise publish history wherever a reply subject pointed."""
    code = device[0]
    svc = await admin.first("nats_users",
                            f'tenant = "{tenant["id"]}" && name = "cairn-bridge"')
    nc = await connect(nats_env.url, *creds.parse(svc["creds"]),
                       inbox_prefix=service_inbox("cairn-bridge"))
    ignored = HISTORY_REQUESTS.labels("?", "ignored")
    before = ignored._value.get()
    subject = history_subject(viewer_nc.user_id, "latest")
    body = b'{"device": "%s"}' % code.encode()
    try:
        seen: asyncio.Queue = asyncio.Queue()
        await nc.subscribe("agents.victim.cmd.exec", cb=seen.put)
        await nc.publish(subject, body, reply="agents.victim.cmd.exec")
        # another person's inbox under the viewer's id: not the asker's inbox either
        await nc.publish(subject, body, reply=f"{person_inbox('someoneelse')}.x")
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(subject, body, timeout=1.5)
        # all dropped on arrival (the decision is made before any answer is begun)
        await eventually(lambda: asyncio.sleep(0, ignored._value.get() >= before + 3), 5,
                         "the three requests ignored")
        await nc.flush()
        assert seen.empty(), "the bridge answered into a command subject"
        # control: the viewer's own request is answered
        answer = await ask(viewer_nc, "latest", {"device": code, "subject": "inventory"})
        assert answer["status"] == "ok"
    finally:
        await nc.close()


async def test_a_person_cannot_ask_in_a_colleagues_name(tenant, admin, pb_env, nats_env,
                                                        viewer_nc):
    mallory = await new_person(admin, tenant, "operator")
    errors: list[Exception] = []
    nc, _ = await on_bus(nats_env.url, mallory, await log_in(pb_env.url, admin, mallory), errors)
    asker = Asker(nc, mallory.user["id"])
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await ask(asker, "alerts", {}, timeout=1.5, as_user=viewer_nc.user_id)
        assert any("permissions violation" in str(e).lower() for e in errors), errors
        assert (await ask(asker, "alerts", {}))["status"] == "ok"  # control: own name
    finally:
        await nc.close()


async def test_a_device_may_not_ask(device, nats_env, viewer_nc):
    code = device[0]
    enrolled = device[2]
    errors: list[Exception] = []
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed, errors=errors,
                       inbox_prefix=device_inbox(code))
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await ask(Asker(nc, viewer_nc.user_id), "latest",
                      {"device": code, "subject": "inventory"}, timeout=1.5)
        assert any("permissions violation" in str(e).lower() for e in errors), errors
    finally:
        await nc.close()
    answer = await ask(viewer_nc, "latest", {"device": code, "subject": "inventory"})
    assert answer["status"] == "ok"  # control


async def test_another_tenants_person_gets_nothing_of_this_device(bridge, admin, pb_env,
                                                                  nats_env, device, viewer_nc):
    code = device[0]
    other = await account_ready(admin, await new_tenant(admin))
    mallory = await new_person(admin, other, "owner")
    nc, _ = await on_bus(nats_env.url, mallory, await log_in(pb_env.url, admin, mallory))
    asker = Asker(nc, mallory.user["id"])
    try:
        async def answered() -> dict | None:
            try:
                return await ask(asker, "telemetry", {"device": code, "since": 60}, timeout=2)
            except nats.errors.Error:
                return None  # the other tenant's streams and link are still coming up
        theirs = await eventually(answered, 20, "the other tenant's bridge answers")
        assert theirs["status"] == "ok" and theirs["messages"] == []
    finally:
        await nc.close()
    ours = await ask(viewer_nc, "telemetry", {"device": code, "since": 60})
    assert ours["messages"], "control: this tenant's viewer reads the device"


def _strict(data: bytes) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in an answer: a browser cannot read it")
    return json.loads(data, parse_constant=refuse)


async def test_hostile_documents_never_break_an_answer(tenant, admin, pb_env, nats_env,
                                                       viewer_nc):
    """A device's own documents: not strict JSON, nested past Python's limit, large and
    not objects, or text that triples when escaped. The answer stays strict JSON within
    its size, with the good documents; control: those good documents are all there."""
    enrolled = await enroll(pb_env.url, admin, await new_device(admin, tenant))
    code = enrolled.device["code"]
    nc = await connect(nats_env.url, enrolled.jwt, enrolled.seed, inbox_prefix=device_inbox(code))
    hostile = [b'{"cpu_percent": NaN}', b'{"cpu_percent": 1e999}', b"[" * 6000 + b"]" * 6000,
               b"[" + b"{}," * 90_000 + b"{}]", json.dumps({"note": "\u00e9" * 120_000},
                                                           ensure_ascii=False).encode()]
    js = nc.jetstream(timeout=5)
    try:
        for n, doc in enumerate(hostile):  # pacing: each document in its own step
            await js.publish(f"agents.{code}.telemetry.system", doc)
            await asyncio.sleep(0.15)
            await js.publish(f"agents.{code}.telemetry.system",
                             json.dumps({"cpu_percent": n}).encode())
            await asyncio.sleep(0.15)
    finally:
        await nc.close()
    reply = await viewer_nc.request(history_subject(viewer_nc.user_id, "telemetry"), json.dumps(
        {"device": code, "since": 60, "points": 500}).encode(), timeout=10)
    assert len(reply.data) < 1024 * 1024
    answer = _strict(reply.data)
    assert answer["status"] == "ok", answer
    cpu = [m["data"].get("cpu_percent") for m in answer["messages"]]
    assert [c for c in cpu if c is not None] == list(range(len(hostile))), \
        (answer["truncated"], len(answer["messages"]), str(answer["messages"])[:300])
    latest = _strict((await viewer_nc.request(history_subject(viewer_nc.user_id, "latest"),
                                              json.dumps({"device": code}).encode(),
                                              timeout=10)).data)
    assert latest["status"] == "ok" and latest["message"]["data"] == {"cpu_percent": 4}


async def test_a_text_alert_is_shown_as_text(tenant, admin, nats_env, viewer_nc):
    svc = await admin.first("nats_users",
                            f'tenant = "{tenant["id"]}" && name = "cairn-bridge" && creds != ""')
    nc = await connect(nats_env.url, *creds.parse(svc["creds"]),
                       inbox_prefix=service_inbox("cairn-bridge"))
    try:
        await nc.jetstream(timeout=5).publish("alerts.history-text", b"disk almost full")
    finally:
        await nc.close()
    answer = await ask(viewer_nc, "alerts", {"limit": 1})
    assert answer["messages"][-1]["data"] == {"text": "disk almost full"}
