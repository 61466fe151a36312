"""Run the real PocketBase with our migrations, and create its superuser.

pocketbase/ holds data.db (every tenant's account seeds) and auxiliary.db: it is made 0700
before PocketBase runs, and PocketBase runs with umask 077, so its files are 0600.
"""

from __future__ import annotations

import subprocess

from cairn_common import audit_key
from cairn_common.filemodes import private_dir
from cairn_common.layout import DataLayout
from cairn_stack.nats import REPO_ROOT
from cairn_stack.processes import CHILD_UMASK, ManagedProcess, ProcessError, binary, http_ok

MIGRATIONS_DIR = REPO_ROOT / "pb_migrations"
HOOKS_DIR = REPO_ROOT / "pb_hooks"  # JS hooks PocketBase runs itself (no lost updates)
PUBLIC_DIR = REPO_ROOT / "pb_public"  # the dashboard, served at /


def pb_argv(layout: DataLayout, *args: str) -> list[str]:
    """Flags first: anything after a "--" in args stays positional."""
    return [
        binary("pocketbase"),
        "--dir", str(layout.pb_dir),
        "--migrationsDir", str(MIGRATIONS_DIR),
        "--hooksDir", str(HOOKS_DIR),
        "--publicDir", str(PUBLIC_DIR),
        *args,
    ]


def pocketbase_process(layout: DataLayout, port: int,
                       env: dict[str, str] | None = None) -> ManagedProcess:
    private_dir(layout.pb_dir)
    return ManagedProcess(
        name="pocketbase",
        # --automigrate=false: Admin UI edits must not write migration files into the repo.
        argv=[*pb_argv(layout, "serve", f"--http=127.0.0.1:{port}"), "--automigrate=false"],
        log_path=layout.logs_dir / "pocketbase.log",
        # only Cairn's components, which read secrets/audit.key, write audit_log rows
        env={**(env or {}), audit_key.ENV: audit_key.ensure(layout)},
    )


def start_pocketbase(layout: DataLayout, port: int, timeout: float = 30,
                     env: dict[str, str] | None = None) -> ManagedProcess:
    """`env`: e.g. CAIRN_NATS_WS_URLS, which the dashboard asks for (pb_hooks/dashboard.pb.js)."""
    proc = pocketbase_process(layout, port, env)
    proc.start()
    try:
        proc.wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/api/health"), timeout, "PocketBase healthy"
        )
    except ProcessError:
        proc.stop()  # never leave a half-started server behind
        raise
    return proc


def run_pb_command(layout: DataLayout, *args: str, stdin: str | None = None) -> str:
    """Run a one-shot `pocketbase` subcommand (migrate, superuser) and return its output."""
    private_dir(layout.pb_dir)
    done = subprocess.run(
        pb_argv(layout, *args), input=stdin, capture_output=True, text=True, timeout=60,
        umask=CHILD_UMASK,
    )
    if done.returncode != 0:
        raise ProcessError(
            f"pocketbase {' '.join(args[:2])} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def upsert_superuser(layout: DataLayout, email: str, password: str) -> None:
    # "--": a password may start with "-" and must not be read as a flag
    run_pb_command(layout, "superuser", "upsert", "--", email, password)
