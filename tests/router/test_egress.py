"""The webhook client against a real HTTP server on 127.0.0.1: refused addresses never get a
connection (also by a name that resolves to loopback), allowed ones do; a refusal is not
retried, and a name that does not resolve is refused exactly alike; headers the client owns
are refused; redirects are not followed; every attempt and every body read is bounded;
TLS still verifies the URL's host name."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rule_router.actions import webhook
from rule_router.actions.egress import guarded_client
from rule_router.addresses import EgressPolicy
from rule_router.errors import EgressRefused
from rule_router.model import MAX_ATTEMPTS, MAX_BACKOFF, WebhookOut
from tests.router.harness import HttpSink, drip, hang, respond

pytestmark = pytest.mark.timeout(30)
NONE = EgressPolicy()
LOOPBACK = EgressPolicy.parse("127.0.0.1")


@pytest.fixture
async def sink():
    server = await HttpSink().start()
    yield server
    await server.stop()


def hook(url, attempts=3, timeout=2.0, backoff=0.01):
    return WebhookOut(url=url, method="POST", headers={"Content-Type": "application/json"},
                      body=b'{"x": 1}', timeout=timeout, attempts=attempts, backoff=backoff,
                      safe_url=url)


def _attacks(sink):
    return [sink.url(), sink.url(host="localhost"), sink.url(host="[::ffff:127.0.0.1]"),
            sink.url(host="2130706433"), sink.url(host="127.1"), sink.url(host="0")]


async def test_loopback_is_refused_before_any_connection_and_allowed_when_listed(sink):
    async with guarded_client(NONE) as client:
        for url in _attacks(sink):
            with pytest.raises(EgressRefused, match="CAIRN_ROUTER_WEBHOOK_ALLOW") as info:
                await client.post(url, content=b"x")
            text = str(info.value)  # an address shows its class; a name never does
            assert any(k in text for k in ("(loopback)", "(loopback, IPv4-mapped)",
                                           "(unspecified)", "localhost does not resolve")), url
    assert sink.connections == 0 and sink.requests == []
    async with guarded_client(LOOPBACK) as client:  # positive control: the same server
        for url in (sink.url(), sink.url(host="localhost")):
            assert (await client.post(url, content=b"x")).status_code == 200
    assert [r.path for r in sink.requests] == ["/hook", "/hook"]


async def test_a_name_resolving_to_loopback_is_refused_by_name(sink):
    async with guarded_client(NONE) as client:
        with pytest.raises(EgressRefused) as info:
            await client.get(sink.url(host="localhost"))
    assert str(info.value) == (
        "refused: localhost does not resolve to a public address; webhooks may reach it only "
        "if CAIRN_ROUTER_WEBHOOK_ALLOW lists it")
    async with guarded_client(EgressPolicy.parse("localhost")) as client:  # a listed host
        assert (await client.get(sink.url(host="localhost"))).status_code == 200
    assert sink.connections == 1


async def test_the_setting_is_read_from_the_environment(sink, monkeypatch):
    monkeypatch.delenv("CAIRN_ROUTER_WEBHOOK_ALLOW", raising=False)
    async with guarded_client() as client:
        with pytest.raises(EgressRefused):
            await client.get(sink.url())
    monkeypatch.setenv("CAIRN_ROUTER_WEBHOOK_ALLOW", "127.0.0.0/8")
    async with guarded_client() as client:
        assert (await client.get(sink.url())).status_code == 200


async def test_a_refused_webhook_is_not_retried(sink):
    async with guarded_client(NONE) as client:
        result = await webhook.run(hook(sink.url(), attempts=5), client)
    assert (result.ok, result.attempts, result.status) == (False, 1, None)
    assert result.error.startswith("refused: 127.0.0.1 is not a public address (loopback)")
    async with guarded_client(LOOPBACK) as client:
        assert (await webhook.run(hook(sink.url(), attempts=5), client)).ok
    assert len(sink.requests) == 1


async def test_a_name_that_does_not_resolve_looks_like_one_that_resolves_inside(sink):
    """Dead letters must not map the router's DNS: same message, same single attempt."""
    async with guarded_client(NONE) as client:
        inside = await webhook.run(hook(sink.url(host="localhost"), attempts=5), client)
        nowhere = await webhook.run(hook(sink.url(host="no-such-host.invalid"), attempts=5),
                                    client)
    assert (inside.ok, inside.attempts, inside.status) == (False, 1, None)
    assert (nowhere.ok, nowhere.attempts, nowhere.status) == (False, 1, None)
    assert nowhere.error == inside.error.replace("localhost", "no-such-host.invalid") == (
        "refused: no-such-host.invalid does not resolve to a public address; webhooks may "
        "reach it only if CAIRN_ROUTER_WEBHOOK_ALLOW lists it")
    # a name the operator listed may say it does not resolve (and is retried)
    async with guarded_client(EgressPolicy.parse("no-such-host.invalid")) as client:
        listed = await webhook.run(hook(sink.url(host="no-such-host.invalid"), attempts=2),
                                   client)
    assert listed.attempts == 2 and "cannot resolve no-such-host.invalid" in listed.error
    async with guarded_client(EgressPolicy.parse("localhost")) as client:  # control
        assert (await webhook.run(hook(sink.url(host="localhost")), client)).ok
    assert sink.connections == 1


async def test_headers_the_client_owns_are_refused_at_run_time_too(sink):
    """Parsing refuses them; run() refuses them again, whoever built the action."""
    smuggle = WebhookOut(url=sink.url(), method="POST", body=b"{}", safe_url=sink.url(),
                         headers={"Host": "internal.corp", "X-Trace": "1"})
    async with guarded_client(LOOPBACK) as client:
        result = await webhook.run(smuggle, client)
        assert (result.ok, result.attempts) == (False, 0)
        assert result.error == ("refused: Host is set by the router's HTTP client, not by "
                                "rules")
        assert sink.connections == 0
        fine = WebhookOut(url=sink.url(), method="POST", body=b"{}", safe_url=sink.url(),
                          headers={"X-Trace": "1"})
        assert (await webhook.run(fine, client)).ok
    assert sink.requests[0].headers["host"] == f"127.0.0.1:{sink.port}"
    assert sink.requests[0].headers["x-trace"] == "1"


async def test_redirects_are_not_followed(sink):
    sink.reply = respond(302, extra="location: http://169.254.169.254/latest/meta-data/\r\n")
    async with guarded_client(LOOPBACK) as client:
        result = await webhook.run(hook(sink.url()), client)
    assert (result.ok, result.status, result.attempts) == (False, 302, 1)
    assert len(sink.requests) == 1


async def test_a_response_body_reaches_the_dead_letter_only_as_a_short_clean_excerpt(sink):
    evil = "\x1b[31mred\x00\u202eevil\r\nInjected: header\u200b " + "A" * 10_000
    sink.reply = respond(400, evil.encode())
    async with guarded_client(LOOPBACK) as client:
        result = await webhook.run(hook(sink.url()), client)
    assert not result.ok and result.status == 400
    snippet = result.error.removeprefix("HTTP 400: ")
    assert len(snippet) <= webhook.EXCERPT == 200
    assert snippet.startswith("\\u001b[31mred\\u0000\\u202eevil Injected: header\\u200b AAA")
    assert snippet.endswith("…") and snippet.isprintable()
    sink.reply = respond(404, b"not here")  # control: a short, clean body is kept as is
    async with guarded_client(LOOPBACK) as client:
        assert (await webhook.run(hook(sink.url()), client)).error == "HTTP 404: not here"


def test_excerpt():
    assert webhook.excerpt("a\tb\n\n c") == "a b c"
    assert webhook.excerpt("x" * 300) == "x" * 199 + "…"
    assert webhook.excerpt("\x07" * 100) == "\\u0007" * 33 + "…"


async def test_an_attempt_that_never_answers_ends_at_its_timeout(sink):
    release = asyncio.Event()
    sink.reply = hang(release)
    try:
        async with guarded_client(LOOPBACK) as client:
            result = await webhook.run(hook(sink.url(), attempts=2, timeout=0.3), client)
    finally:
        release.set()
    assert result.error == "timed out after 0.3s (gave up after 2 attempts)"
    assert len(sink.requests) == 2


async def test_a_slow_drip_body_cannot_outlast_the_timeout(sink):
    release = asyncio.Event()
    sink.reply = drip(release)  # every read arrives in time; the whole never does
    try:
        async with guarded_client(LOOPBACK) as client:
            result = await webhook.run(hook(sink.url(), attempts=1, timeout=0.5), client)
    finally:
        release.set()
    assert result.error == "timed out after 0.5s (gave up after 1 attempts)"


async def test_a_hand_built_action_past_the_bounds_is_capped_at_run_time(sink):
    """Parsing refuses such values; run() caps them again, whoever built the action."""
    sink.reply = respond(503)
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)

    async with guarded_client(LOOPBACK) as client:
        result = await webhook.run(hook(sink.url(), attempts=50, backoff=900), client,
                                   sleep=sleep)
    assert (MAX_ATTEMPTS, MAX_BACKOFF) == (10, 30.0)
    assert result.attempts == MAX_ATTEMPTS and len(sink.requests) == MAX_ATTEMPTS
    assert sleeps == [MAX_BACKOFF] * (MAX_ATTEMPTS - 1)


# ----------------------------------------------------------------------------- TLS

def _tls_server_context(tmp_path):
    """A CA and a certificate for the name `localhost` only (no IP address in it)."""
    now = dt.datetime.now(dt.UTC)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context, tmp_path / "ca.pem"


async def test_tls_verifies_the_url_host_name_while_connecting_to_the_checked_address(
        tmp_path, monkeypatch):
    context, ca = _tls_server_context(tmp_path)
    seen: list[bytes] = []

    async def serve(reader, writer):
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    try:
        async with guarded_client(LOOPBACK) as client:
            # connects to 127.0.0.1 (checked) and verifies the certificate for "localhost"
            response = await client.get(f"https://localhost:{port}/x")
            assert response.status_code == 200
            assert b"host: localhost" in seen[0].lower()
            # the certificate names no address: asked for by address, verification fails
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await client.get(f"https://127.0.0.1:{port}/x")
    finally:
        server.close()
        await server.wait_closed()
    assert len(seen) == 1
