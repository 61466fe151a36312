"""`python -m rule_router test|check` as a user runs them (subprocess, no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rule_router

ROOT = Path(__file__).resolve().parents[2]
SHORT = """\
subject: agents.*.telemetry.system
match: "cpu_percent > 90 and source != 'builtin'"
actions:
  - publish: "alerts.{@subject.1}.high-cpu"
    payload: '{"device": "{@subject.1}", "cpu": {cpu_percent}}'
  - webhook: "https://alerts.example.com/cpu"
    method: POST
    headers: {Authorization: "Bearer ${ALERT_TOKEN}"}
throttle: 5m
"""


ALLOW = {"CAIRN_ROUTER_ENV_ALLOW": "ALERT_TOKEN"}
SETTINGS = ("ALERT_TOKEN", "CAIRN_ROUTER_ENV_ALLOW", "CAIRN_ROUTER_WEBHOOK_ALLOW")


def run(*args, env=None, stdin=None):
    full_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "rule_router", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=60,
                          input=stdin)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "short.yaml").write_text(SHORT)
    (tmp_path / "fixed.yaml").write_text(
        "subject: agents.web9.telemetry.system\nmatch: 'cpu_percent > 90'\n"
        "actions: [{publish: 'alerts.{@subject.1}'}]\n")
    (tmp_path / "hot.json").write_text('{"cpu_percent": 95, "source": "node_exporter"}')
    (tmp_path / "cool.json").write_text('{"cpu_percent": 5, "source": "node_exporter"}')
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "bad.yaml").write_text("actions: [{publish: alerts.a}]\n\nmatch: 'cpu >'\n")
    return tmp_path


def test_test_prints_what_would_fire_with_secrets_masked(files):
    r = run("test", str(files / "short.yaml"), str(files / "hot.json"),
            "--subject", "agents.web1.telemetry.system", env={"ALERT_TOKEN": "s3cret", **ALLOW})
    assert r.returncode == 0, r.stderr
    assert "MATCH" in r.stdout
    assert "publish alerts.web1.high-cpu" in r.stdout
    assert 'payload: {"device": "web1", "cpu": 95}' in r.stdout
    assert "webhook POST https://alerts.example.com/cpu" in r.stdout
    assert "header Authorization: Bearer ***" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr
    assert "throttle" in r.stdout


def test_test_no_match_is_exit_0(files):
    r = run("test", str(files / "short.yaml"), str(files / "cool.json"),
            "--subject", "agents.web1.telemetry.system", env={"ALERT_TOKEN": "x", **ALLOW})
    assert r.returncode == 0 and "no match" in r.stdout


def test_test_subject_defaults_to_a_filter_without_wildcards(files):
    r = run("test", str(files / "fixed.yaml"), str(files / "hot.json"))
    assert r.returncode == 0, r.stderr
    assert "publish alerts.web9" in r.stdout


def test_test_wildcard_filter_needs_subject(files):
    r = run("test", str(files / "short.yaml"), str(files / "hot.json"), "--no-env-check",
            env=ALLOW)
    assert r.returncode == 2
    assert "--subject" in r.stderr and "wildcards" in r.stderr


def test_test_invalid_rule_is_exit_1_with_file_and_line(files):
    r = run("test", str(files / "bad.yaml"), str(files / "hot.json"))
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"{files / 'bad.yaml'}:3: match:")


def test_test_missing_env_is_a_rule_error_unless_skipped(files):
    r = run("test", str(files / "short.yaml"), str(files / "hot.json"),
            "--subject", "agents.web1.telemetry.system", env=ALLOW)
    assert r.returncode == 1 and "ALERT_TOKEN is not set" in r.stderr
    assert ":8:" in r.stderr
    r = run("test", str(files / "short.yaml"), str(files / "hot.json"),
            "--subject", "agents.web1.telemetry.system", "--no-env-check", env=ALLOW)
    assert r.returncode == 0 and "Bearer ***" in r.stdout


def test_unlisted_env_is_refused_even_without_the_env_check(files):
    """The CLI applies the router's allowlist, read from the environment like the router."""
    for extra in ((), ("--no-env-check",)):
        r = run("test", str(files / "short.yaml"), str(files / "hot.json"),
                "--subject", "agents.web1.telemetry.system", *extra,
                env={"ALERT_TOKEN": "s3cret"})
        assert r.returncode == 1
        assert "${ALERT_TOKEN} is not allowed: list it in CAIRN_ROUTER_ENV_ALLOW" in r.stderr
        assert "s3cret" not in r.stdout + r.stderr
    r = run("check", str(files / "short.yaml"), env={"ALERT_TOKEN": "s3cret"})
    assert r.returncode == 1 and "is not allowed" in r.stdout
    r = run("check", str(files / "short.yaml"), env={"ALERT_TOKEN": "s3cret", **ALLOW})
    assert r.returncode == 0, r.stdout


def test_check_applies_the_webhook_allowlist_and_prints_warnings(files):
    (files / "local.yaml").write_text("actions: [{webhook: 'http://127.0.0.1:9/x'}]\n")
    (files / "loop.yaml").write_text(
        "subject: alerts.x.loop\nactions:\n  - publish: alerts.x.loop\n")
    r = run("check", str(files / "local.yaml"))
    assert r.returncode == 1 and "CAIRN_ROUTER_WEBHOOK_ALLOW" in r.stdout
    r = run("check", str(files / "local.yaml"), str(files / "loop.yaml"),
            env={"CAIRN_ROUTER_WEBHOOK_ALLOW": "127.0.0.1"})
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[1:] == [
        f"{files / 'loop.yaml'}: ok (1 rule)",
        f"{files / 'loop.yaml'}:3: warning: publishes to alerts.x.loop, which its own "
        "subject filter alerts.x.loop matches; the loop stops after 3 hops"]


def test_test_usage_errors_are_exit_2(files):
    assert run("test", str(files / "fixed.yaml"), str(files / "bad.json")).returncode == 2
    assert run("test", str(files / "fixed.yaml"), str(files / "none.json")).returncode == 2
    assert run("test", str(files / "none.yaml"), str(files / "hot.json")).returncode == 2
    r = run("test", str(files / "fixed.yaml"), str(files / "hot.json"), "--subject", "a.*")
    assert r.returncode == 2
    assert run("test").returncode == 2  # argparse


def test_test_reads_the_message_from_stdin(files):
    r = run("test", str(files / "fixed.yaml"), "-", stdin='{"cpu_percent": 99}')
    assert r.returncode == 0 and "MATCH" in r.stdout


def test_test_runtime_template_error_is_exit_1(files):
    (files / "t.yaml").write_text("subject: alerts.b\nactions: [{publish: 'alerts.{host}'}]\n")
    r = run("test", str(files / "t.yaml"), str(files / "hot.json"))
    assert r.returncode == 1 and "field 'host' is missing" in r.stdout


def test_check(files):
    example = Path(rule_router.__file__).parent / "example.rules.yaml"
    r = run("check", str(example), str(files / "fixed.yaml"), env={"ALERT_TOKEN": "x", **ALLOW})
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines() == [f"{example}: ok (5 rules)",
                                     f"{files / 'fixed.yaml'}: ok (1 rule)"]
    r = run("check", str(files / "fixed.yaml"), str(files / "bad.yaml"), str(files / "x.yaml"))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0] == f"{files / 'fixed.yaml'}: ok (1 rule)"
    assert lines[1].startswith(f"{files / 'bad.yaml'}:3: match: expected a field or a value")
    assert lines[2].startswith(f"{files / 'x.yaml'}: cannot read")


def test_test_regex_running_out_of_time_is_exit_1(files):
    (files / "slow.yaml").write_text(
        "subject: alerts.b\nmatch: \"host matches '^(a|aa)+$'\"\nactions: [{publish: alerts.x}]\n")
    (files / "slow.json").write_text('{"host": "' + "a" * 80 + '!"}')
    r = run("test", str(files / "slow.yaml"), str(files / "slow.json"))
    assert r.returncode == 1
    assert "no match, the condition ran out of time" in r.stdout
    assert "took longer than 20 ms" in r.stdout


def test_tenant_scoped_entries_count_only_with_that_tenant(files):
    """`--tenant SLUG` judges a file as that tenant's rows are judged; without it, or for
    another tenant, a scoped entry is as good as absent."""
    env = {"ALERT_TOKEN": "s3cret", "CAIRN_ROUTER_ENV_ALLOW": "a-slug:ALERT_TOKEN",
           "CAIRN_ROUTER_WEBHOOK_ALLOW": "a-slug:127.0.0.1"}
    (files / "local.yaml").write_text("actions: [{webhook: 'http://127.0.0.1:9/x'}]\n")
    args = ("test", str(files / "short.yaml"), str(files / "hot.json"),
            "--subject", "agents.web1.telemetry.system")
    r = run(*args, "--tenant", "a-slug", env=env)
    assert r.returncode == 0, r.stderr
    assert "Bearer ***" in r.stdout and "s3cret" not in r.stdout + r.stderr
    for extra in ((), ("--tenant", "b-slug")):
        r = run(*args, *extra, env=env)
        assert r.returncode == 1
        assert r.stderr.strip().endswith(
            "${ALERT_TOKEN} is not allowed: list it in CAIRN_ROUTER_ENV_ALLOW")
        r = run("check", str(files / "local.yaml"), *extra, env=env)
        assert r.returncode == 1 and "CAIRN_ROUTER_WEBHOOK_ALLOW lists it" in r.stdout
    r = run("check", str(files / "short.yaml"), str(files / "local.yaml"), "--tenant",
            "a-slug", env=env)
    assert r.returncode == 0, r.stdout
