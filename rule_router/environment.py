"""The environment as rules see it: only the names the router's operator listed.

A rule is written by a tenant admin, but `${NAME}` would be filled from the router's own
process environment, which also holds things no tenant may read (logins, keys, other
tenants' tokens). So `${NAME}` resolves only names listed in `CAIRN_ROUTER_ENV_ALLOW`
(comma-separated, empty by default). An unlisted name gets the same message whether or
not it exists, so a rule can never probe for a variable or its value; a listed name that
is unset may say so (the operator chose to expose that name).

An entry `slug:NAME` lists NAME for the tenant with that slug only: a token the MSP keeps
for tenant A must not be readable by tenant B's rule author (who could put it into a
webhook URL pointing at their own host). A bare `NAME` is for every tenant: only values
meant for everyone belong there. Which tenant asks is the caller's to say (`tenant=`);
without one only bare entries count (`cairn-router test` / `check` without `--tenant`).

A plain mapping handed to the parser or evaluator instead of a `RuleEnv` is taken as the
whole environment rules may see (tests, `cairn-router test` with explicit values).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping

ENV_ALLOW = "CAIRN_ROUTER_ENV_ALLOW"


def allowed_names(environ: Mapping[str, str] | None = None,
                  tenant: str | None = None) -> frozenset[str]:
    """The names CAIRN_ROUTER_ENV_ALLOW (in `environ`, default os.environ) lists for
    `tenant`: its bare entries and the `slug:NAME` ones whose slug is `tenant`."""
    text = (os.environ if environ is None else environ).get(ENV_ALLOW, "")
    names = set()
    for entry in text.split(","):
        scope, colon, name = entry.partition(":")
        if not colon:
            scope, name = "", scope
        if name.strip() and (not colon or (tenant is not None and scope.strip() == tenant)):
            names.add(name.strip())
    return frozenset(names)


def not_allowed(name: str) -> str:
    """The one message for an unlisted name: it never says whether the name exists."""
    return f"${{{name}}} is not allowed: list it in {ENV_ALLOW}"


def not_set(name: str) -> str:
    return f"environment variable {name} is not set"


class RuleEnv(Mapping[str, str]):
    """A read-only view of `source` (default os.environ, read live) showing only `allow`.
    `require_set`: whether validation also insists that each listed name is set."""

    def __init__(self, allow: Iterable[str], source: Mapping[str, str] | None = None, *,
                 require_set: bool = True) -> None:
        self.allow = frozenset(allow)
        self.source = os.environ if source is None else source
        self.require_set = require_set

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     require_set: bool = True, tenant: str | None = None) -> RuleEnv:
        """The allowlist (for `tenant`: see `allowed_names`) and the values both from
        `environ` (default os.environ)."""
        return cls(allowed_names(environ, tenant), environ, require_set=require_set)

    def __getitem__(self, name: str) -> str:
        if name not in self.allow:
            raise KeyError(name)
        return self.source[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in sorted(self.allow) if name in self.source)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:  # never the values
        return f"RuleEnv(allow={sorted(self.allow)!r})"

    def problem(self, name: str) -> str | None:
        """Why `${name}` is refused at validation, or None."""
        if name not in self.allow:
            return not_allowed(name)
        if self.require_set and name not in self.source:
            return not_set(name)
        return None


def env_problem(env: Mapping[str, str], name: str) -> str | None:
    """Validation: why `${name}` cannot be used with `env`, or None."""
    if isinstance(env, RuleEnv):
        return env.problem(name)
    return None if name in env else not_set(name)


def env_allows(env: Mapping[str, str], name: str) -> bool:
    """Render time: False for a name a RuleEnv does not list (a plain mapping lists all)."""
    return name in env.allow if isinstance(env, RuleEnv) else True
