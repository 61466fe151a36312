"""The webhook HTTP client: every connection goes to an address the egress policy allowed.

Checking the URL is not enough: a name can resolve to 127.0.0.1, or resolve once to a
public address for the check and again to a private one for the connection (DNS
rebinding). So this client's network backend resolves the name itself (non-blocking,
`loop.getaddrinfo`), drops every address `addresses.EgressPolicy` refuses, and connects to
one it checked. TLS still verifies the certificate against the URL's host name (httpcore
passes it as the server name), and the Host header is the URL's. No proxies (a proxy would
connect on our behalf, unchecked), no redirects, no unix sockets.

A name that does not resolve is refused with the very message (and, not retried, the same
single attempt) of a name that resolves only to non-public addresses: a rule author must
not learn from dead letters which internal names exist. (A name the policy lists is the
operator's to reveal: its failure to resolve is a retried connection error. So is a
resolver that times out.)

The policy is one tenant's (`EgressPolicy.from_environ(tenant=slug)`), so each tenant
runtime has a client of its own: a shared pool would also share kept-alive connections,
opened under another tenant's allowlist.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from rule_router.addresses import (
    EgressPolicy,
    IPAddress,
    name_refusal,
    normal_host,
    parse_ip,
)
from rule_router.errors import EgressRefused


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's AnyIO backend, behind a resolve-check-connect step."""

    def __init__(self, policy: EgressPolicy,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        allowed, refusal = [], None
        for ip in await self._resolve(host, port, timeout):
            why = self.policy.refusal(host, ip)
            if why is None:
                allowed.append(ip)
            else:
                refusal = refusal or why
        if not allowed:
            raise EgressRefused(refusal or name_refusal(host))
        failure: Exception | None = None
        for ip in allowed:  # the checked addresses, and only those
            try:
                return await self.inner.connect_tcp(str(ip), port, timeout, local_address,
                                                    socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("refused: webhooks may not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = parse_ip(host)
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            if normal_host(host) in self.policy.hosts:  # listed: no secret to keep
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
            raise EgressRefused(name_refusal(host)) from None
        found: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]))
            if ip not in found:
                found.append(ip)
        return found


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a GuardedBackend under its connection pool."""

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(trust_env=False)
        # httpx has no public way to give its pool a network backend: build the pool here,
        # as httpx does for the no-proxy case
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy))


def guarded_client(policy: EgressPolicy | None = None) -> httpx.AsyncClient:
    """A webhook client; `policy` defaults to CAIRN_ROUTER_WEBHOOK_ALLOW's bare entries."""
    policy = EgressPolicy.from_environ() if policy is None else policy
    return httpx.AsyncClient(transport=GuardedTransport(policy), trust_env=False,
                             follow_redirects=False)
