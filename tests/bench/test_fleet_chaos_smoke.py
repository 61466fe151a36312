"""The chaos drills (bench/fleet_chaos.py) at N=30 on a private 3-node stack with two
bridges and two routers, two cheap drills (a NATS node killed, a simulator process
killed), so that the bench cannot rot: each drill runs to its end, passes its own checks,
and its figures are plausible."""

from __future__ import annotations

import pytest

from bench.fleet_chaos import ChaosConfig, parse, run


@pytest.mark.timeout(90)
async def test_node_and_simulator_drills_at_thirty_agents():
    summary = await run(ChaosConfig(agents=30, processes=2, heartbeat=2, telemetry=1,
                                    drills=("a", "g"), down=1, timeout=30))
    assert summary["connect"] == {**summary["connect"], "connected": 30, "failed": 0}
    for key in ("a", "g"):
        drill = summary["drills"][key]
        assert drill["failed"] == [] and drill["ok"], drill
        assert drill["ping_all_s"] >= 0 and drill["ping_after_undo_s"] is not None, drill
        revocation = drill["revocation"]
        assert revocation["disable_tries"] >= 1 and revocation["nodes"] == 3, revocation
        assert revocation["still_accepted_after"] == 0, revocation
        assert revocation["control_accepted"] == 3, revocation  # the check can say yes
        assert drill["routing"]["published"] > 0 and drill["routing"]["missing"] == 0, drill
        telemetry = drill["telemetry"]
        assert telemetry["acked"] > 0 and telemetry["acked_not_stored_total"] == 0, telemetry
    node = summary["drills"]["a"]
    assert node["target"] in ("n1", "n2", "n3") and node["restart_s"] > 0
    assert node["telemetry"]["agent_disconnects"] > 0  # its agents really lost their node
    sim = summary["drills"]["g"]
    assert sim["agents"] == 15 and sim["agents_lowest"] <= 15, sim  # they really vanished
    assert sim["connected_again_s"] >= 1, sim  # not before the restart, --down 1 s later
    assert summary["ok"]


def test_drills_by_letter_or_name_and_unknown_refused(capsys):
    assert parse(["--drills", "node,g,pocketbase"]).drills == ("a", "g", "d")
    assert parse([]).drills == tuple("abcdefg")
    with pytest.raises(SystemExit):
        parse(["--drills", "a,z"])
    assert "unknown drill 'z'" in capsys.readouterr().err
