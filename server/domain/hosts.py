"""Hosts: robots and compute nodes — their identity, labels, environment and reported status.

A host's status is what it (or an operator) last declared; every change is recorded, append-only,
with who made it and why. No state machine: any status may follow any other, because the
status reports a fact about the world rather than a step of a workflow.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from server.domain import update_masks
from server.domain.errors import FieldViolation, InvalidArgument, ReportViolation
from server.domain.names import name_problem
from server.domain.tokens import TokenKind

MAX_CAPABILITIES = 64
MAX_CAPABILITY_LENGTH = 64
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 255
MAX_REASON_LENGTH = 1024
CAPABILITIES = TokenKind(
    singular="capability",
    plural="capabilities",
    max_count=MAX_CAPABILITIES,
    max_length=MAX_CAPABILITY_LENGTH,
)
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:/-]*)")

# What an update mask may name; status, last_seen_time and the times are output-only.
UPDATABLE_FIELDS: frozenset[str] = frozenset(
    {"name", "kind", "environment_id", "capabilities", "labels"}
)


class HostKind(enum.Enum):
    EDGE = "edge"
    CLOUD = "cloud"


class HostStatus(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    # Taken out of service by an operator: reachable or not, it receives no work.
    MAINTENANCE = "maintenance"

    @property
    def means_seen(self) -> bool:
        """Reporting this status means the host was just heard from (sets last_seen_time)."""
        return self in (HostStatus.ONLINE, HostStatus.DEGRADED)


# A new host has not been heard from yet.
INITIAL_STATUS = HostStatus.OFFLINE
REGISTERED_REASON = "registered"


@dataclass(frozen=True)
class HostFields:
    """The client-settable fields after validation: what storage writes."""

    name: str
    kind: HostKind
    environment_id: UUID | None
    capabilities: tuple[str, ...]
    labels: dict[str, str]


@dataclass(frozen=True)
class Host:
    id: UUID
    tenant_id: UUID
    environment_id: UUID | None
    name: str
    kind: HostKind
    capabilities: tuple[str, ...]
    labels: dict[str, str]
    status: HostStatus
    # When the host last reported ONLINE or DEGRADED; None until it first does.
    last_seen_time: datetime | None
    create_time: datetime
    update_time: datetime

    def draft(self) -> HostDraft:
        return HostDraft(
            name=self.name,
            kind=self.kind,
            environment_id=self.environment_id,
            capabilities=self.capabilities,
            labels=self.labels,
        )


@dataclass(frozen=True)
class HostDraft:
    """The client-settable fields as the client sent them: the environment id is still text."""

    name: str = ""
    kind: HostKind = HostKind.EDGE
    # None or "" means no environment.
    environment_id: str | UUID | None = None
    capabilities: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def validate(self, resource_field: str = "host") -> HostFields:
        """Every problem at once, each on its wire name ("host.capabilities[1]")."""
        violations: list[FieldViolation] = []

        def violation(name: str, description: str) -> None:
            violations.append(FieldViolation(f"{resource_field}.{name}", description))

        problem = name_problem(self.name)
        if problem is not None:
            violation("name", f"name {problem}")
        if not isinstance(self.kind, HostKind):
            violation("kind", "kind must be edge or cloud")
        environment_id: UUID | None = None
        if isinstance(self.environment_id, UUID):
            environment_id = self.environment_id
        elif self.environment_id:
            try:
                environment_id = UUID(self.environment_id)
            except (ValueError, TypeError, AttributeError):
                violation("environment_id", f"{self.environment_id[:64]!r} is not a valid id")
        capabilities = CAPABILITIES.check_list("capabilities", self.capabilities, violation)
        labels = _check_labels(self.labels, violation)
        if violations:
            raise InvalidArgument("the host is not valid", violations)
        return HostFields(
            name=self.name,
            kind=self.kind,
            environment_id=environment_id,
            capabilities=capabilities,
            labels=labels,
        )

    def merged_into(self, current: HostDraft, mask: Collection[str]) -> HostDraft:
        """`current` with the fields named in `mask` taken from this draft."""
        return update_masks.merge_masked(self, current, mask, UPDATABLE_FIELDS)


@dataclass(frozen=True)
class StatusChange:
    """A requested status change, validated."""

    status: HostStatus
    reason: str

    @classmethod
    def of(cls, status: HostStatus | None, reason: str) -> StatusChange:
        violations: list[FieldViolation] = []
        if not isinstance(status, HostStatus):
            violations.append(
                FieldViolation("status", "status must be ONLINE, OFFLINE, DEGRADED or MAINTENANCE")
            )
        problem = reason_problem(reason)
        if problem is not None:
            violations.append(FieldViolation("reason", problem))
        if violations:
            raise InvalidArgument("the status change is not valid", violations)
        assert isinstance(status, HostStatus)
        return cls(status, reason)


@dataclass(frozen=True)
class HostStatusChange:
    """One recorded status change. `from_status` is None for the registration itself."""

    id: UUID
    tenant_id: UUID
    host_id: UUID
    from_status: HostStatus | None
    to_status: HostStatus
    reason: str
    # The API key that made the change.
    changed_by_key_id: UUID | None
    create_time: datetime


def reason_problem(reason: str) -> str | None:
    if len(reason) > MAX_REASON_LENGTH:
        return f"reason must be at most {MAX_REASON_LENGTH} characters"
    if any(unicodedata.category(char) == "Cc" and char not in "\n\t" for char in reason):
        return "reason must not contain control characters other than newline and tab"
    return None


def parse_update_mask(
    paths: Iterable[str], field_name: str = "update_mask"
) -> frozenset[str] | None:
    """The fields an update changes; None means every mutable field (an empty mask or "*")."""
    return update_masks.parse_update_mask(
        paths, UPDATABLE_FIELDS, field_name, note="(status has its own method)"
    )


def _check_labels(labels: Mapping[str, str], violation: ReportViolation) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        violation("labels", f"at most {MAX_LABELS} labels are allowed")
    for key, value in labels.items():
        shown = repr(key[:MAX_LABEL_KEY_LENGTH])
        if not 1 <= len(key) <= MAX_LABEL_KEY_LENGTH or _LABEL_KEY.fullmatch(key) is None:
            violation(
                "labels",
                f"label key {shown} must have 1 to {MAX_LABEL_KEY_LENGTH} characters: a letter "
                "or digit, then letters, digits and _ . : / -",
            )
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            violation(
                "labels",
                f"the value of label {shown} must be at most {MAX_LABEL_VALUE_LENGTH} characters",
            )
        elif any(unicodedata.category(char) == "Cc" for char in value):
            violation("labels", f"the value of label {shown} must not contain control characters")
    return dict(labels)
