"""The safety check of a command against safety policies: pure, total, and fail-closed.

A command's params are read by name — `velocity` (m/s), `acceleration` (m/s²), `force` (N),
`payload` (kg) and `target` {x, y, z} (m) — and checked against every policy given: each limit,
the workspace (the target must lie inside at least one box or prism, edges included), and the
allowed and denied command types. Every violated constraint of every policy is reported, so a
client can fix them all at once. A param that is absent is not checked; one that is present must
have the right shape, or the command is invalid.

Comparisons are written so that anything not provably within a bound is a violation: a NaN limit
or vertex refuses rather than lets through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from server.domain.errors import ErrorReason, FailedPrecondition, FieldViolation, InvalidArgument
from server.domain.safety_policies import Point, SafetyPolicy, Workspace

# What a command the safety check refuses is, as one word (its causes say which constraints).
SAFETY_VIOLATION = "SAFETY_VIOLATION"

SAFETY_LIMIT_EXCEEDED = "SAFETY_LIMIT_EXCEEDED"
OUTSIDE_WORKSPACE = "OUTSIDE_WORKSPACE"
COMMAND_TYPE_DENIED = "COMMAND_TYPE_DENIED"
COMMAND_TYPE_NOT_ALLOWED = "COMMAND_TYPE_NOT_ALLOWED"

# Param name -> (limit attribute of Limits, unit).
LIMITED_PARAMS: Mapping[str, tuple[str, str]] = {
    "velocity": ("max_linear_velocity", "m/s"),
    "acceleration": ("max_acceleration", "m/s²"),
    "force": ("max_force", "N"),
    "payload": ("max_payload", "kg"),
}
_TARGET_AXES = ("x", "y", "z")


@dataclass(frozen=True)
class Motion:
    """The params a safety policy constrains, as checked numbers; None where not given."""

    velocity: float | None = None
    acceleration: float | None = None
    force: float | None = None
    payload: float | None = None
    target: Point | None = None


@dataclass(frozen=True)
class PolicyVersion:
    """A safety policy at the version a command was checked against."""

    policy_id: UUID
    version: int


@dataclass(frozen=True)
class Violation:
    """One violated constraint of one policy."""

    policy_id: UUID
    policy_version: int
    policy_name: str
    reason: str
    constraint: str
    limit: str
    value: str
    description: str

    def cause(self) -> ErrorReason:
        return ErrorReason(
            self.reason,
            {
                "policy_id": str(self.policy_id),
                "policy_version": str(self.policy_version),
                "policy_name": self.policy_name,
                "constraint": self.constraint,
                "limit": self.limit,
                "value": self.value,
            },
        )


@dataclass(frozen=True)
class Verdict:
    """What the policies say about one command."""

    applied: tuple[PolicyVersion, ...]
    violations: tuple[Violation, ...]
    # Some policy names the command's type for human approval.
    needs_approval: bool

    def enforce(self) -> None:
        """Raises FailedPrecondition with one ErrorInfo per violated constraint, if any."""
        if not self.violations:
            return
        count = len(self.violations)
        summary = "; ".join(violation.description for violation in self.violations)
        raise FailedPrecondition(
            f"the command violates {count} safety constraint{'s' if count > 1 else ''}: {summary}",
            causes=[violation.cause() for violation in self.violations],
        )


def motion_of(params: Mapping[str, Any], field: str = "command.params") -> Motion:
    """The checked params out of a command's params; a wrong shape is InvalidArgument."""
    violations: list[FieldViolation] = []
    numbers: dict[str, float] = {}
    for name, (_, unit) in LIMITED_PARAMS.items():
        if name not in params:
            continue
        number = _finite(params[name])
        if number is None:
            violations.append(
                FieldViolation(f"{field}.{name}", f"{name} must be a finite number ({unit})")
            )
        elif name == "payload" and number < 0:
            violations.append(FieldViolation(f"{field}.{name}", "payload must not be negative"))
        else:
            numbers[name] = number
    target = None
    if "target" in params:
        target = _target(params["target"], f"{field}.target", violations)
    if violations:
        raise InvalidArgument("the command's params are not valid", violations)
    return Motion(target=target, **numbers)


def evaluate(command_type: str, motion: Motion, policies: Sequence[SafetyPolicy]) -> Verdict:
    """Checks a command against every policy; never raises (see Verdict.enforce)."""
    violations: list[Violation] = []
    for policy in policies:
        violations.extend(_violations(policy, command_type, motion))
    return Verdict(
        applied=tuple(PolicyVersion(policy.id, policy.version) for policy in policies),
        violations=tuple(violations),
        needs_approval=any(command_type in policy.approval_command_types for policy in policies),
    )


def _violations(policy: SafetyPolicy, command_type: str, motion: Motion) -> list[Violation]:
    found: list[Violation] = []

    def violated(reason: str, constraint: str, limit: str, value: str, description: str) -> None:
        found.append(
            Violation(
                policy_id=policy.id,
                policy_version=policy.version,
                policy_name=policy.name,
                reason=reason,
                constraint=constraint,
                limit=limit,
                value=value,
                description=f"{description} (policy {policy.name!r} v{policy.version})",
            )
        )

    if command_type in policy.denied_command_types:
        violated(
            COMMAND_TYPE_DENIED,
            "denied_command_types",
            ",".join(sorted(policy.denied_command_types)),
            command_type,
            f"type {command_type!r} is denied",
        )
    allowed = policy.allowed_command_types
    if allowed and command_type not in allowed:
        violated(
            COMMAND_TYPE_NOT_ALLOWED,
            "allowed_command_types",
            ",".join(sorted(allowed)),
            command_type,
            f"type {command_type!r} is not among the allowed types",
        )
    for name, (limit_name, unit) in LIMITED_PARAMS.items():
        value: float | None = getattr(motion, name)
        limit: float | None = getattr(policy.limits, limit_name)
        if value is None or limit is None:
            continue
        # `not <=` rather than `>`: a NaN limit refuses instead of allowing everything.
        if not abs(value) <= limit:
            violated(
                SAFETY_LIMIT_EXCEEDED,
                limit_name,
                _number(limit),
                _number(value),
                f"{name} {_number(value)} {unit} exceeds {limit_name} {_number(limit)} {unit}",
            )
    workspace, point = policy.workspace, motion.target
    # Workspace.contains: inside or on the surface of one of its boxes or prisms.
    if point is not None and not workspace.is_unconstrained and not workspace.contains(point):
        where = f"({_number(point.x)}, {_number(point.y)}, {_number(point.z)})"
        violated(
            OUTSIDE_WORKSPACE,
            "workspace",
            _describe(workspace),
            where,
            f"target {where} m lies outside the workspace",
        )
    return found


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _target(value: Any, field: str, violations: list[FieldViolation]) -> Point | None:
    if not isinstance(value, Mapping):
        violations.append(FieldViolation(field, "target must be an object {x, y, z} in metres"))
        return None
    axes: dict[str, float] = {}
    for axis in _TARGET_AXES:
        if axis not in value:
            violations.append(FieldViolation(f"{field}.{axis}", f"target.{axis} is required"))
            continue
        number = _finite(value[axis])
        if number is None:
            violations.append(
                FieldViolation(f"{field}.{axis}", f"target.{axis} must be a finite number (m)")
            )
            continue
        axes[axis] = number
    # A frame or offset we do not understand could move the real target: refuse, do not guess.
    for extra in sorted(set(value) - set(_TARGET_AXES)):
        violations.append(FieldViolation(f"{field}.{extra}", "target has only x, y and z (metres)"))
    if len(axes) != len(_TARGET_AXES) or len(value) != len(_TARGET_AXES):
        return None
    return Point(x=axes["x"], y=axes["y"], z=axes["z"])


def _number(value: float) -> str:
    """1.5 → "1.5", 2.0 → "2": how a person would write the figure."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _describe(workspace: Workspace) -> str:
    boxes, prisms = len(workspace.boxes), len(workspace.prisms)
    parts = []
    if boxes:
        parts.append(f"{boxes} box{'es' if boxes > 1 else ''}")
    if prisms:
        parts.append(f"{prisms} prism{'s' if prisms > 1 else ''}")
    return "inside one of " + " or ".join(parts)
