"""`cairn-router test` and `cairn-router check`: rules on the command line, no server.

test RULE.yaml MESSAGE.json [--subject S]
    For every rule in the file: does it match, and what would each action send (subject or
    URL, method, headers, body)? Values from ${ENV} are shown as ***. The subject defaults
    to the rule's filter when it has no wildcards; otherwise --subject is required.
    Exit 0 when evaluated (match or not); 1 when a rule is invalid or an action cannot be
    rendered for this message; 2 on usage errors (unreadable files, message not JSON,
    wildcard filter without --subject).
check FILE...
    Validate files: `FILE: ok (N rules)` (then `FILE:LINE: warning: ...` for each warning)
    or `FILE:LINE: message`; exit 1 if any is invalid.

Both apply the router's own checks with the router's settings read from the environment:
`${NAME}` must be listed in CAIRN_ROUTER_ENV_ALLOW (always), and set (unless
--no-env-check); a webhook to a literal non-public address needs CAIRN_ROUTER_WEBHOOK_ALLOW.
`--tenant SLUG` judges the rules as that tenant's rows are judged: entries scoped to it
(`SLUG:NAME`, `SLUG:host`) count besides the bare ones; without it only bare entries do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from rule_router.environment import RuleEnv
from rule_router.errors import RegexTimeout, RuleError, TemplateError
from rule_router.evaluate import evaluate
from rule_router.model import Firing, PublishOut, Rule, WebhookOut
from rule_router.parse import load_file
from rule_router.subjects import has_wildcards, subject_error, subject_matches


def cmd_check(paths: list[str], check_env: bool = True, out: TextIO | None = None,
              tenant: str | None = None) -> int:
    out = out or sys.stdout
    status = 0
    for path in paths:
        try:
            rules = load_file(path, check_env=check_env, tenant=tenant)
        except RuleError as exc:
            print(str(exc), file=out)
            status = 1
            continue
        print(f"{path}: ok ({len(rules)} rule{'s' if len(rules) != 1 else ''})", file=out)
        for warning in (w for r in rules for w in r.warnings):
            print(f"{path}:{warning.line}: {warning.message}", file=out)
    return status


def cmd_test(rule_path: str, message_path: str, subject: str | None = None,
             check_env: bool = True, out: TextIO | None = None,
             err: TextIO | None = None, tenant: str | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if not Path(rule_path).is_file():
        print(f"{rule_path}: no such file", file=err)
        return 2
    try:
        rules = load_file(rule_path, check_env=check_env, tenant=tenant)
    except RuleError as exc:
        print(str(exc), file=err)
        return 1
    try:
        raw = sys.stdin.buffer.read() if message_path == "-" else Path(message_path).read_bytes()
        json.loads(raw)
    except OSError as exc:
        print(f"{message_path}: cannot read: {exc.strerror or exc}", file=err)
        return 2
    except (ValueError, RecursionError) as exc:
        print(f"{message_path}: not valid JSON: {exc}", file=err)
        return 2
    if subject is not None and subject_error(subject):
        print(f"--subject: {subject_error(subject)}", file=err)
        return 2
    for rule in rules:
        if subject is None and has_wildcards(rule.subject):
            print(f"{rule_path}:{rule.line}: {_title(rule)} listens on {rule.subject!r}, which "
                  f"has wildcards: pass --subject with a concrete subject, e.g. "
                  f"{_example(rule.subject)!r}", file=err)
            return 2
    status = 0
    for rule in rules:
        concrete = subject or rule.subject
        header = f"{_title(rule)} (line {rule.line}), subject {concrete}"
        if not subject_matches(rule.subject, concrete):
            print(f"{header}: no match (the rule listens on {rule.subject})", file=out)
            continue
        try:
            firing = evaluate(rule, concrete, raw, mask_env=True,
                              env=RuleEnv.from_environ(tenant=tenant))
        except TemplateError as exc:
            print(f"{header}: MATCH, but an action cannot be rendered: {exc}", file=out)
            status = 1
            continue
        except RegexTimeout as exc:
            print(f"{header}: no match, the condition ran out of time: {exc}", file=out)
            status = 1
            continue
        if firing is None:
            print(f"{header}: no match", file=out)
            continue
        print(f"{header}: MATCH", file=out)
        _print_firing(firing, out)
    return status


def _title(rule: Rule) -> str:
    return f"rule {rule.name!r}"


def _example(filter_: str) -> str:
    tokens = ["example" if t == "*" else t for t in filter_.split(".")]
    return ".".join(t if t != ">" else "system" for t in tokens)


def _print_firing(firing: Firing, out: TextIO) -> None:
    for n, action in enumerate(firing.actions, 1):
        if isinstance(action, PublishOut):
            print(f"  {n}. publish {action.subject}", file=out)
            for name, value in (action.headers or {}).items():
                print(f"     header {name}: {value}", file=out)
            print(f"     payload: {_text(action.payload)}", file=out)
        elif isinstance(action, WebhookOut):
            print(f"  {n}. webhook {action.method} {action.safe_url or action.url} "
                  f"(timeout {action.timeout:g}s, {action.attempts} attempts, backoff "
                  f"{action.backoff:g}s)", file=out)
            for name, value in action.headers.items():
                print(f"     header {name}: {value}", file=out)
            print(f"     body: {_text(action.body)}", file=out)
    if firing.rule.throttle:
        print(f"  throttle: at most one firing per {firing.rule.throttle:g}s per subject "
              f"(not applied by this test)", file=out)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").rstrip("\r\n")
