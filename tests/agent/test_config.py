"""agent.yaml: the example loads, bad files name the key, desired config cannot widen
whitelists, and the CLI's check-config / install-service / version behave."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config as config_mod
from agent import desired
from agent.errors import ConfigError
from agent.service_install import plan

EXAMPLE = Path(__file__).resolve().parents[2] / "agent" / "agent.example.yaml"


def test_example_config_loads_through_the_real_loader():
    config = config_mod.load(EXAMPLE)
    assert config.device.code == "web-01"
    assert config.intervals.system == 300.0 and config.intervals.inventory == 86400.0
    assert config.commands.allowed == ("uptime", "df -h")
    assert config.path(config.nats.creds_file) == EXAMPLE.parent / "agent.creds"
    assert config.exporters_allowed == ("http://127.0.0.1:91??/metrics",)
    assert config.local_exporters == config.exporters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("device: {code: ok-1}\nbogus: 1\n", "unknown key 'bogus'"),
        ("device: {code: ok-1}\nnats: {urlz: []}\n", "unknown key 'nats.urlz'"),
        ("device: {code: ok-1}\ncommands: {timeout: soon}\n", "commands.timeout must be a "
                                                               "positive duration"),
        ("device: {code: ok-1}\ncommands: {max_output_bytes: '1k'}\n",
         "commands.max_output_bytes must be an integer"),
        ("device: {code: ok-1}\nservices: {allowed: nginx}\n", "services.allowed must be a list"),
        ("device: {code: ok-1}\nlogs: {allowed_paths: [1]}\n", "logs.allowed_paths[0]"),
        ("device: {code: ok-1}\nintervals: {heartbeat: -5}\n", "greater than zero"),
        ("device: {code: ok-1}\nintervals: {heartbeat: 500ms}\n",
         "intervals.heartbeat is 0.5 s; it must be between 1 s and 24 h"),
        ("device: {code: ok-1}\nintervals: {system: 2d}\n",
         "intervals.system is 2 d; it must be between 1 s and 24 h"),
        ("device: {code: ok-1}\nintervals: {inventory: 30s}\n",
         "intervals.inventory is 30 s; it must be between 60 s and 7 d"),
        ("device: {code: ok-1}\nintervals: {service: .inf}\n", "intervals.service must be a "
                                                                "finite duration"),
        ("device: {code: ok-1}\nexporters_allowed: http://x/\n",
         "exporters_allowed must be a list"),
        ("device: {code: ok-1}\nexporters_allowed: [5]\n", "exporters_allowed[0] must be a "
                                                            "non-empty string"),
        ("device: {code: ok-1}\nexporters_allowed: [\"ftp://x/*\"]\n",
         "exporters_allowed[0] 'ftp://x/*' is not http:// or https://"),
        ("device: {code: ok-1}\nexporters_allowed: [\"http://u@x/*\"]\n",
         "exporters_allowed[0] 'http://u@x/*' has a bad host[:port] part"),
        ("device: {code: ok-1}\nexporters_allowd: []\n", "unknown key 'exporters_allowd'"),
        ("device: {code: ok-1}\nlogging: {json: maybe}\n", "logging.json must be true or false"),
        ("device: {code: Bad Code}\n", "device.code 'Bad Code' must match"),
        ("nats: {urls: [x]}\n", "device.code is required"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("device: {code: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_config_names_the_key_and_file(tmp_path, text, expected):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        config_mod.load(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config_mod.load(tmp_path / "nope.yaml")


def test_desired_config_changes_intervals_and_exporters_only():
    current = config_mod.from_dict({"device": {"code": "abc"},
                                    "commands": {"allowed": ["uptime"]},
                                    "exporters_allowed": ["http://x:*/metrics"]})
    merged = desired.merge(current, {
        "intervals": {"system": "1m"}, "exporters": ["http://x:9100/metrics"],
        "commands": {"allowed": ["rm -rf /"]}, "services": {"allowed": ["sshd"]},
        "exporters_allowed": ["*"],
    })
    assert merged.intervals.system == 60.0
    assert merged.exporters == ("http://x:9100/metrics",)
    assert merged.commands.allowed == ("uptime",), "a whitelist was widened remotely"
    assert merged.services.allowed == ()
    assert merged.exporters_allowed == ("http://x:*/metrics",), "exporters_allowed widened"
    assert desired.merge(current, None) is current
    with pytest.raises(ConfigError, match=r"intervals\.heartbeat"):
        desired.merge(current, {"intervals": {"heartbeat": "never"}})
    with pytest.raises(ConfigError, match=r"must be a JSON object"):
        desired.merge(current, ["x"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=60)


def test_check_config_prints_effective_config_or_names_the_problem(tmp_path):
    done = _cli("check-config", "--config", str(EXAMPLE))
    assert done.returncode == 0 and '"code": "web-01"' in done.stdout
    bad = tmp_path / "agent.yaml"
    bad.write_text("device: {code: ok-1}\nextra: true\n")
    done = _cli("check-config", "--config", str(bad))
    assert done.returncode == 1 and "unknown key 'extra'" in done.stderr


def test_version_and_install_service_dry_run():
    assert _cli("version").stdout.startswith("cairn-agent ")
    done = _cli("install-service", "--config", str(EXAMPLE), "--dry-run")
    assert done.returncode == 0
    assert "would write /etc/systemd/system/cairn-agent.service" in done.stdout
    assert f"run --config {EXAMPLE}" in done.stdout


@pytest.mark.parametrize("platform", ["linux", "freebsd14", "win32"])
def test_service_plans_for_each_platform(platform):
    p = plan(EXAMPLE, platform=platform, executable="/opt/py/bin/python")
    assert "agent run --config" in p.content
    assert p.enable


def test_enroll_refuses_bad_input_before_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "agent", "enroll", "--server", "ftp://x", "--code", "ok-123",
         "--dir", str(tmp_path / "a")], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "CAIRN_ENROLL_SECRET": "s3cret-value"})
    assert done.returncode == 1 and "must be an http(s) URL" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "agent", "enroll", "--server", "http://127.0.0.1:9",
         "--code", "ok-123", "--dir", str(tmp_path / "b")], capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "no enrollment secret" in done.stderr
