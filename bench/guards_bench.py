"""Per-message cost of the security guards on the hot paths (issue 10), against the JSON
decode every one of those messages pays anyway, measured in the same run.

- router intake: `server_answer` (JetStream replies), `hops` + `received_budget` headers;
- agent commands: `not_a_request`.
Pure CPU (timeit), no servers: the guards do no I/O.
"""

from __future__ import annotations

import json
import timeit

from agent.dispatcher import not_a_request
from rule_router.fanout import received_budget
from rule_router.hops import hops
from rule_router.replies import server_answer

TELEMETRY = json.dumps({"cpu_percent": 12.5, "memory_used_percent": 40.1, "load_1m": 0.3,
                        "disks": [{"mount": "/", "free_percent": 61.0}],
                        "source": "node_exporter",
                        "timestamp": "2026-12-01T10:00:00Z"}).encode()
HEADERS = {"Cairn-Hops": "1", "Cairn-Budget": "90"}
N = 200_000


def _per_call(stmt: str, env: dict) -> float:
    """Best of 5, in microseconds per call."""
    return min(timeit.repeat(stmt, globals=env, number=N, repeat=5)) / N * 1e6


def run() -> dict[str, float]:
    env = {"server_answer": server_answer, "hops": hops, "received_budget": received_budget,
           "not_a_request": not_a_request, "json": json, "TELEMETRY": TELEMETRY,
           "HEADERS": HEADERS}
    return {
        "baseline: json.loads of one telemetry message": _per_call("json.loads(TELEMETRY)", env),
        "router: server_answer (no headers)": _per_call("server_answer(None, TELEMETRY)", env),
        "router: hops + budget (with headers)":
            _per_call("hops(HEADERS); received_budget(HEADERS)", env),
        "agent: not_a_request": _per_call("not_a_request('_INBOX_svc_x.a.b', None)", env),
    }


def report(figures: dict[str, float]) -> str:
    base = figures["baseline: json.loads of one telemetry message"]
    return "\n".join(f"{name:52s} {us:7.3f} µs  ({us / base:4.2f}× the decode)"
                     for name, us in figures.items())


if __name__ == "__main__":
    print(report(run()))
