"""The safety check of a command against policies: limits, workspaces, command types."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from server.domain.errors import FailedPrecondition, InvalidArgument
from server.domain.safety import (
    COMMAND_TYPE_DENIED,
    COMMAND_TYPE_NOT_ALLOWED,
    OUTSIDE_WORKSPACE,
    SAFETY_LIMIT_EXCEEDED,
    Motion,
    PolicyVersion,
    evaluate,
    motion_of,
)
from server.domain.safety_policies import Box, Limits, Point, Prism, SafetyPolicy, Workspace

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(max_linear_velocity=1.5, max_acceleration=2.0, max_force=50.0, max_payload=5.0)
# param -> (limit name, bound)
BOUNDS = {
    "velocity": ("max_linear_velocity", 1.5),
    "acceleration": ("max_acceleration", 2.0),
    "force": ("max_force", 50.0),
    "payload": ("max_payload", 5.0),
}
CELL = Box(min=Point(0, 0, 0), max=Point(1, 2, 1))
# An L seen from above (not convex): the square 0..2 by 0..2 without its corner 1..2 by 1..2.
L_SHAPE = Prism(
    vertices=(
        Point(0, 0, 0),
        Point(2, 0, 0),
        Point(2, 1, 0),
        Point(1, 1, 0),
        Point(1, 2, 0),
        Point(0, 2, 0),
    ),
    min_z=0.5,
    max_z=1.5,
)


NO_LIMITS = Limits()
ANYWHERE = Workspace()


def policy(
    *,
    name: str = "arm",
    version: int = 1,
    limits: Limits = NO_LIMITS,
    workspace: Workspace = ANYWHERE,
    allowed: frozenset[str] = frozenset(),
    denied: frozenset[str] = frozenset(),
    approval: frozenset[str] = frozenset(),
) -> SafetyPolicy:
    return SafetyPolicy(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        name=name,
        description="",
        version=version,
        limits=limits,
        workspace=workspace,
        allowed_command_types=allowed,
        denied_command_types=denied,
        approval_command_types=approval,
        create_time=NOW,
        update_time=NOW,
    )


def check(params: dict[str, object], *policies: SafetyPolicy, command_type: str = "move_to"):  # type: ignore[no-untyped-def]
    return evaluate(command_type, motion_of(params), policies)


@pytest.mark.parametrize("param", list(BOUNDS))
def test_each_limit_at_below_and_above_its_bound(param: str) -> None:
    limit_name, bound = BOUNDS[param]
    limited = policy(limits=LIMITS, version=3)
    assert check({param: bound}, limited).violations == ()
    assert check({param: bound - 1e-9}, limited).violations == ()
    assert check({param: 0}, limited).violations == ()
    (violation,) = check({param: bound + 1e-9}, limited).violations
    cause = violation.cause()
    assert cause.reason == SAFETY_LIMIT_EXCEEDED
    assert cause.metadata["policy_id"] == str(limited.id)
    assert cause.metadata["policy_version"] == "3"
    assert cause.metadata["constraint"] == limit_name
    assert float(cause.metadata["limit"]) == bound
    assert float(cause.metadata["value"]) == bound + 1e-9


@pytest.mark.parametrize("param", ["velocity", "acceleration", "force"])
def test_a_negative_value_is_checked_by_its_magnitude(param: str) -> None:
    _, bound = BOUNDS[param]
    limited = policy(limits=LIMITS)
    assert check({param: -bound}, limited).violations == ()
    (violation,) = check({param: -(bound + 1)}, limited).violations
    assert violation.value == f"{-(bound + 1):g}"


def test_an_unset_limit_constrains_nothing() -> None:
    free = policy(limits=Limits(max_force=10.0))
    assert check({"velocity": 1e9, "payload": 1e9, "acceleration": 1e9}, free).violations == ()
    assert [v.constraint for v in check({"force": 11}, free).violations] == ["max_force"]


def test_figures_read_as_a_person_writes_them() -> None:
    (violation,) = check({"velocity": 2}, policy(limits=LIMITS)).violations
    assert (violation.limit, violation.value) == ("1.5", "2")
    assert "velocity 2 m/s exceeds max_linear_velocity 1.5 m/s" in violation.description


@pytest.mark.parametrize(
    ("target", "inside"),
    [
        ((0.5, 1, 0.5), True),
        ((0, 0, 0), True),  # a corner
        ((1, 2, 1), True),  # the opposite corner
        ((1, 1, 0.5), True),  # on a face
        ((1.000001, 1, 0.5), False),
        ((0.5, -0.000001, 0.5), False),
        ((0.5, 1, 1.000001), False),
        ((-5, 40, 3), False),
    ],
)
def test_box_workspace_edges_included(target: tuple[float, float, float], inside: bool) -> None:
    x, y, z = target
    verdict = check(
        {"target": {"x": x, "y": y, "z": z}}, policy(workspace=Workspace(boxes=(CELL,)))
    )
    if inside:
        assert verdict.violations == ()
    else:
        (violation,) = verdict.violations
        assert (violation.reason, violation.constraint) == (OUTSIDE_WORKSPACE, "workspace")
        assert violation.limit == "inside one of 1 box"


@pytest.mark.parametrize(
    ("x", "y", "z", "inside"),
    [
        (0.5, 0.5, 1, True),
        (1.5, 0.5, 1, True),  # the foot of the L
        (0.5, 1.5, 1, True),  # the stem of the L
        (1.5, 1.5, 1, False),  # the notch: inside the bounding square, outside the L
        (1, 1.5, 1, True),  # on the inner edge
        (1, 1, 1, True),  # the inner (reflex) vertex
        (2, 0, 1, True),  # an outer vertex
        (2, 0.5, 1, True),  # on the outer edge
        (0.1, 0.3, 1, True),
        (2.000001, 0.5, 1, False),
        (0.5, 0.5, 0.5, True),  # bottom face
        (0.5, 0.5, 1.5, True),  # top face
        (0.5, 0.5, 0.499999, False),
        (0.5, 0.5, 1.500001, False),
    ],
)
def test_prism_workspace_concave_with_edges_included(
    x: float, y: float, z: float, inside: bool
) -> None:
    verdict = check(
        {"target": {"x": x, "y": y, "z": z}}, policy(workspace=Workspace(prisms=(L_SHAPE,)))
    )
    assert (verdict.violations == ()) is inside


def test_a_slanted_edge_and_its_vertices_count_as_inside() -> None:
    triangle = Prism(vertices=(Point(0, 0, 0), Point(1, 3, 0), Point(2, 0, 0)), min_z=0, max_z=1)
    on_triangle = policy(workspace=Workspace(prisms=(triangle,)))
    for x, y in ((0.5, 1.5), (1.5, 1.5), (1, 3), (1, 0)):
        assert check({"target": {"x": x, "y": y, "z": 1}}, on_triangle).violations == (), (x, y)
    for x, y in ((0.49, 1.5), (1, 3.01), (1, -0.01)):
        assert check({"target": {"x": x, "y": y, "z": 1}}, on_triangle).violations, (x, y)


def test_the_workspace_is_the_union_of_its_shapes() -> None:
    far = Box(min=Point(10, 10, 0), max=Point(11, 11, 1))
    both = policy(workspace=Workspace(boxes=(CELL, far), prisms=(L_SHAPE,)))
    assert check({"target": {"x": 10.5, "y": 10.5, "z": 0.5}}, both).violations == ()
    assert check({"target": {"x": 1.5, "y": 0.5, "z": 1.2}}, both).violations == ()  # prism only
    (violation,) = check({"target": {"x": 5, "y": 5, "z": 0.5}}, both).violations
    assert violation.limit == "inside one of 2 boxes or 1 prism"
    assert violation.value == "(5, 5, 0.5)"


def test_without_a_workspace_or_a_target_nothing_is_checked() -> None:
    assert check({"target": {"x": 1e6, "y": -1e6, "z": 42}}, policy()).violations == ()
    assert check({"velocity": 0.1}, policy(workspace=Workspace(boxes=(CELL,)))).violations == ()


def test_allowed_denied_and_approval_types() -> None:
    rules = policy(
        allowed=frozenset({"move_to", "grip", "home"}),
        denied=frozenset({"self_destruct"}),
        approval=frozenset({"home"}),
    )
    assert check({}, rules, command_type="grip").violations == ()
    assert check({}, rules, command_type="grip").needs_approval is False
    assert check({}, rules, command_type="home").needs_approval is True
    (not_allowed,) = check({}, rules, command_type="dance").violations
    assert (not_allowed.reason, not_allowed.constraint) == (
        COMMAND_TYPE_NOT_ALLOWED,
        "allowed_command_types",
    )
    assert (not_allowed.limit, not_allowed.value) == ("grip,home,move_to", "dance")
    reasons = [v.reason for v in check({}, rules, command_type="self_destruct").violations]
    assert reasons == [COMMAND_TYPE_DENIED, COMMAND_TYPE_NOT_ALLOWED]
    # An empty allow list allows every type that is not denied.
    open_policy = policy(denied=frozenset({"self_destruct"}))
    assert check({}, open_policy, command_type="anything").violations == ()
    (denied,) = check({}, open_policy, command_type="self_destruct").violations
    assert (denied.reason, denied.limit, denied.value) == (
        COMMAND_TYPE_DENIED,
        "self_destruct",
        "self_destruct",
    )


def test_approval_by_any_one_policy_suffices() -> None:
    verdict = check({}, policy(), policy(approval=frozenset({"move_to"})))
    assert verdict.needs_approval is True
    assert verdict.violations == ()


def test_every_violation_of_every_policy_is_reported_together() -> None:
    first = policy(name="limits", version=2, limits=LIMITS)
    second = policy(
        name="cell",
        version=7,
        limits=Limits(max_linear_velocity=0.25),
        workspace=Workspace(boxes=(CELL,)),
        denied=frozenset({"move_to"}),
    )
    verdict = check(
        {"velocity": 2, "force": 60, "payload": 1, "target": {"x": 3, "y": 0, "z": 0}},
        first,
        second,
    )
    assert [(v.policy_version, v.constraint) for v in verdict.violations] == [
        (2, "max_linear_velocity"),
        (2, "max_force"),
        (7, "denied_command_types"),
        (7, "max_linear_velocity"),
        (7, "workspace"),
    ]
    assert verdict.applied == (PolicyVersion(first.id, 2), PolicyVersion(second.id, 7))
    with pytest.raises(FailedPrecondition) as raised:
        verdict.enforce()
    causes = raised.value.causes
    assert len(causes) == 5
    assert {c.metadata["policy_id"] for c in causes} == {str(first.id), str(second.id)}
    assert set(causes[0].metadata) >= {
        "policy_id",
        "policy_version",
        "constraint",
        "limit",
        "value",
    }
    assert "5 safety constraints" in raised.value.message


def test_a_clean_verdict_enforces_nothing_and_lists_the_versions() -> None:
    one = policy(limits=LIMITS, version=4)
    verdict = check({"velocity": 1}, one)
    verdict.enforce()
    assert verdict.applied == (PolicyVersion(one.id, 4),)
    assert evaluate("move_to", Motion(), ()).applied == ()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"velocity": "fast"}, "command.params.velocity"),
        ({"velocity": float("nan")}, "command.params.velocity"),
        ({"acceleration": float("inf")}, "command.params.acceleration"),
        ({"force": float("-inf")}, "command.params.force"),
        ({"payload": True}, "command.params.payload"),
        ({"payload": None}, "command.params.payload"),
        ({"payload": -1}, "command.params.payload"),
        ({"velocity": 10**400}, "command.params.velocity"),
        ({"target": [1, 2, 3]}, "command.params.target"),
        ({"target": {"x": 1, "y": 2}}, "command.params.target.z"),
        ({"target": {"x": 1, "y": "2", "z": 0}}, "command.params.target.y"),
        ({"target": {"x": float("nan"), "y": 2, "z": 0}}, "command.params.target.x"),
        ({"target": {"x": 1, "y": 2, "z": 0, "frame": "tool"}}, "command.params.target.frame"),
    ],
)
def test_a_checked_param_of_the_wrong_shape_is_invalid(
    params: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        motion_of(params)
    assert [v.field for v in raised.value.violations] == [field]


def test_params_that_are_not_checked_may_be_anything() -> None:
    motion = motion_of({"speed": "fast", "mode": None, "waypoints": [[1, 2]], "velocity": 0})
    assert motion == Motion(velocity=0.0)


def test_a_nan_limit_refuses_rather_than_allows() -> None:
    broken = policy(limits=Limits(max_linear_velocity=float("nan")))
    assert [v.constraint for v in check({"velocity": 0.1}, broken).violations] == [
        "max_linear_velocity"
    ]
    nan_box = Box(min=Point(float("nan"), 0, 0), max=Point(1, 1, 1))
    assert check(
        {"target": {"x": 0.5, "y": 0.5, "z": 0.5}}, policy(workspace=Workspace(boxes=(nan_box,)))
    ).violations


def test_a_policy_without_constraints_passes_everything() -> None:
    empty = policy()
    verdict = check({"velocity": 99, "target": {"x": 9, "y": 9, "z": 9}}, empty, command_type="x")
    assert verdict.violations == ()
    assert replace(verdict, violations=()).needs_approval is False
