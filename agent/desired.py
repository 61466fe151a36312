"""Desired config from PocketBase (`devices.config`): it may change intervals and exporters,
never a whitelist. Anything else in it is ignored with a warning; a bad value keeps the
current config and says why."""

from __future__ import annotations

import logging
from typing import Any

from agent import config as config_mod
from agent.errors import ConfigError

log = logging.getLogger(__name__)

ALLOWED = ("intervals", "exporters")


def merge(current: config_mod.AgentConfig, desired: Any) -> config_mod.AgentConfig:
    """The current config with the allowed parts of `desired` applied (validated)."""
    if desired in (None, "", {}):
        return current
    if not isinstance(desired, dict):
        raise ConfigError(f"devices.config must be a JSON object, got {type(desired).__name__}")
    ignored = sorted(set(desired) - set(ALLOWED))
    if ignored:
        log.warning("devices.config keys ignored: only intervals and exporters may be set "
                    "from the control plane", extra={"ignored": ignored})
    doc = config_mod.to_dict(current)
    if "intervals" in desired:
        if not isinstance(desired["intervals"], dict):
            raise ConfigError("devices.config: intervals must be an object")
        doc["intervals"] = {**doc["intervals"], **desired["intervals"]}
    if "exporters" in desired:
        doc["exporters"] = desired["exporters"]
    return config_mod.from_dict(doc, source="devices.config", base_dir=current.base_dir)
