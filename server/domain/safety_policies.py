"""Safety policies: typed, versioned limits, workspaces and command-type rules, and their checks.

Units are fixed by the field names and are SI: velocity in m/s, acceleration in m/s², force in
N, payload in kg, coordinates in metres. A policy only constrains: an unset limit, an empty
workspace or an empty allow list constrains nothing. Two durations bound time rather than
motion: how long a person's approval stays good (checked when the command is about to be sent,
server/domain/dispatch_checks.py), and the heartbeat window of the environment's robot links.
The rules here are the whole contract; storage calls `SafetyPolicyDraft.validate` before every
write, the database only backs it up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from server.domain.errors import FieldViolation, InvalidArgument, ReportViolation
from server.domain.names import name_problem
from server.domain.tokens import TokenKind

MAX_DESCRIPTION_LENGTH = 4096
MAX_COMMAND_TYPES = 256
MAX_COMMAND_TYPE_LENGTH = 64
MAX_BOXES = 64
MAX_PRISMS = 64
MAX_VERTICES = 256
# The types a policy lists, and so the types a command may have (server/domain/commands.py).
COMMAND_TYPES = TokenKind(
    singular="command type",
    plural="command types",
    max_count=MAX_COMMAND_TYPES,
    max_length=MAX_COMMAND_TYPE_LENGTH,
)

# An approval older than this is no longer good; shorter than a second is no approval at all,
# and a month is longer than any plan a person approved still holds.
MIN_APPROVAL_TTL = timedelta(seconds=1)
MAX_APPROVAL_TTL = timedelta(days=30)
# Silence on a robot link longer than this stops the robot and marks its host OFFLINE: below a
# second the network's own jitter would stop robots, and a deadman of more than ten minutes
# does not stop anything in time.
MIN_HEARTBEAT_WINDOW = timedelta(seconds=1)
MAX_HEARTBEAT_WINDOW = timedelta(minutes=10)

LIMIT_UNITS: dict[str, str] = {
    "max_linear_velocity": "m/s",
    "max_acceleration": "m/s²",
    "max_force": "N",
    "max_payload": "kg",
}


@dataclass(frozen=True)
class Point:
    """A position in metres."""

    x: float
    y: float
    z: float


@dataclass(frozen=True)
class Box:
    """An axis-aligned box between two corners, boundary included."""

    min: Point
    max: Point

    def contains(self, point: Point) -> bool:
        return (
            self.min.x <= point.x <= self.max.x
            and self.min.y <= point.y <= self.max.y
            and self.min.z <= point.z <= self.max.z
        )


@dataclass(frozen=True)
class Prism:
    """A simple polygon in the x/y plane (vertices' z ignored) extruded from min_z to max_z."""

    vertices: tuple[Point, ...]
    min_z: float
    max_z: float

    def contains(self, point: Point) -> bool:
        """Inside or on the boundary."""
        if not self.min_z <= point.z <= self.max_z:
            return False
        corners = self.vertices
        inside = False
        for index, a in enumerate(corners):
            b = corners[(index + 1) % len(corners)]
            if _on_segment(a, b, point):
                return True
            # Ray casting towards +x; each edge counts once thanks to the half-open test.
            if (a.y > point.y) != (b.y > point.y):
                crossing = a.x + (point.y - a.y) * (b.x - a.x) / (b.y - a.y)
                if point.x < crossing:
                    inside = not inside
        return inside


@dataclass(frozen=True)
class Workspace:
    """Where a robot may go: the union of the boxes and prisms."""

    boxes: tuple[Box, ...] = ()
    prisms: tuple[Prism, ...] = ()

    @property
    def is_unconstrained(self) -> bool:
        return not self.boxes and not self.prisms

    def contains(self, point: Point) -> bool:
        """True when the point lies in any box or prism, or the workspace is unconstrained."""
        if self.is_unconstrained:
            return True
        return any(box.contains(point) for box in self.boxes) or any(
            prism.contains(point) for prism in self.prisms
        )


@dataclass(frozen=True)
class Limits:
    """Upper bounds in SI units (see LIMIT_UNITS); None is unconstrained."""

    max_linear_velocity: float | None = None
    max_acceleration: float | None = None
    max_force: float | None = None
    max_payload: float | None = None


@dataclass(frozen=True)
class SafetyPolicy:
    """One version of a policy. `create_time` is the policy's, `update_time` this version's."""

    id: UUID
    tenant_id: UUID
    name: str
    description: str
    version: int
    limits: Limits
    workspace: Workspace
    allowed_command_types: frozenset[str]
    denied_command_types: frozenset[str]
    approval_command_types: frozenset[str]
    create_time: datetime
    update_time: datetime
    # None: approvals do not expire; the link's window is the server's own.
    approval_ttl: timedelta | None = None
    heartbeat_window: timedelta | None = None


@dataclass(frozen=True)
class SafetyPolicyFields:
    """The client-settable fields after validation: what storage writes as one version."""

    name: str
    description: str
    limits: Limits
    workspace: Workspace
    allowed_command_types: frozenset[str]
    denied_command_types: frozenset[str]
    approval_command_types: frozenset[str]
    approval_ttl: timedelta | None = None
    heartbeat_window: timedelta | None = None


@dataclass(frozen=True)
class SafetyPolicyDraft:
    """The client-settable fields as the client sent them; lists keep their order for errors."""

    name: str = ""
    description: str = ""
    limits: Limits = field(default_factory=Limits)
    workspace: Workspace = field(default_factory=Workspace)
    allowed_command_types: Sequence[str] = ()
    denied_command_types: Sequence[str] = ()
    approval_command_types: Sequence[str] = ()
    # None or zero: not set.
    approval_ttl: timedelta | None = None
    heartbeat_window: timedelta | None = None

    def validate(self, resource_field: str = "safety_policy") -> SafetyPolicyFields:
        """Every problem at once, each on its wire name ("safety_policy.limits.max_force")."""
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
        _check_limits(self.limits, violation)
        _check_workspace(self.workspace, violation)
        allowed = COMMAND_TYPES.check_list(
            "allowed_command_types", self.allowed_command_types, violation
        )
        denied = COMMAND_TYPES.check_list(
            "denied_command_types", self.denied_command_types, violation
        )
        approval = COMMAND_TYPES.check_list(
            "approval_command_types", self.approval_command_types, violation
        )
        _check_command_type_rules(self, allowed, denied, violation)
        approval_ttl = _check_duration(
            "approval_ttl", self.approval_ttl, MIN_APPROVAL_TTL, MAX_APPROVAL_TTL, violation
        )
        heartbeat_window = _check_duration(
            "heartbeat_window",
            self.heartbeat_window,
            MIN_HEARTBEAT_WINDOW,
            MAX_HEARTBEAT_WINDOW,
            violation,
        )
        if violations:
            raise InvalidArgument("the safety policy is not valid", violations)
        return SafetyPolicyFields(
            name=self.name,
            description=self.description,
            limits=self.limits,
            workspace=self.workspace,
            allowed_command_types=frozenset(allowed),
            denied_command_types=frozenset(denied),
            approval_command_types=frozenset(approval),
            approval_ttl=approval_ttl,
            heartbeat_window=heartbeat_window,
        )


def command_type_problem(value: str) -> str | None:
    """Why `value` cannot be a command type, or None when it can."""
    return COMMAND_TYPES.problem(value)


def _check_limits(limits: Limits, violation: ReportViolation) -> None:
    for name, unit in LIMIT_UNITS.items():
        value = getattr(limits, name)
        if value is None:
            continue
        where = f"limits.{name}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            violation(where, f"{name} must be a number of {unit}")
        elif not math.isfinite(value):
            violation(where, f"{name} must be a finite number of {unit}")
        elif value < 0:
            violation(where, f"{name} must not be negative (it is an upper bound in {unit})")


def _check_duration(
    name: str,
    value: timedelta | None,
    shortest: timedelta,
    longest: timedelta,
    violation: ReportViolation,
) -> timedelta | None:
    """The duration as stored: None when unset or zero (both mean "not set")."""
    if value is None or not value:
        return None
    if not shortest <= value <= longest:
        violation(
            name,
            f"{name} must be between {describe_duration(shortest)} and "
            f"{describe_duration(longest)} (or unset), not {describe_duration(value)}",
        )
        return None
    return value


def describe_duration(value: timedelta) -> str:
    """A duration as protobuf's JSON writes it: "300s", "0.5s", "-2s"."""
    micros = value // timedelta(microseconds=1)
    seconds, fraction = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    if not fraction:
        return f"{sign}{seconds}s"
    return f"{sign}{seconds}.{fraction:06d}".rstrip("0") + "s"


def _check_workspace(workspace: Workspace, violation: ReportViolation) -> None:
    if len(workspace.boxes) > MAX_BOXES:
        violation("workspace.boxes", f"at most {MAX_BOXES} boxes are allowed")
    if len(workspace.prisms) > MAX_PRISMS:
        violation("workspace.prisms", f"at most {MAX_PRISMS} prisms are allowed")
    for index, box in enumerate(workspace.boxes[:MAX_BOXES]):
        _check_box(f"workspace.boxes[{index}]", box, violation)
    for index, prism in enumerate(workspace.prisms[:MAX_PRISMS]):
        _check_prism(f"workspace.prisms[{index}]", prism, violation)


def _check_box(where: str, box: Box, violation: ReportViolation) -> None:
    finite = _check_point(f"{where}.min", box.min, violation)
    finite = _check_point(f"{where}.max", box.max, violation) and finite
    if not finite:
        return
    for axis in ("x", "y", "z"):
        low, high = getattr(box.min, axis), getattr(box.max, axis)
        if low > high:
            violation(f"{where}.min.{axis}", f"min.{axis} ({low}) must be ≤ max.{axis} ({high})")


def _check_prism(where: str, prism: Prism, violation: ReportViolation) -> None:
    heights_finite = True
    for name in ("min_z", "max_z"):
        if not math.isfinite(getattr(prism, name)):
            violation(f"{where}.{name}", f"{name} must be a finite number of metres")
            heights_finite = False
    if heights_finite and prism.min_z > prism.max_z:
        violation(f"{where}.min_z", f"min_z ({prism.min_z}) must be ≤ max_z ({prism.max_z})")
    vertices = prism.vertices
    if len(vertices) < 3:
        violation(f"{where}.vertices", "a polygon needs at least 3 vertices")
        return
    if len(vertices) > MAX_VERTICES:
        violation(f"{where}.vertices", f"a polygon has at most {MAX_VERTICES} vertices")
        return
    finite = True
    for index, vertex in enumerate(vertices):
        finite = _check_point(f"{where}.vertices[{index}]", vertex, violation) and finite
    if finite:
        problem = _polygon_problem(vertices)
        if problem is not None:
            violation(f"{where}.vertices", problem)


def _check_point(where: str, point: Point, violation: ReportViolation) -> bool:
    finite = True
    for axis in ("x", "y", "z"):
        if not math.isfinite(getattr(point, axis)):
            violation(f"{where}.{axis}", f"{axis} must be a finite number of metres")
            finite = False
    return finite


def _polygon_problem(vertices: Sequence[Point]) -> str | None:
    """Why the x/y polygon is not simple (no repeated corner, no crossing, some area)."""
    count = len(vertices)
    corners = {(v.x, v.y) for v in vertices}
    if len(corners) != count:
        return "the polygon repeats a vertex"
    for i in range(count):
        a, b = vertices[i], vertices[(i + 1) % count]
        for j in range(i + 1, count):
            c, d = vertices[j], vertices[(j + 1) % count]
            # Neighbouring edges share a corner; they only fail by folding back on each other.
            if j == i + 1:
                if _folds_back(a, b, d):
                    return f"the polygon's edges {i} and {j} overlap"
                continue
            if i == 0 and j == count - 1:
                if _folds_back(b, a, c):
                    return f"the polygon's edges {j} and {i} overlap"
                continue
            if _segments_intersect(a, b, c, d):
                return f"the polygon intersects itself (edges {i} and {j} cross)"
    doubled_area = sum(
        a.x * b.y - b.x * a.y
        for a, b in ((vertices[i], vertices[(i + 1) % count]) for i in range(count))
    )
    if doubled_area == 0:
        return "the polygon has no area (its vertices lie on one line)"
    return None


def _orientation(a: Point, b: Point, c: Point) -> int:
    cross = (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x)
    return (cross > 0) - (cross < 0)


def _folds_back(a: Point, shared: Point, d: Point) -> bool:
    """The edges a-shared and shared-d run back along each other (a zero angle at shared)."""
    dot = (a.x - shared.x) * (d.x - shared.x) + (a.y - shared.y) * (d.y - shared.y)
    return _orientation(a, shared, d) == 0 and dot > 0


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    """p lies on the segment from a to b (in x/y)."""
    return (
        _orientation(a, b, p) == 0
        and min(a.x, b.x) <= p.x <= max(a.x, b.x)
        and min(a.y, b.y) <= p.y <= max(a.y, b.y)
    )


def _segments_intersect(a: Point, b: Point, c: Point, d: Point) -> bool:
    o1, o2 = _orientation(a, b, c), _orientation(a, b, d)
    o3, o4 = _orientation(c, d, a), _orientation(c, d, b)
    if o1 != o2 and o3 != o4 and 0 not in (o1, o2, o3, o4):
        return True
    return (
        _on_segment(a, b, c) or _on_segment(a, b, d) or _on_segment(c, d, a) or _on_segment(c, d, b)
    )


def _check_command_type_rules(
    draft: SafetyPolicyDraft,
    allowed: Sequence[str],
    denied: Sequence[str],
    violation: ReportViolation,
) -> None:
    """Lists that contradict each other are a mistake the author should hear about now."""
    for index, value in enumerate(draft.denied_command_types):
        if value in allowed:
            violation(
                f"denied_command_types[{index}]",
                f"command type {value!r} is both allowed and denied",
            )
    for index, value in enumerate(draft.approval_command_types):
        if value in denied:
            violation(
                f"approval_command_types[{index}]",
                f"command type {value!r} is denied, so it can never be approved",
            )
        elif allowed and value not in allowed:
            violation(
                f"approval_command_types[{index}]",
                f"command type {value!r} is not in allowed_command_types, so it can never run",
            )
