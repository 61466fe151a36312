"""URL lists and cluster settings, without servers: one parser (cairn_common/nats_urls.py)
for the bridge, the router, the launcher and the agent."""

from __future__ import annotations

import pytest

from agent import config as agent_config
from agent.errors import ConfigError
from cairn_common.nats_urls import NatsUrlError, parse_nats_urls
from cairn_stack import settings
from pb_hooks_bridge import config as bridge_config
from pb_hooks_bridge.errors import BridgeError


def test_lists_are_split_trimmed_and_deduplicated():
    assert parse_nats_urls(" nats://a:4222, nats://b:4223 ,,nats://a:4222") == (
        "nats://a:4222", "nats://b:4223")
    assert parse_nats_urls(["nats://a:1,tls://b:2", "c:3"]) == (
        "nats://a:1", "tls://b:2", "nats://c:3")


@pytest.mark.parametrize("bad", ["", " , ", "http://a:4222", "nats://a:port", "nats://"])
def test_what_is_not_a_nats_url_is_refused(bad):
    with pytest.raises(NatsUrlError):
        parse_nats_urls(bad)


def test_bridge_takes_a_list(tmp_path):
    env = {"CAIRN_DATA_DIR": str(tmp_path), "CAIRN_ADMIN_EMAIL": "a@b.c",
           "CAIRN_ADMIN_PASSWORD": "x" * 12,
           "CAIRN_NATS_URL": "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
           "CAIRN_NATS_REPLICAS": "3"}
    config = bridge_config.load(env)
    assert config.nats_urls == ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223")
    assert config.nats_replicas == 3
    assert bridge_config.load({**env, "CAIRN_NATS_URL": "", "CAIRN_NATS_REPLICAS": ""}
                              ).nats_replicas == 1  # the default: one node, R1
    with pytest.raises(BridgeError):
        bridge_config.load({**env, "CAIRN_NATS_URL": "http://x:1"})


def test_agent_yaml_urls_may_hold_a_list():
    config = agent_config.from_dict({"device": {"code": "abc"}, "nats": {
        "urls": ["nats://a:4222,nats://b:4222", "nats://c:4222"], "ping_interval": "2s"}})
    assert config.nats.urls == ("nats://a:4222", "nats://b:4222", "nats://c:4222")
    assert config.nats.ping_interval == 2.0
    with pytest.raises(ConfigError, match="ping_interval"):
        agent_config.from_dict({"device": {"code": "abc"}, "nats": {"ping_interval": 0.1}})
    with pytest.raises(ConfigError, match=r"nats\.urls"):
        agent_config.from_dict({"device": {"code": "abc"}, "nats": {"urls": ["http://a"]}})


def test_stack_settings_one_node_by_default_and_ports_that_follow():
    one = settings.load({})
    assert one.nats_nodes == 1 and one.nats_urls == ("nats://127.0.0.1:4222",)
    assert one.nats_url_list == "nats://127.0.0.1:4222" and one.nats_replicas == 1
    assert [name for name, _ in one.nats_ports()] == ["CAIRN_NATS_PORT",
                                                      "CAIRN_NATS_MONITOR_PORT",
                                                      "CAIRN_NATS_WS_PORT"]
    three = settings.load({"CAIRN_NATS_NODES": "3"})
    assert three.nats_urls == tuple(f"nats://127.0.0.1:{p}" for p in (4222, 4223, 4224))
    assert three.nats_replicas == 3
    assert ("CAIRN_NATS_CLUSTER_PORT+2", 6224) in three.nats_ports()
    with pytest.raises(settings.SettingsError, match="CAIRN_NATS_NODES"):
        settings.load({"CAIRN_NATS_NODES": "9"})
    with pytest.raises(settings.SettingsError, match="differ"):  # 8222+2 is CAIRN_PB_PORT
        settings.load({"CAIRN_NATS_NODES": "3", "CAIRN_NATS_MONITOR_PORT": "8088"})
