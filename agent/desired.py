"""Desired config from PocketBase (`devices.config`): it may change intervals and exporters,
never a whitelist. Anything else in it is ignored with a warning.

devices.config is written by any tenant operator, so it is a quota (SPEC §11): intervals
must lie within `config.INTERVAL_BOUNDS` (`desired_min`..`maximum`), and exporter URLs must
be in the local `exporters` list or allowed by the local `exporters_allowed` key.

All or nothing: one bad value (wrong type, out of bounds, disallowed exporter) refuses the
whole desired config, with a warning per refused key naming it and its bound, and the agent
keeps running exactly the config it had. The device thus always runs either what the
control plane asked for or what it ran before, never a mix nobody wrote.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from agent import config as config_mod
from agent.errors import ConfigError
from cairn_common.durations import human

log = logging.getLogger(__name__)

ALLOWED = ("intervals", "exporters")
SOURCE = "devices.config"


def merge(current: config_mod.AgentConfig, desired: Any) -> config_mod.AgentConfig:
    """The current config with the allowed parts of `desired` applied, or ConfigError
    naming every refused key (and `current` stays in force)."""
    if desired in (None, "", {}):
        return current
    if not isinstance(desired, dict):
        raise ConfigError(f"{SOURCE} must be a JSON object, got {type(desired).__name__}")
    ignored = sorted(set(desired) - set(ALLOWED))
    if ignored:
        log.warning("devices.config keys ignored: only intervals and exporters may be set "
                    "from the control plane", extra={"ignored": ignored})
    intervals = desired.get("intervals", {})
    if not isinstance(intervals, dict):
        raise ConfigError(f"{SOURCE}: intervals must be an object")
    problems = [p for name, value in intervals.items()
                if (p := _interval_problem(name, value)) is not None]
    if "exporters" in desired:
        problems += _exporter_problems(desired["exporters"], current)
    if problems:
        for problem in problems:
            log.warning("devices.config refused: %s", problem)
        raise ConfigError("; ".join(problems) + " (devices.config refused as a whole: "
                          "the agent keeps its current config)")
    doc = config_mod.to_dict(current)
    doc["intervals"] = {**doc["intervals"], **intervals}
    if "exporters" in desired:
        doc["exporters"] = desired["exporters"]
    merged = config_mod.from_dict(doc, source=SOURCE, base_dir=current.base_dir)
    # what agent.yaml allows is fixed at load: a narrower desired list never narrows it
    return dataclasses.replace(merged, local_exporters=current.local_exporters)


def _interval_problem(name: str, value: Any) -> str | None:
    """Why one desired interval is refused, or None."""
    key = f"intervals.{name}"
    bound = config_mod.INTERVAL_BOUNDS.get(name)
    if bound is None:
        return (f"{SOURCE}: unknown key {key!r} "
                f"(known here: {', '.join(sorted(config_mod.INTERVAL_BOUNDS))})")
    try:
        seconds = config_mod.duration(value, key, SOURCE)
    except ConfigError as exc:
        return str(exc)
    if seconds < bound.desired_min:
        return (f"{SOURCE}: {key} {human(seconds)} is below the minimum of "
                f"{human(bound.desired_min)}")
    if seconds > bound.maximum:
        return f"{SOURCE}: {key} {human(seconds)} is above the maximum of {human(bound.maximum)}"
    return None


def _exporter_problems(exporters: Any, current: config_mod.AgentConfig) -> list[str]:
    """Why the desired exporter list is refused (empty when it is acceptable)."""
    if not isinstance(exporters, list) or not all(isinstance(u, str) and u for u in exporters):
        return [f"{SOURCE}: exporters must be a list of URL strings"]
    if len(exporters) > config_mod.MAX_DESIRED_EXPORTERS:
        return [f"{SOURCE}: exporters lists {len(exporters)} URLs; at most "
                f"{config_mod.MAX_DESIRED_EXPORTERS} may be set from the control plane"]
    problems = []
    for url in exporters:
        reason = config_mod.exporter_refusal(url, current)
        if reason is not None:
            problems.append(f"{SOURCE}: exporter {url!r} {reason}; to allow it, add it to "
                            f"exporters_allowed in the device's agent.yaml")
    return problems
