"""Environments: a robot configuration (kind, tools, safety policies, hosts, free-form config).

The rules here are the whole contract of the resource; storage enforces them by calling
`EnvironmentDraft.validate` before every write, and the database only backs them up. Its hosts
are not set here: a host names its environment, and `Environment.host_ids` is derived from that,
so there is one source of truth for which environment a host belongs to.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from server.domain import update_masks
from server.domain.errors import FieldViolation, InvalidArgument, ReportViolation
from server.domain.json_objects import check_json_object
from server.domain.names import name_problem
from server.domain.tokens import TokenKind

MAX_DESCRIPTION_LENGTH = 4096
MAX_TOOLS = 256
MAX_TOOL_LENGTH = 128
MAX_REFERENCES = 256
MAX_CONFIG_BYTES = 64 * 1024
TOOLS = TokenKind(
    singular="tool",
    plural="tools",
    max_count=MAX_TOOLS,
    max_length=MAX_TOOL_LENGTH,
    described_as="a tool name",
)

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
        tools = TOOLS.check_list("allowed_tools", self.allowed_tools, violation)
        policies = _check_ids("safety_policy_ids", self.safety_policy_ids, violation)
        config = check_json_object("config", self.config, MAX_CONFIG_BYTES, violation)
        if violations:
            raise InvalidArgument("the environment is not valid", violations)
        assert config is not None
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
        return update_masks.merge_masked(self, current, mask, UPDATABLE_FIELDS)


def parse_update_mask(
    paths: Iterable[str], field_name: str = "update_mask"
) -> frozenset[str] | None:
    """The fields an update changes; None means every mutable field (an empty mask or "*")."""
    return update_masks.parse_update_mask(paths, UPDATABLE_FIELDS, field_name)


def _check_ids(
    name: str, values: Sequence[str | UUID], violation: ReportViolation
) -> tuple[UUID, ...]:
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
