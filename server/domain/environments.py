"""Environments: a robot configuration (kind, tools, safety policies, hosts, free-form config).

The rules here are the whole contract of the resource; storage enforces them by calling
`EnvironmentDraft.validate` before every write, and the database only backs them up. Its hosts
are not set here: a host names its environment, and `Environment.host_ids` is derived from that,
so there is one source of truth for which environment a host belongs to.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.names import name_problem

MAX_DESCRIPTION_LENGTH = 4096
MAX_TOOLS = 256
MAX_TOOL_LENGTH = 128
MAX_REFERENCES = 256
MAX_CONFIG_BYTES = 64 * 1024
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]+")

# How the checks below report a problem: (field below the resource, description).
_Violation = Callable[[str, str], None]

# What an update mask may name; everything else on the resource is output-only.
UPDATABLE_FIELDS: frozenset[str] = frozenset(
    {"name", "description", "kind", "allowed_tools", "safety_policy_ids", "config"}
)


class EnvironmentKind(enum.Enum):
    SIMULATION = "simulation"
    HARDWARE = "hardware"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class EnvironmentFields:
    """The client-settable fields after validation: what storage writes."""

    name: str
    description: str
    kind: EnvironmentKind
    allowed_tools: tuple[str, ...]
    # In the order given: the order in which commands are checked against them.
    safety_policy_ids: tuple[UUID, ...]
    config: dict[str, Any]


@dataclass(frozen=True)
class Environment:
    id: UUID
    tenant_id: UUID
    name: str
    description: str
    kind: EnvironmentKind
    allowed_tools: tuple[str, ...]
    safety_policy_ids: tuple[UUID, ...]
    # Output only: the hosts whose environment this is, oldest registration first.
    host_ids: tuple[UUID, ...]
    config: dict[str, Any]
    create_time: datetime
    update_time: datetime

    def draft(self) -> EnvironmentDraft:
        return EnvironmentDraft(
            name=self.name,
            description=self.description,
            kind=self.kind,
            allowed_tools=self.allowed_tools,
            safety_policy_ids=tuple(str(value) for value in self.safety_policy_ids),
            config=self.config,
        )


@dataclass(frozen=True)
class EnvironmentDraft:
    """The client-settable fields as the client sent them: ids are still wire strings."""

    name: str = ""
    description: str = ""
    kind: EnvironmentKind = EnvironmentKind.SIMULATION
    allowed_tools: Sequence[str] = ()
    safety_policy_ids: Sequence[str | UUID] = ()
    config: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, resource_field: str = "environment") -> EnvironmentFields:
        """Every problem at once, each on its wire name ("environment.safety_policy_ids[2]")."""
        violations: list[FieldViolation] = []

        def violation(name: str, description: str) -> None:
            violations.append(FieldViolation(f"{resource_field}.{name}", description))

        problem = name_problem(self.name)
        if problem is not None:
            violation("name", f"name {problem}")
        if len(self.description) > MAX_DESCRIPTION_LENGTH:
            violation(
                "description", f"description must be at most {MAX_DESCRIPTION_LENGTH} characters"
            )
        if "\x00" in self.description:
            violation("description", "description must not contain NUL characters")
        if not isinstance(self.kind, EnvironmentKind):
            violation("kind", "kind must be simulation, hardware or hybrid")
        tools = _check_tools(self.allowed_tools, violation)
        policies = _check_ids("safety_policy_ids", self.safety_policy_ids, violation)
        config = _check_config(self.config, violation)
        if violations:
            raise InvalidArgument("the environment is not valid", violations)
        return EnvironmentFields(
            name=self.name,
            description=self.description,
            kind=self.kind,
            allowed_tools=tools,
            safety_policy_ids=policies,
            config=config,
        )

    def merged_into(self, current: EnvironmentDraft, mask: Collection[str]) -> EnvironmentDraft:
        """`current` with the fields named in `mask` taken from this draft."""
        unknown = set(mask) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        return replace(current, **{name: getattr(self, name) for name in mask})


def parse_update_mask(
    paths: Iterable[str], field_name: str = "update_mask"
) -> frozenset[str] | None:
    """The fields an update changes; None means every mutable field (an empty mask or "*")."""
    collected = list(paths)
    if not collected or collected == ["*"]:
        return None
    unknown = [path for path in collected if path not in UPDATABLE_FIELDS]
    if unknown:
        raise InvalidArgument(
            "the update mask names fields that cannot be updated",
            [
                FieldViolation(
                    field_name,
                    f"{path!r} is not an updatable field; updatable fields are "
                    f"{', '.join(sorted(UPDATABLE_FIELDS))}",
                )
                for path in unknown
            ],
        )
    return frozenset(collected)


def _check_tools(tools: Sequence[str], violation: _Violation) -> tuple[str, ...]:
    if len(tools) > MAX_TOOLS:
        violation("allowed_tools", f"at most {MAX_TOOLS} tools are allowed")
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"allowed_tools[{index}]"
        if not 1 <= len(tool) <= MAX_TOOL_LENGTH:
            violation(where, f"a tool name has 1 to {MAX_TOOL_LENGTH} characters")
        elif _TOOL_NAME.fullmatch(tool) is None:
            violation(where, "a tool name uses only letters, digits and _ . : -")
        elif tool in seen:
            violation(where, f"tool {tool!r} is listed twice")
        seen.add(tool)
    return tuple(tools)


def _check_ids(name: str, values: Sequence[str | UUID], violation: _Violation) -> tuple[UUID, ...]:
    if len(values) > MAX_REFERENCES:
        violation(name, f"at most {MAX_REFERENCES} ids are allowed")
    parsed: list[UUID] = []
    for index, value in enumerate(values):
        where = f"{name}[{index}]"
        try:
            uuid = value if isinstance(value, UUID) else UUID(value)
        except (ValueError, TypeError, AttributeError):
            violation(where, f"{value!r} is not a valid id")
            continue
        if uuid in parsed:
            violation(where, f"id {uuid} is listed twice")
            continue
        parsed.append(uuid)
    return tuple(parsed)


def _check_config(config: Mapping[str, Any], violation: _Violation) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        violation("config", "config must be a JSON object")
        return {}
    try:
        text = json.dumps(config, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        violation("config", "config must be JSON: objects, arrays, strings, finite numbers")
        return {}
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        violation("config", f"config must be at most {MAX_CONFIG_BYTES} bytes of JSON")
    # PostgreSQL's jsonb cannot hold NUL in strings; refuse it here rather than fail there.
    if _contains_nul(config):
        violation("config", "config must not contain NUL characters")
    # A round trip leaves plain dicts, lists and scalars, whatever mappings came in.
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False
