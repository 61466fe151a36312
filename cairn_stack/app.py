"""`make run`: bring the whole local stack up, print how to reach it, stop it on Ctrl-C.

Start order: private data dir -> keys (bootstrap) -> nats-server -> PocketBase (migrations,
superuser) -> cairn-bridge -> cairn-router -> (demo) tenant, device, service user, demo rule,
enrolled local agent.
Stop order is the reverse, each child SIGTERM'd and given time to drain.

Files (SPEC §11): the launcher owns the data dir. It runs with umask 077 (and so does every
child), makes the dir 0700 and tightens what an older run left open; what it cannot fix (a
symlink, another owner) stops it with the fix. The sidecars and the agent only check:
a loose secret at their start is refused, never silently fixed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError
from cairn_common import filemodes
from cairn_common.layout import DataLayout
from cairn_common.pocketbase import PocketBaseError
from cairn_stack import demo, superuser
from cairn_stack.cluster import cluster_conf, plan_nodes, start_cluster
from cairn_stack.nats import start_nats
from cairn_stack.pocketbase import start_pocketbase, upsert_superuser
from cairn_stack.processes import CHILD_UMASK, ManagedProcess, ProcessError, tcp_open
from cairn_stack.settings import StackSettings
from cairn_stack.sidecars import start_bridge, start_router
from pb_hooks_bridge.bootstrap import bootstrap
from pb_hooks_bridge.errors import BridgeError


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Stack:
    settings: StackSettings
    layout: DataLayout
    children: list[ManagedProcess] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        s = self.settings
        busy = [f"{name}={port}" for name, port in (
            *s.nats_ports(),
            ("CAIRN_PB_PORT", s.pb_port),
            ("CAIRN_BRIDGE_METRICS_PORT", s.bridge_metrics_port),
            ("CAIRN_ROUTER_METRICS_PORT", s.router_metrics_port),
        ) if tcp_open("127.0.0.1", port)]
        if busy:
            raise ProcessError(
                f"port already in use: {', '.join(busy)}. Is another stack running? "
                "Stop it, or choose other ports with those variables."
            )
        tightened = secure_data_dir(self.layout)
        if tightened:
            say(f"[0/5] {self.layout.root}: took group/other access off {len(tightened)} "
                "paths an older run left open (now 0700/0600)")
        say(f"[1/5] NATS operator keys in {self.layout.secrets_dir}")
        result = bootstrap(self.layout)
        say(f"      {'created' if result.changed else 'unchanged'}: operator "
            f"{result.operator_public[:12]}…, system account {result.system_account[:12]}…")
        self.start_nats()
        say(f"[3/5] PocketBase on {s.pb_url} (migrations from pb_migrations/)")
        self.admin = superuser.resolve(s, self.layout)
        upsert_superuser(self.layout, self.admin.email, self.admin.password)
        self.children.append(start_pocketbase(
            self.layout, s.pb_port, env={"CAIRN_NATS_WS_URLS": ",".join(s.nats_ws_urls)}))
        say(f"[4/5] cairn-bridge (metrics http://127.0.0.1:{s.bridge_metrics_port}/metrics)")
        self.children.append(start_bridge(s, self.layout, self.admin))
        say(f"[5/5] cairn-router (metrics http://127.0.0.1:{s.router_metrics_port}/metrics)")
        self.children.append(start_router(s, self.layout, self.admin))
        self.demo = None
        if s.demo:
            say("[demo] tenant 'demo', device 'demo-1', local agent enrolled as demo-1")
            self.demo = asyncio.run(demo.prepare(s, self.layout, self.admin))
            agent = demo.agent_process(self.demo, self.layout)
            agent.start()
            self.children.append(agent)
            agent.wait_until(lambda: _pings(s, self.demo), 30, "the demo agent answering ping")

    def start_nats(self) -> None:
        s = self.settings
        if s.nats_nodes == 1:
            say(f"[2/5] nats-server on {s.nats_url} (monitoring "
                f"http://127.0.0.1:{s.nats_monitor_port}, WebSocket {s.nats_ws_urls[0]})")
            self.children.append(start_nats(self.layout, s.nats_port, s.nats_monitor_port,
                                            ws_port=s.nats_ws_port))
            return
        nodes = plan_nodes(self.layout, s.nats_nodes, s.nats_port, s.nats_monitor_port,
                           s.nats_cluster_port, s.nats_ws_port)
        say(f"[2/5] nats-server cluster of {len(nodes)} nodes (streams R{s.nats_replicas}):")
        for node in nodes:
            say(f"      {node.name}: {node.url} (monitoring {node.monitor_url}, "
                f"routes {node.route}, state in {node.directory})")
        self.children.extend(start_cluster(self.layout, nodes))

    def banner(self) -> None:
        s = self.settings
        say("")
        say("Cairn is up.")
        say(f"  Admin UI:   {s.pb_url}/_/")
        say(f"  Dashboard:  {s.pb_url}/   (people log in there; NATS over WebSocket "
            f"{','.join(s.nats_ws_urls)})")
        if self.admin.generated_now:
            say(f"  Login:      {self.admin.email} / {self.admin.password}   "
                f"(generated now, shown once; kept in {self.layout.superuser_file})")
        else:
            say(f"  Login:      {self.admin.email} (password from "
                f"{'CAIRN_ADMIN_PASSWORD' if s.admin_password else self.layout.superuser_file})")
        say(f"  NATS:       {s.nats_url_list}")
        say(f"  Logs:       {self.layout.logs_dir}/")
        if self.demo is not None:
            creds = self.demo.admin_creds
            say("")
            say("Demo fleet: tenant 'demo', device 'demo-1' (a local cairn-agent); rule "
                "'high-cpu' publishes alerts.demo-1.high-cpu when cpu_percent > 90.")
            say(f"  Ping it:    .venv/bin/cairn-request --server {s.nats_url_list} --creds "
                f"{creds} agents.demo-1.cmd.ping")
            say(f"  or, with the nats CLI:  nats --server {s.nats_url_list} --creds {creds} "
                "request agents.demo-1.cmd.ping '{}'")
            if self.demo.person_file is not None:
                say(f"  Dashboard login: {self.demo.person_email} (password in "
                    f"{self.demo.person_file}); or as that person on the command line: "
                    f".venv/bin/cairn login --server {s.pb_url} --email "
                    f"{self.demo.person_email}")
        say("Press Ctrl-C to stop.")

    def wait(self) -> int:
        """Block until a signal (exit 0) or an unexpected child exit (exit 1). In cluster
        mode a NATS node's exit is reported and the others carry on (that is what the
        cluster is for); the stack stops when no node is left."""
        reported: set[int] = set()
        while not self.stopping.wait(0.5):
            for child in self.children:
                if child.running or id(child) in reported:
                    continue
                say(f"{child.name} exited unexpectedly; last log lines:\n{child.log_tail(20)}")
                if not self._cluster_node(child):
                    return 1
                reported.add(id(child))
                if not any(c.running for c in self.children if self._cluster_node(c)):
                    say("no NATS node left")
                    return 1
                say("the other NATS nodes carry on; restart the stack to bring it back")
        return 0

    def _cluster_node(self, child: ManagedProcess) -> bool:
        return self.settings.nats_nodes > 1 and child.name.startswith("nats-server ")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def secure_data_dir(layout: DataLayout) -> list[Path]:
    """Make the data dir 0700 and take group/other bits off what Cairn keeps in it (an older
    run may have left them open); then refuse, with the fix, whatever is still not private.
    Returns the paths that were tightened."""
    filemodes.private_dir(layout.root, tighten=False)
    changed = filemodes.tighten_tree(layout.root, recursive=False)
    for entry in layout.private_entries:
        changed += filemodes.tighten_tree(entry)
    filemodes.check_private(layout.root, "the Cairn data directory")
    for entry in layout.private_entries:
        filemodes.check_tree(entry, f"Cairn's {entry.name}",
                             links=(layout.nats_conf, cluster_conf(layout)))
    return changed


def _pings(settings: StackSettings, demo_fleet: demo.Demo) -> bool:
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cairn_stack.request", "--server", settings.nats_url_list,
         "--creds", str(demo_fleet.admin_creds), "--timeout", "1", "agents.demo-1.cmd.ping"],
        capture_output=True, text=True, timeout=15)
    try:
        return done.returncode == 0 and json.loads(done.stdout).get("status") == "pong"
    except ValueError:
        return False


def run(settings: StackSettings) -> int:
    os.umask(CHILD_UMASK)  # what the launcher itself writes (keys, login, demo files) is private
    stack = Stack(settings, DataLayout(settings.data_dir))

    def on_signal(signum: int, _frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        stack.banner()
        code = stack.wait()
    except (ProcessError, TimeoutError, AgentError, BridgeError, PocketBaseError,
            filemodes.NotPrivateError) as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        say("stopping…")
        stack.stop()
    say("stopped.")
    return code
