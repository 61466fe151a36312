"""The fleet simulator (bench/fleet.py) at N=20 in one process, on a private stack, so that
it cannot rot: every phase runs and its figures are plausible."""

from __future__ import annotations

import pytest

from bench.fleet import FleetConfig, run


@pytest.mark.timeout(90)
async def test_fleet_of_twenty_runs_every_phase():
    summary = await run(FleetConfig(agents=20, processes=1, heartbeat=1, telemetry=2,
                                    duration=4, rest=1, settle=1, revocations=2, burst=2))
    for phase in ("revocation_at_rest", "revocation_under_load", "revocation_burst_at_rest",
                  "revocation_burst_under_load", "revocation_neighbour_at_rest",
                  "revocation_neighbour_under_load"):
        figures = summary[phase]
        assert figures["missed"] == 0 and figures["p99_ms"] > 0, figures
        assert figures["samples"] == 2 and figures["still_accepted_after"] == 0, figures
    assert summary["bulk_create"]["rows"] == 20
    assert summary["enrollment"]["agents"] == 20
    assert summary["connect"]["connected"] == 20 and summary["connect"]["failed"] == 0
    assert summary["commands_check"] == {"ping": "pong", "health": "healthy",
                                         "inventory": "success"}
    ping = summary["broadcast_ping"]
    assert ping["replies"] == 20 and ping["errors"] == 0 and ping["all_answered_s"] is not None
    assert set(ping["cpu_s"]) >= {"bench", "simulator-0", "nats"}, ping["cpu_s"]
    steady = summary["steady"]
    assert steady["heartbeats_per_s"] > 5 and steady["telemetry_failed"] == 0
    assert set(steady["cpu_pct"]) >= {"bridge", "pocketbase", "simulator-0"}
    logins = summary["pocketbase_password_logins"]
    assert logins["enrollment_window"] == 20  # positive control of the count
    assert logins["steady_window"] == 0
    assert summary["devices_online_in_pocketbase"] == 20  # the bridge took the heartbeats
    assert summary["rss_mb"]["simulator-0"] > 0 and summary["rss_mb"]["nats"] > 0


def test_agents_are_spread_over_the_nodes_and_processes():
    """`--nats-url A,B,C`: agent i starts on node i % 3 (with every node as a server), and
    the processes get equal slices."""
    from bench.fleet_agents import LoadConfig
    from bench.fleet_enroll import Enrolled
    from bench.fleet_procs import Simulators

    nodes = ("nats://a:4222", "nats://b:4222", "nats://c:4222")
    enrolled = [Enrolled(f"sim-{i:05d}", "jwt", "seed") for i in range(12)]
    sims = Simulators(enrolled, 2, LoadConfig(servers=nodes))
    assert [len(s) for s in sims.slices] == [6, 6]
    first = [c.url for s in sims.slices for c in s]
    assert {u: first.count(u) for u in nodes} == {u: 4 for u in nodes}
    assert sorted(c.code for s in sims.slices for c in s) == [e.code for e in enrolled]
