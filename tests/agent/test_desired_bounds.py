"""devices.config is a quota (SPEC §11): intervals within bounds, exporter URLs only where
the local agent.yaml allows them, refused as a whole otherwise, never a wider whitelist.
Each hostile value is refused next to a legitimate value in the same setup that applies."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from agent import config as config_mod
from agent import desired
from agent.config import DAY, INTERVAL_BOUNDS, MAX_DESIRED_EXPORTERS
from agent.errors import ConfigError

LOCAL = ("http://localhost:9100/metrics", "http://localhost:9182/metrics")


def _config(**extra) -> config_mod.AgentConfig:
    return config_mod.from_dict({"device": {"code": "dev-1"}, "exporters": list(LOCAL),
                                 "commands": {"allowed": ["uptime"]}, **extra})


def test_bounds_table_covers_every_interval_and_is_consistent():
    names = {f.name for f in dataclasses.fields(config_mod.Intervals)}
    assert set(INTERVAL_BOUNDS) == names
    for bound in INTERVAL_BOUNDS.values():
        assert 0 < bound.local_min <= bound.desired_min < bound.maximum
    defaults = config_mod.Intervals()
    for name, bound in INTERVAL_BOUNDS.items():
        assert bound.desired_min <= getattr(defaults, name) <= bound.maximum, name


@pytest.mark.parametrize(
    ("key", "hostile", "bound", "legit", "seconds"),
    [
        ("heartbeat", 0.001, "below the minimum of 5 s", 5, 5.0),
        ("heartbeat", "1ms", "below the minimum of 5 s", "7s", 7.0),
        ("heartbeat", "25h", "above the maximum of 24 h", "24h", DAY),
        ("service", 1, "below the minimum of 5 s", "5s", 5.0),
        ("system", 9.9, "below the minimum of 10 s", 10, 10.0),
        ("system", 1e12, "above the maximum of 24 h", "1h", 3600.0),
        ("inventory", "59s", "below the minimum of 60 s", "1m", 60.0),
        ("inventory", "8d", "above the maximum of 7 d", "7d", 7 * DAY),
    ],
)
def test_interval_out_of_bounds_is_refused_and_in_bounds_applies(key, hostile, bound, legit,
                                                                 seconds, caplog):
    current = _config()
    with caplog.at_level(logging.WARNING, logger="agent.desired"):
        with pytest.raises(ConfigError) as info:
            desired.merge(current, {"intervals": {key: hostile}})
    assert f"intervals.{key}" in str(info.value) and bound in str(info.value)
    assert "keeps its current config" in str(info.value)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"intervals.{key}" in m and bound in m for m in warned), warned
    merged = desired.merge(current, {"intervals": {key: legit}})
    assert getattr(merged.intervals, key) == seconds


def test_bad_types_and_unknown_interval_keys_are_refused():
    current = _config()
    refused = "intervals.heartbeat must be a positive duration"
    for hostile, expected in [({"heartbeat": "never"}, refused),
                              ({"heartbeat": True}, refused),
                              ({"heartbeat": float("nan")}, "finite duration"),
                              ({"cpu": 5}, "unknown key 'intervals.cpu'")]:
        with pytest.raises(ConfigError, match=expected):
            desired.merge(current, {"intervals": hostile})
    assert desired.merge(current, {"intervals": {"heartbeat": 30}}).intervals.heartbeat == 30.0


def test_one_bad_value_refuses_the_whole_desired_config():
    current = _config(exporters_allowed=["http://127.0.0.1:91??/metrics"])
    hostile = {"intervals": {"heartbeat": 7, "system": 0.5, "inventory": "1h"},
               "exporters": ["http://169.254.169.254/"]}
    with pytest.raises(ConfigError) as info:
        desired.merge(current, hostile)
    message = str(info.value)
    assert "intervals.system" in message and "'http://169.254.169.254/'" in message
    assert "intervals.heartbeat" not in message and "intervals.inventory" not in message
    legit = {"intervals": {"heartbeat": 7, "system": 60, "inventory": "1h"},
             "exporters": ["http://127.0.0.1:9100/metrics"]}
    merged = desired.merge(current, legit)
    assert (merged.intervals.heartbeat, merged.intervals.system) == (7.0, 60.0)
    assert merged.intervals.inventory == 3600.0
    assert merged.exporters == ("http://127.0.0.1:9100/metrics",)


def test_by_default_desired_exporters_only_choose_among_the_local_list(caplog):
    current = _config()
    assert current.exporters_allowed == ()
    with caplog.at_level(logging.WARNING, logger="agent.desired"):
        with pytest.raises(ConfigError) as info:
            desired.merge(current, {"exporters": ["http://localhost:9101/metrics"]})
    assert "'http://localhost:9101/metrics'" in str(info.value)
    assert "add it to exporters_allowed" in str(info.value)
    assert any("exporters_allowed" in r.getMessage() for r in caplog.records)
    narrowed = desired.merge(current, {"exporters": ["http://localhost:9182/metrics"]})
    assert narrowed.exporters == ("http://localhost:9182/metrics",)
    # the next desired config still chooses among what agent.yaml listed, not the narrowed set
    again = desired.merge(narrowed, {"exporters": ["http://localhost:9100/metrics"]})
    assert again.exporters == ("http://localhost:9100/metrics",)
    assert desired.merge(again, {"exporters": []}).exporters == ()


@pytest.mark.parametrize(
    ("pattern", "hostile", "legit"),
    [
        ("http://localhost:*/metrics", "http://169.254.169.254/latest/meta-data/",
         "http://localhost:9256/metrics"),
        ("http://localhost:*/metrics", "http://localhost:9100@169.254.169.254/metrics",
         "http://localhost:9100/metrics"),
        ("http://localhost:*/metrics", "http://localhost:80/admin?x=/metrics",
         "http://LOCALHOST:9100/metrics"),
        ("http://localhost:9100/*", "http://localhost:9100.evil.example/metrics",
         "http://localhost:9100/metrics"),
        ("http://localhost:9100/*", "http://localhost:9100/../admin",
         "http://localhost:9100/a/metrics"),
        ("http://localhost:9100/*", "http://localhost:9100/%2E%2e/admin",
         "http://localhost:9100/metrics?collect[]=cpu"),
        ("http://localhost:9100/*", "http://localhost:9100\\@evil/x",
         "http://localhost:9100/x"),
        ("http://localhost:9100/*", "http://localhost:9100/x#@evil",
         "http://localhost:9100/x"),
        ("http://localhost:9100/*", "http://localhost:9100/x y", "http://localhost:9100/xy"),
        ("http://l?calhost:9100/*", "http://l\u043ecalhost:9100/x", "http://localhost:9100/x"),
        ("http://exporter.corp/*", "http://exporter.corp.evil.example/metrics",
         "http://exporter.corp/metrics"),
        ("http://*.corp:9100/metrics", "https://a.corp:9100/metrics",
         "http://a.corp:9100/metrics"),
        ("http://[::1]:*/metrics", "http://[::2]:9100/metrics", "http://[::1]:9100/metrics"),
        ("http://*/metrics", "file:///etc/passwd", "http://10.0.0.7:9100/metrics"),
    ],
)
def test_exporter_globs_match_host_and_path_apart(pattern, hostile, legit):
    current = _config(exporters_allowed=[pattern])
    with pytest.raises(ConfigError) as info:
        desired.merge(current, {"exporters": [legit, hostile]})
    assert repr(hostile) in str(info.value) and repr(legit) not in str(info.value)
    assert desired.merge(current, {"exporters": [legit]}).exporters == (legit,)


def test_exact_allowed_urls_and_the_list_bounds():
    current = _config(exporters_allowed=["http://10.0.0.5:9100/metrics"])
    assert desired.merge(current, {"exporters": ["http://10.0.0.5:9100/metrics"]}).exporters
    with pytest.raises(ConfigError, match=re.escape("'http://10.0.0.6:9100/metrics'")):
        desired.merge(current, {"exporters": ["http://10.0.0.6:9100/metrics"]})
    with pytest.raises(ConfigError, match="exporters must be a list of URL strings"):
        desired.merge(current, {"exporters": "http://10.0.0.5:9100/metrics"})
    with pytest.raises(ConfigError, match="exporters must be a list of URL strings"):
        desired.merge(current, {"exporters": [""]})
    many = _config(exporters_allowed=["http://localhost:*/metrics"])
    urls = [f"http://localhost:{9100 + i}/metrics" for i in range(MAX_DESIRED_EXPORTERS + 1)]
    with pytest.raises(ConfigError, match=f"at most {MAX_DESIRED_EXPORTERS}"):
        desired.merge(many, {"exporters": urls})
    assert len(desired.merge(many, {"exporters": urls[:-1]}).exporters) == len(urls) - 1


def test_desired_config_never_widens_a_whitelist(caplog):
    current = _config(exporters_allowed=["http://localhost:9100/*"],
                      logs={"allowed_paths": ["/var/log/app.log"]})
    wider = {"exporters_allowed": ["*"], "commands": {"allowed": ["sh -c id"]},
             "services": {"allowed": ["sshd"]}, "logs": {"allowed_paths": ["/etc/*"]}}
    with pytest.raises(ConfigError, match=re.escape("'http://evil.example/'")):
        desired.merge(current, {**wider, "exporters": ["http://evil.example/"]})
    with caplog.at_level(logging.WARNING, logger="agent.desired"):
        merged = desired.merge(current, {**wider, "intervals": {"heartbeat": 7}})
    assert merged.intervals.heartbeat == 7.0
    assert merged.exporters_allowed == ("http://localhost:9100/*",)
    assert merged.commands.allowed == ("uptime",)
    assert merged.services.allowed == ()
    assert merged.logs.allowed_paths == ("/var/log/app.log",)
    assert any("ignored" in r.getMessage() for r in caplog.records)
