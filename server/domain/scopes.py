"""The scope vocabulary of the whole API: which groups exist, their levels, and what grants what.

A scope is "<group>:<level>" with levels read < write < admin, or the bare "admin", which grants
every level of every group. The RPCs name the scope they need in their `(roz.v1.access)` option.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.domain.errors import FieldViolation, InvalidArgument

GROUPS: tuple[str, ...] = (
    "api-keys",
    "environments",
    "hosts",
    "tasks",
    "commands",
    "safety-policies",
    "triggers",
    "sessions",
    "metrics",
    "audit",
)
LEVELS: tuple[str, ...] = ("read", "write", "admin")
ADMIN = "admin"

_RANK = {level: rank for rank, level in enumerate(LEVELS)}

ALL_SCOPES: frozenset[str] = frozenset(
    {f"{group}:{level}" for group in GROUPS for level in LEVELS} | {ADMIN}
)


def scope(group: str, level: str) -> str:
    """The scope string of a group and level; unknown names are a programming error."""
    value = f"{group}:{level}"
    if value not in ALL_SCOPES:
        raise ValueError(f"unknown scope {value!r}")
    return value


def is_known(value: str) -> bool:
    return value in ALL_SCOPES


def parse_scopes(values: Iterable[str], field: str = "api_key.scopes") -> frozenset[str]:
    """Client-supplied scopes as a set; every unknown one is reported, not just the first."""
    collected: list[str] = []
    violations: list[FieldViolation] = []
    for index, value in enumerate(values):
        if value in ALL_SCOPES:
            collected.append(value)
        else:
            violations.append(
                FieldViolation(
                    f"{field}[{index}]",
                    f"unknown scope {value!r}; scopes are 'admin' or '<group>:<level>' with "
                    f"group one of {', '.join(GROUPS)} and level one of {', '.join(LEVELS)}",
                )
            )
    if violations:
        raise InvalidArgument("unknown scopes", violations)
    return frozenset(collected)


def grants(held: frozenset[str], required: str) -> bool:
    """Whether a key holding `held` may do what needs `required`.

    Unknown scopes in `held` grant nothing, so a scope retired from the vocabulary loses its
    power instead of being misread; an unknown `required` is a bug in an RPC's declaration.
    """
    if required not in ALL_SCOPES:
        raise ValueError(f"unknown scope {required!r}")
    if ADMIN in held:
        return True
    if required == ADMIN:
        return False
    group, level = required.split(":")
    needed = _RANK[level]
    return any(f"{group}:{other}" in held for other in LEVELS[needed:])


def covers(held: frozenset[str], requested: Iterable[str]) -> bool:
    """Whether a key holding `held` may mint a key with `requested`: never more than it has."""
    return all(grants(held, value) for value in requested)
