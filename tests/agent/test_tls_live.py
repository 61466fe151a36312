"""The agent over TLS for real: a second nats-server (same operator, a copy of the
accounts) that requires TLS and a client certificate, an agent configured with
`nats.tls` (ca/cert/key), and the ways it must fail: an unknown server CA, no client
certificate."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
from pathlib import Path

import pytest
import yaml

from agent import config as config_mod
from agent.app import AgentApp
from agent.context import Stats
from agent.credentials import DeviceCredentials
from agent.link import agent_link
from cairn_common.tasks import cancel_and_wait
from cairn_stack.processes import ManagedProcess, binary, free_port, http_ok
from tests.live import connect, enrolled_agent_site, eventually
from tests.tlscerts import Pki, make_pki

CONF = """
server_name: cairn-tls
host: 127.0.0.1
port: {port}
http_port: {monitor}
include "operator.conf"
resolver {{
  type: full
  dir: "{resolver}"
  allow_delete: true
}}
jetstream {{
  store_dir: "{store}"
}}
tls {{
  cert_file: "{pki.server_cert}"
  key_file: "{pki.server_key}"
  ca_file: "{pki.ca}"
  verify: true
  timeout: 2
}}
"""


class TlsSite:
    def __init__(self, url: str, pki: Pki, site, svc: dict) -> None:
        self.url, self.pki, self.site, self.svc = url, pki, site, svc


def _client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _agent_yaml(path: Path, url: str, tls: dict[str, str]) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["nats"] = {**doc["nats"], "urls": [url], "tls": tls}
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture(scope="module")
async def tls_site(bridge, admin, pb_env, nats_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root / "pki")
    port, monitor = free_port(), free_port()
    url = f"tls://127.0.0.1:{port}"
    site = await enrolled_agent_site(admin, pb_env.url, url, root / "agent")
    svc = await eventually(lambda: admin.first(
        "nats_users", f'tenant = "{site.tenant["id"]}" && name = "cairn-bridge" && jwt != ""'))
    # the tenant's account exists now: this server starts with a copy of the accounts
    shutil.copy(nats_env.layout.nats_include, root / "operator.conf")
    shutil.copytree(nats_env.layout.nats_resolver_dir, root / "resolver")
    (root / "nats-tls.conf").write_text(CONF.format(
        port=port, monitor=monitor, resolver=root / "resolver", store=root / "store", pki=pki))
    server = ManagedProcess("nats-tls", [binary("nats-server"), "-c",
                                         str(root / "nats-tls.conf")], root / "nats-tls.log")
    server.start()
    try:
        server.wait_until(lambda: http_ok(f"http://127.0.0.1:{monitor}/healthz"), 20,
                          "TLS nats-server healthy")
        yield TlsSite(url, pki, site, svc)
    finally:
        server.stop()


async def test_agent_connects_with_ca_and_client_certificate(tls_site):
    pki, site = tls_site.pki, tls_site.site
    _agent_yaml(site.config_path, tls_site.url, {
        "ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)})
    app = AgentApp(config_mod.load(site.config_path))
    await app.start()
    control = await connect(tls_site.url, tls_site.svc["jwt"], tls_site.svc["seed"],
                            tls=_client_context(pki))
    try:
        code = site.device["code"]
        reply = await control.request(f"agents.{code}.cmd.ping", b"{}", timeout=10)
        assert json.loads(reply.data)["status"] == "pong"
        beats: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_beat(msg):
            beats.put_nowait(msg.data)

        await control.subscribe(f"agents.{code}.heartbeat", cb=on_beat)
        assert json.loads(await asyncio.wait_for(beats.get(), 10))["status"]
        assert control.connected_url.scheme == "tls"
    finally:
        await control.close()
        await app.stop()


async def _refused(site, url: str, tls: dict[str, str], caplog) -> str:
    """Let the agent's link try; return the NATS error it logs (it keeps retrying)."""
    _agent_yaml(site.config_path, url, tls)
    config = config_mod.load(site.config_path)
    link = agent_link(config, Stats(), DeviceCredentials(config, lambda: ""), _nothing)
    caplog.set_level(logging.WARNING, logger="cairn_common.supervised")
    attempt = asyncio.create_task(link._open())

    async def logged() -> str | None:
        errors = [getattr(r, "error", "") for r in caplog.records if r.msg == "NATS error"]
        return errors[0] if errors else None

    try:
        return await eventually(logged, 15, "the agent logs why it cannot connect")
    finally:
        await cancel_and_wait([attempt])
        assert attempt.cancelled() or attempt.exception() is not None, "it connected"


async def _nothing(nc) -> None:
    return None


async def test_agent_refuses_a_server_its_ca_did_not_sign(tls_site, tmp_path, caplog):
    other = make_pki(tmp_path / "other", name="someone-else")
    pki = tls_site.pki
    error = await _refused(tls_site.site, tls_site.url, {
        "ca": str(other.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}, caplog)
    assert "CERTIFICATE_VERIFY_FAILED" in error


async def test_server_refuses_an_agent_without_a_client_certificate(tls_site, caplog):
    error = await _refused(tls_site.site, tls_site.url, {"ca": str(tls_site.pki.ca)}, caplog)
    assert error  # the server ends the handshake; the agent logs it and keeps retrying
