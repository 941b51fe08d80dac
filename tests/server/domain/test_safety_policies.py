"""The safety policy rules, each violation on its wire name, and the workspace geometry."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from server.domain.errors import InvalidArgument
from server.domain.safety_policies import (
    MAX_APPROVAL_TTL,
    MAX_BOXES,
    MAX_COMMAND_TYPES,
    MAX_HEARTBEAT_WINDOW,
    MAX_VERTICES,
    MIN_APPROVAL_TTL,
    MIN_HEARTBEAT_WINDOW,
    Box,
    Limits,
    Point,
    Prism,
    SafetyPolicyDraft,
    Workspace,
    command_type_problem,
    describe_duration,
)

SQUARE = (Point(0, 0, 0), Point(2, 0, 0), Point(2, 2, 0), Point(0, 2, 0))
UNIT_BOX = Box(Point(0, 0, 0), Point(1, 1, 1))


def _violations(draft: SafetyPolicyDraft) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        draft.validate()
    return {v.field: v.description for v in raised.value.violations}


def _fields(draft: SafetyPolicyDraft) -> list[str]:
    with pytest.raises(InvalidArgument) as raised:
        draft.validate()
    return [v.field for v in raised.value.violations]


def test_only_the_name_is_required_and_the_rest_is_unconstrained() -> None:
    fields = SafetyPolicyDraft(name="lab").validate()
    assert fields.limits == Limits()
    assert fields.workspace.is_unconstrained
    assert fields.workspace.contains(Point(1e9, -1e9, 0))
    assert fields.allowed_command_types == frozenset()
    assert _fields(SafetyPolicyDraft()) == ["safety_policy.name"]


def test_a_full_policy_is_kept_as_given() -> None:
    prism = Prism(SQUARE, min_z=0.0, max_z=1.5)
    draft = SafetyPolicyDraft(
        name="cell-1",
        description="pick line",
        limits=Limits(max_linear_velocity=0.5, max_acceleration=2.0, max_force=0.0, max_payload=5),
        workspace=Workspace(boxes=(UNIT_BOX,), prisms=(prism,)),
        allowed_command_types=("move", "grip", "estop"),
        denied_command_types=("weld",),
        approval_command_types=("grip",),
    )
    fields = draft.validate()
    assert fields.limits == draft.limits
    assert fields.workspace == draft.workspace
    assert fields.allowed_command_types == frozenset({"move", "grip", "estop"})
    assert fields.denied_command_types == frozenset({"weld"})
    assert fields.approval_command_types == frozenset({"grip"})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.1, -1e300])
@pytest.mark.parametrize(
    "limit", ["max_linear_velocity", "max_acceleration", "max_force", "max_payload"]
)
def test_limits_are_finite_and_not_negative(limit: str, value: float) -> None:
    violations = _violations(SafetyPolicyDraft(name="p", limits=Limits(**{limit: value})))
    assert list(violations) == [f"safety_policy.limits.{limit}"]


def test_limit_messages_name_the_unit() -> None:
    violations = _violations(
        SafetyPolicyDraft(
            name="p", limits=Limits(max_linear_velocity=-1, max_force=math.nan, max_payload=-2)
        )
    )
    assert "m/s" in violations["safety_policy.limits.max_linear_velocity"]
    assert "N" in violations["safety_policy.limits.max_force"]
    assert "kg" in violations["safety_policy.limits.max_payload"]


def test_box_corners_are_ordered_and_finite_per_axis() -> None:
    inverted = Box(Point(0, 5, 0), Point(1, 1, -1))
    broken = Box(Point(math.nan, 0, 0), Point(1, math.inf, 1))
    assert _fields(
        SafetyPolicyDraft(name="p", workspace=Workspace(boxes=(UNIT_BOX, inverted)))
    ) == [
        "safety_policy.workspace.boxes[1].min.y",
        "safety_policy.workspace.boxes[1].min.z",
    ]
    assert _fields(SafetyPolicyDraft(name="p", workspace=Workspace(boxes=(broken,)))) == [
        "safety_policy.workspace.boxes[0].min.x",
        "safety_policy.workspace.boxes[0].max.y",
    ]
    # min = max is a flat box, which is allowed.
    flat = Box(Point(0, 0, 1), Point(1, 1, 1))
    SafetyPolicyDraft(name="p", workspace=Workspace(boxes=(flat,))).validate()


def test_a_prism_needs_three_vertices_and_ordered_heights() -> None:
    two = Prism(SQUARE[:2], 0, 1)
    low_high = Prism(SQUARE, 2, 1)
    not_finite = Prism((*SQUARE[:3], Point(math.nan, 1, 0)), 0, math.inf)
    assert _fields(
        SafetyPolicyDraft(name="p", workspace=Workspace(prisms=(two, low_high, not_finite)))
    ) == [
        "safety_policy.workspace.prisms[0].vertices",
        "safety_policy.workspace.prisms[1].min_z",
        "safety_policy.workspace.prisms[2].max_z",
        "safety_policy.workspace.prisms[2].vertices[3].x",
    ]


@pytest.mark.parametrize(
    ("vertices", "problem"),
    [
        # A bow tie: edges 0 and 2 cross.
        (((0, 0), (2, 2), (2, 0), (0, 2)), "intersects itself"),
        (((0, 0), (1, 0), (1, 1), (0, 0), (0, 1)), "repeats a vertex"),
        (((0, 0), (1, 0), (2, 0)), "overlap"),
        # A spike that runs back along its own edge.
        (((0, 0), (2, 0), (1, 0), (1, 1)), "overlap"),
        # Edge 2 runs back down through vertex 1, crossing edge 0 there.
        (((0, 0), (2, 0), (2, 2), (2, -1), (0, -1)), "intersects itself"),
    ],
)
def test_a_polygon_must_be_simple(vertices: tuple[tuple[float, float], ...], problem: str) -> None:
    prism = Prism(tuple(Point(x, y, 0) for x, y in vertices), 0, 1)
    violations = _violations(SafetyPolicyDraft(name="p", workspace=Workspace(prisms=(prism,))))
    assert list(violations) == ["safety_policy.workspace.prisms[0].vertices"]
    assert problem in violations["safety_policy.workspace.prisms[0].vertices"]


def test_concave_and_clockwise_polygons_are_fine() -> None:
    l_shape = tuple(Point(x, y, 0) for x, y in ((0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)))
    clockwise = tuple(reversed(SQUARE))
    collinear_corner = tuple(Point(x, y, 0) for x, y in ((0, 0), (1, 0), (2, 0), (2, 2)))
    for vertices in (l_shape, clockwise, collinear_corner):
        SafetyPolicyDraft(name="p", workspace=Workspace(prisms=(Prism(vertices, 0, 1),))).validate()


def test_list_sizes_are_bounded() -> None:
    boxes = tuple(UNIT_BOX for _ in range(MAX_BOXES + 1))
    many_vertices = tuple(Point(math.cos(a), math.sin(a), 0) for a in _angles(MAX_VERTICES + 1))
    types = tuple(f"t{i}" for i in range(MAX_COMMAND_TYPES + 1))
    assert _fields(
        SafetyPolicyDraft(
            name="p",
            workspace=Workspace(boxes=boxes, prisms=(Prism(many_vertices, 0, 1),)),
            allowed_command_types=types,
        )
    ) == [
        "safety_policy.workspace.boxes",
        "safety_policy.workspace.prisms[0].vertices",
        "safety_policy.allowed_command_types",
    ]
    fine = tuple(Point(math.cos(a), math.sin(a), 0) for a in _angles(MAX_VERTICES))
    SafetyPolicyDraft(name="p", workspace=Workspace(prisms=(Prism(fine, 0, 1),))).validate()


def _angles(count: int) -> list[float]:
    return [2 * math.pi * i / count for i in range(count)]


@pytest.mark.parametrize("value", ["", "has space", "x" * 65, "semi;colon", "ünïcode", "a\nb"])
def test_command_types_are_short_tokens(value: str) -> None:
    assert command_type_problem(value) is not None
    assert _fields(SafetyPolicyDraft(name="p", denied_command_types=("ok", value))) == [
        "safety_policy.denied_command_types[1]"
    ]


def test_good_command_types() -> None:
    for value in ("move", "arm.move_to", "gripper:open", "E-STOP", "x" * 64):
        assert command_type_problem(value) is None


def test_command_type_lists_must_not_contradict_each_other() -> None:
    violations = _violations(
        SafetyPolicyDraft(
            name="p",
            allowed_command_types=("move", "grip", "move"),
            denied_command_types=("weld", "grip"),
            approval_command_types=("weld", "drill", "move"),
        )
    )
    assert list(violations) == [
        "safety_policy.allowed_command_types[2]",
        "safety_policy.denied_command_types[1]",
        "safety_policy.approval_command_types[0]",
        "safety_policy.approval_command_types[1]",
    ]
    assert "listed twice" in violations["safety_policy.allowed_command_types[2]"]
    assert "both allowed and denied" in violations["safety_policy.denied_command_types[1]"]
    assert "denied" in violations["safety_policy.approval_command_types[0]"]
    assert "not in allowed_command_types" in violations["safety_policy.approval_command_types[1]"]
    # With no allow list, any type not denied may need approval.
    SafetyPolicyDraft(
        name="p", denied_command_types=("weld",), approval_command_types=("drill",)
    ).validate()


def test_all_problems_are_reported_together_under_the_given_resource_field() -> None:
    draft = SafetyPolicyDraft(
        name="",
        description="d" * 4097,
        limits=Limits(max_force=-1),
        workspace=Workspace(prisms=(Prism(SQUARE[:2], 0, 1),)),
        allowed_command_types=("bad type",),
    )
    with pytest.raises(InvalidArgument) as raised:
        draft.validate("policy")
    assert [v.field for v in raised.value.violations] == [
        "policy.name",
        "policy.description",
        "policy.limits.max_force",
        "policy.workspace.prisms[0].vertices",
        "policy.allowed_command_types[0]",
    ]


def test_box_and_prism_containment_include_the_boundary() -> None:
    assert UNIT_BOX.contains(Point(1, 1, 1))
    assert UNIT_BOX.contains(Point(0.5, 0, 0.5))
    assert not UNIT_BOX.contains(Point(1.0001, 0.5, 0.5))
    l_shape = Prism(
        tuple(Point(x, y, 9) for x, y in ((0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3))), 0, 2
    )
    assert l_shape.contains(Point(0.5, 2.5, 1))  # the upright arm
    assert l_shape.contains(Point(2.5, 0.5, 0))  # the foot, at the floor
    assert l_shape.contains(Point(1, 2, 2))  # on an inner edge, at the ceiling
    assert not l_shape.contains(Point(2, 2, 1))  # in the notch
    assert not l_shape.contains(Point(0.5, 0.5, 2.1))  # above
    workspace = Workspace(boxes=(Box(Point(10, 10, 0), Point(11, 11, 1)),), prisms=(l_shape,))
    assert workspace.contains(Point(10.5, 10.5, 0.5))
    assert workspace.contains(Point(0.5, 0.5, 0.5))
    assert not workspace.contains(Point(5, 5, 0.5))
    assert not workspace.is_unconstrained


@pytest.mark.parametrize("name", ["approval_ttl", "heartbeat_window"])
def test_unset_or_zero_durations_are_not_set(name: str) -> None:
    for value in (None, timedelta(0)):
        fields = SafetyPolicyDraft(name="lab", **{name: value}).validate()  # type: ignore[arg-type]
        assert getattr(fields, name) is None


@pytest.mark.parametrize(
    ("name", "shortest", "longest"),
    [
        ("approval_ttl", MIN_APPROVAL_TTL, MAX_APPROVAL_TTL),
        ("heartbeat_window", MIN_HEARTBEAT_WINDOW, MAX_HEARTBEAT_WINDOW),
    ],
)
def test_durations_are_kept_within_their_bounds_and_refused_outside(
    name: str, shortest: timedelta, longest: timedelta
) -> None:
    for good in (shortest, longest, (shortest + longest) / 2):
        fields = SafetyPolicyDraft(name="lab", **{name: good}).validate()  # type: ignore[arg-type]
        assert getattr(fields, name) == good
    tick = timedelta(microseconds=1)
    for bad in (-shortest, shortest - tick, longest + tick, -tick):
        problems = _violations(SafetyPolicyDraft(name="lab", **{name: bad}))  # type: ignore[arg-type]
        assert list(problems) == [f"safety_policy.{name}"]
        assert problems[f"safety_policy.{name}"].startswith(f"{name} must be between")


def test_duration_problems_come_with_the_others_and_say_what_was_given() -> None:
    problems = _violations(
        SafetyPolicyDraft(
            name="",
            approval_ttl=timedelta(days=31),
            heartbeat_window=timedelta(milliseconds=500),
        )
    )
    assert problems == {
        "safety_policy.name": problems["safety_policy.name"],
        "safety_policy.approval_ttl": (
            "approval_ttl must be between 1s and 2592000s (or unset), not 2678400s"
        ),
        "safety_policy.heartbeat_window": (
            "heartbeat_window must be between 1s and 600s (or unset), not 0.5s"
        ),
    }


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (timedelta(seconds=300), "300s"),
        (timedelta(milliseconds=1500), "1.5s"),
        (timedelta(microseconds=1), "0.000001s"),
        (timedelta(seconds=-2), "-2s"),
        (timedelta(milliseconds=-250), "-0.25s"),
        (timedelta(0), "0s"),
    ],
)
def test_durations_are_described_as_protobuf_json_writes_them(
    value: timedelta, written: str
) -> None:
    assert describe_duration(value) == written
