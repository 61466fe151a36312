"""Helpers for tests against the live stack: the in-process bridge handle and async
functions that drive PocketBase and NATS like a user or an agent would."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.aio.client import Client as NATS

from cairn_common import nkey
from cairn_common.natsauth import connect_options
from cairn_common.pocketbase import PocketBase
from pb_hooks_bridge.app import Bridge
from pb_hooks_bridge.config import BridgeConfig

DEVICE_PASSWORD = "enroll-secret-123"


SCRIPT_SLEEP = "#!/bin/sh\nsleep \"$1\"\necho slept\n"


def write_agent_config(directory: Path, code: str, pb_url: str, nats_url: str,
                       tenant: str = "") -> Path:
    """An agent.yaml for tests: fast heartbeat, a scripts dir (nap.sh, facts.py, canary.sh),
    a log file, and a small whitelist. `tenant`: the slug (the login is <tenant>/<code>)."""
    scripts = directory / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    scripts.chmod(0o755)  # the agent refuses a scripts dir others may write (any umask)
    (scripts / "nap.sh").write_text(SCRIPT_SLEEP)
    (scripts / "facts.py").write_text("import json\nprint(json.dumps({'answer': 42}))\n")
    (scripts / "canary.sh").write_text('#!/bin/sh\necho ran >> "$1"\necho ok\n')
    log = directory / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    doc = {
        "device": {"code": code, **({"tenant": tenant} if tenant else {})},
        "server": {"url": pb_url, "secret_file": "agent.secret"},
        "nats": {"urls": [nats_url]},
        "intervals": {"heartbeat": 1, "system": 3600, "inventory": 3600},
        "exporters": ["http://127.0.0.1:9/metrics"],
        "commands": {"allowed": ["true", "echo hello"], "scripts_directory": str(scripts),
                     "timeout": 10},
        "logs": {"allowed_paths": [str(directory / "*.log")]},
    }
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# A sidecar's key reaches every tenant of the shared test bridge in turn (about 35 ms a
# tenant, `python -m bench sidecar-rollout`), and late in the suite there are hundreds of
# tenants; a tenant created meanwhile waits behind that rollout too (up to ~10 s measured).
ROLLOUT_WAIT = 60.0
ACCOUNT_WAIT = 30.0


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0,
                     what: str = "condition") -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


@dataclass
class BridgeHandle:
    config: BridgeConfig
    bridge: Bridge | None = None
    task: asyncio.Task[None] | None = None

    async def start(self) -> Bridge:
        self.bridge = Bridge(self.config)
        await self.bridge.start()
        self.task = asyncio.create_task(self._serve())
        await eventually(self._connected, 10, "bridge reconciled and following")
        return self.bridge

    async def _serve(self) -> None:
        """Like `cairn-bridge run`: a bridge that lost its leader lease starts over."""
        while self.bridge is not None:
            await self.bridge.run()
            if not self.bridge.lost_lease:
                return
            await self.bridge.stop()
            self.bridge = Bridge(self.config)
            await self.bridge.start()

    async def _connected(self) -> bool:
        from pb_hooks_bridge import metrics
        return bool(metrics.CONNECTED._value.get()) and not self.bridge.reconciler.lock.locked()

    async def kill(self) -> None:
        """Like a crash: in-flight work is dropped, nothing is drained or flushed."""
        if self.bridge is not None:
            for task in list(self.bridge.lanes.tasks):
                task.cancel()
            self.bridge.audit.queue.clear()
        await self.stop()

    async def stop(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        self.bridge, self.task = None, None


async def new_tenant(admin: PocketBase, **extra: Any) -> dict[str, Any]:
    slug = uid("t")
    return await admin.create("tenants", {"name": slug, "slug": slug, "active": True, **extra})


async def new_device(admin: PocketBase, tenant: dict[str, Any], **extra: Any) -> dict[str, Any]:
    code = uid("d")
    return await admin.create("devices", {
        "tenant": tenant["id"], "code": code, "name": code, "password": DEVICE_PASSWORD,
        "passwordConfirm": DEVICE_PASSWORD, **extra,
    })


async def new_member(admin: PocketBase, pb_url: str, tenant: dict[str, Any],
                     role: str) -> tuple[PocketBase, str]:
    """A user with `role` in the tenant, logged in: (their client, their user id). The
    caller closes the client."""
    email, password = f"{uid(role)}@cairn.test", secrets.token_urlsafe(12) + "aA1"
    user = await admin.create("users", {"email": email, "password": password,
                                        "passwordConfirm": password, "name": role})
    await admin.create("memberships", {"user": user["id"], "tenant": tenant["id"],
                                       "role": role})
    client = PocketBase(pb_url)
    await client.auth_with_password("users", email, password)
    return client, user["id"]


async def account_ready(admin: PocketBase, tenant: dict[str, Any]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        row = await admin.get("tenants", tenant["id"])
        return row if row.get("nats_account_public_key") else None
    return await eventually(check, ACCOUNT_WAIT, f"account for {tenant['slug']}")


@dataclass
class Enrolled:
    device: dict[str, Any]
    user: Any  # nkeys.KeyPair
    jwt: str

    @property
    def seed(self) -> str:
        return self.user.seed.decode()


async def enroll(pb_url: str, admin: PocketBase, device: dict[str, Any],
                 user: Any = None) -> Enrolled:
    """What the agent does: its own key, written to its own record, then wait for the JWT."""
    user = user or nkey.create("user")
    public = user.public_key.decode()
    async with PocketBase(pb_url) as as_device:
        await as_device.auth_with_password("devices", device["login"], DEVICE_PASSWORD)
        await as_device.update("devices", device["id"], {"nats_public_key": public})

    async def issued() -> dict[str, Any] | None:
        row = await admin.get("devices", device["id"])
        if row.get("nats_jwt") and row.get("status") == "active":
            from cairn_common import natsjwt
            if natsjwt.decode(row["nats_jwt"])["sub"] == public:
                return row
        return None

    row = await eventually(issued, 10, f"JWT for {device['code']}")
    return Enrolled(row, user, row["nats_jwt"])


async def connect(url: str, jwt: str, seed: str, errors: list[Exception] | None = None,
                  allow_reconnect: bool = False, **kwargs: Any) -> NATS:
    """A client authenticated with these creds; errors (e.g. authorization) are collected."""
    sink = errors if errors is not None else []

    async def on_error(exc: Exception) -> None:
        sink.append(exc)

    return await nats.connect(
        url, allow_reconnect=allow_reconnect, connect_timeout=5, error_cb=on_error, **kwargs,
        **connect_options(lambda: (jwt, seed)),
    )


@dataclass
class AgentSite:
    tenant: dict[str, Any]
    device: dict[str, Any]
    directory: Path
    config_path: Path


async def enrolled_agent_site(admin: PocketBase, pb_url: str, nats_url: str, directory: Path,
                              **tenant_extra: Any) -> AgentSite:
    """A provisioned tenant, a device, and an agent enrolled for it in `directory` (through
    the real enrollment flow) with the test agent.yaml; the agent itself is not started."""
    from agent.enrollment import EnrollRequest, enroll

    tenant = await account_ready(admin, await new_tenant(admin, **tenant_extra))
    device = await new_device(admin, tenant)
    config_path = write_agent_config(directory, device["code"], pb_url, nats_url,
                                     tenant["slug"])
    await enroll(EnrollRequest(server=pb_url, code=device["code"], tenant=tenant["slug"],
                               directory=directory, nats_urls=(nats_url,),
                               secret=DEVICE_PASSWORD))
    return AgentSite(tenant, device, directory, config_path)
