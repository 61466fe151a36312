"""Session fixtures that run the real servers: nats-server (operator mode) and PocketBase.

Both start once per test session on free loopback ports in a temp dir; their log tails are
attached to the report of any failing test.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cairn_common import audit_key
from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBase
from cairn_stack.nats import start_nats
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import ManagedProcess, free_port
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.config import BridgeConfig
from pb_hooks_bridge.sidecar_logins import ensure_sidecar_login
from rule_router.identity import IdentityFiles, RouterIdentity
from tests import factories
from tests.live import BridgeHandle

_RUNNING: list[ManagedProcess] = []


@dataclass
class NatsEnv:
    layout: DataLayout
    port: int
    monitor_port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def restart(self, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`: a crash) and start again."""
        if kill:
            self.process.kill()
        self.stop()
        self.start()

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process = start_nats(self.layout, self.port, self.monitor_port)
        _RUNNING.append(self.process)


@dataclass
class PbEnv:
    layout: DataLayout
    port: int
    admin_email: str
    admin_password: str
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin_token(self) -> str:
        resp = httpx.post(
            f"{self.url}/api/collections/_superusers/auth-with-password",
            json={"identity": self.admin_email, "password": self.admin_password},
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json()["token"]

    def restart(self, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`: a crash) and start again."""
        if kill:
            self.process.kill()
        self.process.stop()
        self.process = start_pocketbase(self.layout, self.port)
        _RUNNING.append(self.process)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def nats_env(stack_dir: Path) -> Iterator[NatsEnv]:
    layout = DataLayout(stack_dir)
    bootstrap(layout)
    # The session makes hundreds of tenants, each reserving its JetStream quota against
    # the server's store (docs/decisions/0003): reserve room for all of them.
    os.environ.setdefault("CAIRN_NATS_MAX_FILE_STORE", "64TB")
    os.environ.setdefault("CAIRN_NATS_MAX_MEMORY_STORE", "64GB")
    port, monitor = free_port(), free_port()
    env = NatsEnv(layout, port, monitor, start_nats(layout, port, monitor))
    _RUNNING.append(env.process)
    yield env
    env.process.stop()


@pytest.fixture(scope="session")
def pb_env(stack_dir: Path) -> Iterator[PbEnv]:
    layout = DataLayout(stack_dir)
    email, password = "admin@cairn.test", secrets.token_urlsafe(18)
    upsert_superuser(layout, email, password)  # also applies the migrations
    port = free_port()
    env = PbEnv(layout, port, email, password, start_pocketbase(layout, port))
    _RUNNING.append(env.process)
    factories.AUDIT_KEY = audit_key.read(layout) or ""
    # The suite logs in hundreds of users and devices from one address: the migration's
    # auth rate limits (tests/security/test_rate_limits.py tests them on a PocketBase of
    # their own) would refuse most of them.
    set_rate_limits(env, enabled=False)
    yield env
    env.process.stop()


def set_rate_limits(env: PbEnv, enabled: bool) -> None:
    resp = httpx.patch(f"{env.url}/api/settings", json={"rateLimits": {"enabled": enabled}},
                       headers={"Authorization": env.admin_token()}, timeout=10)
    resp.raise_for_status()


@pytest.fixture(scope="session")
def pb_admin(pb_env: PbEnv) -> Iterator[httpx.Client]:
    """A synchronous REST client authenticated as the superuser."""
    with httpx.Client(
        base_url=pb_env.url, headers={"Authorization": pb_env.admin_token()}, timeout=10
    ) as client:
        yield client


@pytest.fixture(scope="session")
async def bridge(nats_env, pb_env) -> AsyncIterator[BridgeHandle]:
    """A real bridge in this process, on the session's event loop."""
    config = BridgeConfig(
        data_dir=nats_env.layout.root, pb_url=pb_env.url, nats_url=nats_env.url,
        admin_email=pb_env.admin_email, admin_password=pb_env.admin_password,
        user_jwt_ttl=3600,
    )
    handle = BridgeHandle(config)
    await handle.start()
    yield handle
    await handle.stop()


@pytest.fixture(scope="session")
async def router_identity(bridge, admin, pb_env, stack_dir) -> RouterIdentity:
    """The router's own least-privilege login and key (what `make run` makes for it), with
    the key registered, so the bridge signs its JWT in every tenant."""
    files = IdentityFiles(login_file=stack_dir / "secrets" / "router-login.json",
                          seed_file=stack_dir / "secrets" / "router.nk")
    await ensure_sidecar_login(admin, "cairn-router", "router", files.login_file)
    identity = RouterIdentity(files)
    async with PocketBase(pb_env.url) as pb:
        await identity.sign_in(pb)
    return identity


@pytest.fixture(scope="session")
async def admin(pb_env) -> AsyncIterator[PocketBase]:
    pb = PocketBase(pb_env.url)
    await pb.auth_superuser(pb_env.admin_email, pb_env.admin_password)
    yield pb
    await pb.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.failed:
        for proc in {id(p): p for p in _RUNNING}.values():
            report.sections.append((f"{proc.name} log (tail)", proc.log_tail(30)))
    return report
