"""Golden cases: `cases/<case>/rule.yaml` over `messages.jsonl` must give `expected.jsonl`.

Each message line is `{"subject": ..., "payload": {...}}` (or `"raw": "text"` for a payload
that is not JSON, and optionally `"at": seconds` for the throttle clock). Each expected
line is the list of firings for that message: rule name and rendered actions (JSON bodies
decoded), or the runtime error. The clock is fixed at NOW, so `@timestamp` and `@time.*`
are stable; cases avoid `@uuid`. Regenerate after a deliberate change with
`UPDATE_GOLDEN=1 pytest tests/router/test_golden.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rule_router.errors import TemplateError
from rule_router.evaluate import evaluate
from rule_router.model import PublishOut
from rule_router.parse import parse_rules
from rule_router.subjects import SubjectIndex
from rule_router.throttle import Throttle

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "rule.yaml").exists())
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ENV = {"ALERT_TOKEN": "t0k3n", "HOOK_BASE": "https://hooks.example.com"}


def _body(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")


def _describe(action) -> dict:
    if isinstance(action, PublishOut):
        doc = {"publish": action.subject, "payload": _body(action.payload)}
        if action.headers:
            doc["headers"] = dict(action.headers)
        return doc
    return {"webhook": action.url, "method": action.method, "headers": dict(action.headers),
            "body": _body(action.body), "timeout": action.timeout,
            "attempts": action.attempts, "backoff": action.backoff}


def run_case(case: Path) -> list[list[dict]]:
    rules = parse_rules((case / "rule.yaml").read_text(), case.name, ENV)
    index = SubjectIndex(rules)
    clock = [0.0]
    throttle = Throttle(clock=lambda: clock[0])
    results = []
    for line in (case / "messages.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        msg = json.loads(line)
        clock[0] = float(msg.get("at", 0))
        payload = msg["raw"].encode() if "raw" in msg else json.dumps(msg["payload"]).encode()
        fired = []
        for rule in index.match(msg["subject"]):
            try:
                firing = evaluate(rule, msg["subject"], payload, now=NOW, env=ENV,
                                  throttle=throttle)
            except TemplateError as exc:
                fired.append({"rule": rule.name, "error": str(exc)})
                continue
            if firing is not None:
                fired.append({"rule": rule.name,
                              "actions": [_describe(a) for a in firing.actions]})
        results.append(fired)
    return results


@pytest.mark.parametrize("name", CASES)
def test_golden_case(name):
    case = CASES_DIR / name
    actual = run_case(case)
    expected_path = case / "expected.jsonl"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                         for r in actual))
    expected = [json.loads(line) for line in expected_path.read_text().splitlines()
                if line.strip()]
    assert len(actual) == len(expected)
    for n, (got, want) in enumerate(zip(actual, expected, strict=True), 1):
        assert got == want, f"{name}: message {n}"


def test_there_are_golden_cases():
    assert len(CASES) >= 6
