"""The demo fleet for `make run`: tenant `demo`, device `demo-1`, a service user whose creds
go to `$CAIRN_DATA_DIR/demo/admin.creds`, and a local agent enrolled as `demo-1`.

Idempotent: a second run finds everything and changes nothing it does not have to.
Everything under demo/ is private (0700 directories, 0600 files): admin.creds and the
device secret are secrets, and the scripts are run by extension, not by an exec bit.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cairn_common.filemodes import private_dir, write_private
from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBase
from cairn_stack.processes import ManagedProcess
from cairn_stack.settings import StackSettings
from cairn_stack.superuser import Superuser

TENANT = "demo"
DEVICE = "demo-1"
SERVICE_USER = "admin"

RULE_NAME = "high-cpu"
RULE = """# Demo rule (edit it here in the Admin UI; the router applies it within a second).
subject: agents.*.telemetry.system
match: "cpu_percent > 90"
actions:
  - publish: "alerts.{@subject.1}.high-cpu"
    payload: '{"device": "{@subject.1}", "cpu": {cpu_percent}, "at": "{@timestamp}"}'
throttle: 5m
"""

SCRIPTS = {
    "disk-usage.sh": """#!/bin/sh
# Prints the root filesystem usage as JSON (the agent returns JSON output as JSON).
df -P / | awk 'NR==2 {printf "{\\"mount\\": \\"%s\\", \\"used_percent\\": %d}\\n", $6, $5}'
""",
    "hello.py": """import json
import sys

# Arguments arrive as argv entries, never through a shell.
print(json.dumps({"hello": sys.argv[1:] or ["world"]}))
""",
}


PERSON_EMAIL = "demo@cairn.local"  # a person (users) who owns the demo tenant


@dataclass(frozen=True)
class Demo:
    agent_config: Path
    admin_creds: Path
    person_email: str = PERSON_EMAIL
    person_file: Path | None = None  # {"email", "password"} of the demo's dashboard user


async def prepare(settings: StackSettings, layout: DataLayout, admin: Superuser) -> Demo:
    from agent.enrollment import EnrollRequest, enroll

    demo_dir = private_dir(layout.demo_dir)
    async with PocketBase(settings.pb_url) as pb:
        await pb.auth_superuser(admin.email, admin.password)
        tenant = await pb.first("tenants", f'slug = "{TENANT}"') or await pb.create(
            "tenants", {"name": "Demo", "slug": TENANT, "active": True})
        await _wait(lambda: _provisioned(pb, tenant["id"]), "the demo tenant's NATS account")
        secret_file = demo_dir / "device.secret"
        fresh = not secret_file.exists()
        secret = _device_secret(secret_file)
        await _device(pb, tenant["id"], secret, fresh)
        row = await pb.first("nats_users", f'tenant = "{tenant["id"]}" && name = "{SERVICE_USER}"')
        if row is None:
            row = await pb.create("nats_users", {"tenant": tenant["id"], "name": SERVICE_USER,
                                                 "role": "service", "active": True})
        user = await _wait(lambda: _with_creds(pb, row["id"]), "the demo admin creds")
        if await pb.first("rules", f'tenant = "{tenant["id"]}" && name = "{RULE_NAME}"') is None:
            await pb.create("rules", {"tenant": tenant["id"], "name": RULE_NAME,
                                      "enabled": True, "yaml": RULE})
        person_file = await _person(pb, tenant["id"], demo_dir / "person.json")
        admin_creds = demo_dir / "admin.creds"
        if not admin_creds.exists() or admin_creds.read_text() != user["creds"]:
            write_private(admin_creds, user["creds"])
    agent_dir = demo_dir / "agent"
    config = _agent_config(agent_dir, settings, layout)
    await enroll(EnrollRequest(server=settings.pb_url, code=DEVICE, tenant=TENANT,
                               directory=agent_dir, nats_urls=settings.nats_urls,
                               secret=secret))
    return Demo(config, admin_creds, PERSON_EMAIL, person_file)


async def _person(pb: PocketBase, tenant_id: str, path: Path) -> Path:
    """The demo's dashboard login: a user owning the demo tenant, password kept 0600."""
    try:
        password = json.loads(await asyncio.to_thread(path.read_text))["password"]
    except (OSError, ValueError, KeyError, TypeError):
        password = secrets.token_urlsafe(12)
    user = await pb.first("users", f'email = "{PERSON_EMAIL}"')
    body = {"email": PERSON_EMAIL, "password": password, "passwordConfirm": password,
            "verified": True, "name": "Demo owner"}
    user = await (pb.update("users", user["id"], body) if user else pb.create("users", body))
    if await pb.first("memberships", f'user = "{user["id"]}" && tenant = "{tenant_id}"') is None:
        await pb.create("memberships", {"user": user["id"], "tenant": tenant_id,
                                        "role": "owner"})
    write_private(path, json.dumps({"email": PERSON_EMAIL, "password": password}) + "\n")
    return path


def agent_process(demo: Demo, layout: DataLayout) -> ManagedProcess:
    return ManagedProcess(
        name="cairn-agent (demo-1)",
        argv=[sys.executable, "-m", "agent", "run", "--config", str(demo.agent_config)],
        log_path=layout.logs_dir / "cairn-agent.log",
    )


def _device_secret(secret_file: Path) -> str:
    """The demo device's enrollment secret, generated once and kept (0600)."""
    if secret_file.exists():
        return secret_file.read_text().strip()
    secret = "demo-" + secrets.token_urlsafe(18)
    write_private(secret_file, secret + "\n")
    return secret


async def _device(pb: PocketBase, tenant_id: str, secret: str, fresh: bool) -> None:
    device = await pb.first("devices", f'tenant = "{tenant_id}" && code = "{DEVICE}"')
    if device is None:
        await pb.create("devices", {"tenant": tenant_id, "code": DEVICE,
                                    "name": "Local demo agent", "password": secret,
                                    "passwordConfirm": secret})
    elif fresh:  # the kept secret was lost: give the device the new one
        await pb.update("devices", device["id"], {"password": secret,
                                                  "passwordConfirm": secret})
    # an existing device keeps its state: an admin may have disabled it on purpose, and
    # enrollment will then say so


def _agent_config(agent_dir: Path, settings: StackSettings, layout: DataLayout) -> Path:
    scripts = private_dir(agent_dir / "scripts")
    for name, body in SCRIPTS.items():
        path = scripts / name
        if not path.exists():
            write_private(path, body)
    path = agent_dir / "agent.yaml"
    if not path.exists():
        doc = {
            "device": {"code": DEVICE, "tenant": TENANT},
            "server": {"url": settings.pb_url, "secret_file": "agent.secret"},
            "nats": {"urls": list(settings.nats_urls), "creds_file": "agent.creds",
                     "seed_file": "agent.nk"},
            "intervals": {"heartbeat": "60s", "system": "5m", "service": "60s",
                          "inventory": "24h"},
            "commands": {"allowed": ["uptime", "df -h", "hostname"],
                         "scripts_directory": "scripts", "timeout": "30s"},
            "services": {"allowed": ["cron", "ssh"], "watch": []},
            "logs": {"allowed_paths": [str(layout.logs_dir / "*.log")]},
        }
        write_private(path, HEADER + yaml.safe_dump(doc, sort_keys=False))
    else:
        _follow_nodes(path, settings)
    return path


HEADER = "# Demo agent for `make run` (edit freely; kept across runs).\n"


def _follow_nodes(path: Path, settings: StackSettings) -> None:
    """Keep the demo agent's `nats.urls` in step with CAIRN_NATS_NODES (one node, or every
    node of the local cluster); the rest of the file is left as it is."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        nats = doc.setdefault("nats", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return  # the agent reports a broken file itself
    if not isinstance(nats, dict) or nats.get("urls") == list(settings.nats_urls):
        return
    nats["urls"] = list(settings.nats_urls)
    write_private(path, HEADER + yaml.safe_dump(doc, sort_keys=False))


async def _provisioned(pb: PocketBase, tenant_id: str) -> bool:
    return bool((await pb.get("tenants", tenant_id)).get("nats_account_public_key"))


async def _with_creds(pb: PocketBase, row_id: str) -> dict | None:
    row = await pb.get("nats_users", row_id)
    return row if row.get("creds") else None


async def _wait(check, what: str, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} did not appear within {timeout:.0f} s; see the bridge log")
