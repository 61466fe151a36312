"""`make bench` / `python -m bench [NAME ...]`: run benchmarks and print their figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from bench import (
    agent_bench,
    bridge_bulk,
    bridge_failover,
    bridge_latency,
    cluster,
    dashboard_bench,
    dispatch_bench,
    fleet,
    fleet_chaos,
    guards_bench,
    history_bench,
    people_bench,
    revocation_walk,
    router_bench,
    sidecar_rollout,
    soak,
)

SOAK_MINUTES = float(os.environ.get("CAIRN_SOAK_MINUTES") or 30)

BENCHMARKS = {
    "bridge_latency": lambda: bridge_latency.report(asyncio.run(bridge_latency.run())),
    "bridge_bulk": lambda: bridge_bulk.report(asyncio.run(bridge_bulk.run([1000, 10000]))),
    "agent": lambda: agent_bench.report(asyncio.run(agent_bench.run())),
    "router": lambda: router_bench.report(asyncio.run(router_bench.run())),
    "dispatch": lambda: dispatch_bench.report(asyncio.run(dispatch_bench.run())),
    "guards": lambda: guards_bench.report(guards_bench.run()),
    "cluster": lambda: cluster.report(asyncio.run(cluster.run())),
    "failover": lambda: bridge_failover.report(asyncio.run(bridge_failover.run())),
    "people": lambda: people_bench.report(asyncio.run(people_bench.run())),
    "history": lambda: history_bench.report(asyncio.run(history_bench.run())),
    "sidecar-rollout": lambda: sidecar_rollout.report(asyncio.run(sidecar_rollout.run())),
    # not in the default run: a browser and 10,000 device rows (~2 minutes)
    "dashboard": lambda: dashboard_bench.report(asyncio.run(dashboard_bench.run())),
    # not in the default run: 10,000 connections (~3 minutes)
    "revocation-walk": lambda: revocation_walk.report(asyncio.run(revocation_walk.run())),
    # not in the default run: 30 minutes (CAIRN_SOAK_MINUTES)
    "soak": lambda: soak.report(asyncio.run(soak.run(SOAK_MINUTES))),
    # not in the default run: 1,000 agents (~5 minutes); `python -m bench fleet --help`
    "fleet": lambda: json.dumps(asyncio.run(fleet.run(fleet.parse(["--agents", "1000"]))),
                                indent=2),
    # not in the default run: chaos drills under a fleet of 2,000 agents (~10 minutes);
    # `python -m bench fleet-chaos --help`
    "fleet-chaos": lambda: json.dumps(asyncio.run(fleet_chaos.run(fleet_chaos.parse([]))),
                                      indent=2),
}
NOT_DEFAULT = {"soak", "fleet", "fleet-chaos", "revocation-walk", "dashboard"}
DEFAULT = [n for n in BENCHMARKS if n not in NOT_DEFAULT]


def main() -> None:
    if sys.argv[1:2] == ["fleet"]:  # the fleet simulator has options of its own
        fleet.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["fleet-chaos"]:  # so do the chaos drills
        fleet_chaos.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run Cairn's benchmarks against real servers they start themselves. "
        "Record the figures in docs/benchmarks.md.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="which to run (default: all but soak, fleet and fleet-chaos): "
                        f"{', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    for name in args.names or DEFAULT:
        print(f"== {name}", flush=True)
        print(BENCHMARKS[name](), flush=True)


if __name__ == "__main__":
    main()
