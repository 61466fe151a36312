"""The NATS servers the bridge has heard from, and which of them missed account pushes.

Fed by every reply that names its server (account pushes, `$SYS.REQ.SERVER.PING`) and by
the servers' own `$SYS.SERVER.<id>.STATSZ` events. A server that did not answer a push is
*owed*: when it is seen again (a restart gives it a new id, so a restart counts as a
return too) every account is pushed again (cluster_watch.py). One node: one entry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Server:
    name: str
    server_id: str
    up: bool = True
    owed: bool = False  # missed a push (or restarted): gets every account when seen up


class ServerRoster:
    def __init__(self) -> None:
        self.servers: dict[str, Server] = {}
        self.seeded = False  # a first survey ran: servers seen later joined (or came back)
        self.size_hint = 0  # the JetStream cluster size, counting peers that are offline
        self.returned = asyncio.Event()  # an owed server is up: re-push

    def expected(self) -> set[str]:
        """The servers a push should hear from: those believed up."""
        return {s.name for s in self.servers.values() if s.up}

    def saw(self, name: str, server_id: str, statsz: dict[str, Any] | None = None) -> None:
        if not name:
            return
        if statsz is not None:
            self._hint(statsz)
        known = self.servers.get(name)
        if known is None:
            self.servers[name] = known = Server(name, server_id, owed=self.seeded)
            if self.seeded:
                log.info("NATS server joined", extra={"server": name})
        elif known.server_id != server_id or not known.up:
            log.info("NATS server is back", extra={
                "server": name, "restarted": known.server_id != server_id})
            known.owed = known.owed or known.server_id != server_id
            known.server_id, known.up = server_id, True
        if known.owed:
            self.returned.set()

    def answered(self, names: set[str]) -> set[str]:
        """After a push (and its resends): every known server that did not answer missed
        it. Returns those that were believed up."""
        missing: set[str] = set()
        for server in self.servers.values():
            if server.name not in names:
                if server.up:
                    missing.add(server.name)
                server.up, server.owed = False, True
        return missing

    def surveyed(self, names: set[str]) -> None:
        """After a PING round: the known servers that did not answer are down."""
        for server in self.servers.values():
            if server.name not in names and server.up:
                log.warning("NATS server not answering", extra={"server": server.name})
                server.up = False
        self.seeded = True

    def take_owed(self) -> list[str]:
        """The owed servers that are up, no longer owed (a push they miss owes them again)."""
        self.returned.clear()
        owed = [s for s in self.servers.values() if s.owed and s.up]
        for server in owed:
            server.owed = False
        return [s.name for s in owed]

    def owe(self, names: list[str]) -> None:
        for name in names:
            if name in self.servers:
                self.servers[name].owed = True
        if names:
            self.returned.set()

    def _hint(self, statsz: dict[str, Any]) -> None:
        meta = (statsz.get("jetstream") or {}).get("meta") or {}
        size = meta.get("cluster_size")
        if isinstance(size, int) and size > 0:
            self.size_hint = size
