"""`cairn-router`: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn-router",
        description="Cairn rule router: evaluates YAML rules from PocketBase against NATS "
        "messages, publishes alerts and calls webhooks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    no_env = ("do not require ${ENV} variables used by the rules to be set (they must still "
              "be listed in CAIRN_ROUTER_ENV_ALLOW)")
    tenant = ("judge the rules as this tenant's: entries scoped to it in "
              "CAIRN_ROUTER_ENV_ALLOW / CAIRN_ROUTER_WEBHOOK_ALLOW (SLUG:NAME) count too "
              "(default: only entries for every tenant)")
    test = sub.add_parser("test", help="show what a rules file would do with one message")
    test.add_argument("rule", metavar="RULE.yaml", help="a rules file (one rule or a list)")
    test.add_argument("message", metavar="MESSAGE.json", help="the message payload ('-': stdin)")
    test.add_argument("--subject", help="the concrete subject the message arrived on "
                      "(default: the rule's subject when it has no wildcards)")
    test.add_argument("--no-env-check", action="store_true", help=no_env)
    test.add_argument("--tenant", metavar="SLUG", help=tenant)
    check = sub.add_parser("check", help="validate rules files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--no-env-check", action="store_true", help=no_env)
    check.add_argument("--tenant", metavar="SLUG", help=tenant)
    run = sub.add_parser("run", help="run the router (the service)")
    run.add_argument("--rules-dir", metavar="DIR",
                     help="read rules from the *.yaml files in DIR")
    run.add_argument("--metrics-port", type=int, metavar="PORT", default=None,
                     help="serve Prometheus /metrics on 127.0.0.1:PORT (default: none)")
    run.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                     help="log level (INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "test":
        from rule_router.cli import cmd_test
        return cmd_test(args.rule, args.message, args.subject, not args.no_env_check,
                        tenant=args.tenant)
    if args.command == "check":
        from rule_router.cli import cmd_check
        return cmd_check(args.files, not args.no_env_check, tenant=args.tenant)
    from rule_router.app import main_run
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
