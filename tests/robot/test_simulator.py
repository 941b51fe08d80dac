"""The simulated robot: move_to's time and geometry, what it refuses, telemetry while moving,
and stopping where it is."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import pytest
from roz.v1 import commands_pb2, tasks_pb2

from roz_robot.record import ItemKind
from roz_robot.simulator import InvalidMove, Move, Point, SimulatedRobot, plan_move
from roz_robot.work import Outcome, Progress

ORIGIN = Point()


class Samples:
    """A Progress whose telemetry lands in a list, with an event per sample."""

    def __init__(self, item_id: str = "c1") -> None:
        self.states: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.progress = Progress(ItemKind.COMMAND, item_id, self._publish)

    async def _publish(self, state: Mapping[str, Any]) -> None:
        self.states.append(dict(state))
        self.arrived.set()


def move_to(x: float, y: float, z: float, **extra: Any) -> dict[str, Any]:
    return {"target": {"x": x, "y": y, "z": z}, **extra}


def command(type_: str, params: Mapping[str, Any]) -> Any:
    made = commands_pb2.Command(id="c1", host_id="h1", type=type_)
    made.params.update(params)
    return made


# -- planning -------------------------------------------------------------------------------


def test_a_move_takes_distance_over_velocity() -> None:
    move = plan_move(ORIGIN, move_to(3, 4, 0), default_speed=0.5)
    assert (move.distance, move.duration, move.velocity) == (5.0, 10.0, 0.5)
    assert move.target == Point(3.0, 4.0, 0.0)


def test_the_velocity_param_overrides_the_default_speed() -> None:
    move = plan_move(Point(1, 1, 1), move_to(1, 1, 3, velocity=4), default_speed=0.5)
    assert (move.distance, move.duration) == (2.0, 0.5)


def test_a_move_starts_from_where_the_robot_is() -> None:
    move = plan_move(Point(1, 2, 3), move_to(1, 2, 3), default_speed=0.5)
    assert (move.distance, move.duration) == (0.0, 0.0)
    assert move.position_at(0.0) == Point(1, 2, 3)
    assert move.fraction_at(0.0) == 1.0


def test_positions_along_a_move_are_on_the_line_and_clamped() -> None:
    move = Move(start=Point(0, 0, 0), target=Point(2, 0, -2), velocity=1.0)
    assert math.isclose(move.duration, math.sqrt(8))
    half = move.duration / 2
    assert move.position_at(half) == Point(1.0, 0.0, -1.0)
    assert move.fraction_at(half) == 0.5
    assert move.position_at(-1.0) == Point(0, 0, 0)
    assert move.position_at(move.duration * 3) == Point(2.0, 0.0, -2.0)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, "move_to needs params.target with numbers x, y and z"),
        ({"target": [1, 2, 3]}, "move_to needs params.target with numbers x, y and z"),
        ({"target": {"x": 1, "y": 2}}, "params.target.z must be a finite number, not None"),
        (move_to(1, "2", 3), "params.target.y must be a finite number, not '2'"),
        (move_to(True, 2, 3), "params.target.x must be a finite number, not True"),
        (move_to(1, 2, math.inf), "params.target.z must be a finite number, not inf"),
        (move_to(1, 2, math.nan), "params.target.z must be a finite number, not nan"),
        (move_to(1, 2, 3, velocity=0), "params.velocity must be positive (m/s), not 0.0"),
        (move_to(1, 2, 3, velocity=-1.5), "params.velocity must be positive (m/s), not -1.5"),
        (move_to(1, 2, 3, velocity="fast"), "params.velocity must be a finite number, not 'fast'"),
    ],
)
def test_an_impossible_move_is_refused_with_a_reason(params: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidMove) as refused:
        plan_move(ORIGIN, params, default_speed=0.5)
    assert str(refused.value) == reason


def test_the_robot_refuses_a_speed_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SimulatedRobot(speed=0)


# -- running --------------------------------------------------------------------------------


def test_move_to_arrives_publishing_its_way_and_reports_where_and_how_far() -> None:
    async def scenario() -> tuple[Outcome, Samples, Point]:
        robot = SimulatedRobot(speed=0.5, telemetry_period=0.02)
        samples = Samples()
        outcome = await robot.on_command(
            command("move_to", move_to(0, 0.06, 0.08)), samples.progress
        )
        return outcome, samples, robot.position

    outcome, samples, position = asyncio.run(scenario())
    assert outcome.ok
    assert outcome.reason == ""
    assert outcome.result["position"] == pytest.approx({"x": 0.0, "y": 0.06, "z": 0.08})
    assert outcome.result["distance"] == pytest.approx(0.1)
    assert position == Point(0.0, 0.06, 0.08)
    fractions = [state["progress"] for state in samples.states]
    assert len(fractions) >= 3
    assert fractions == sorted(fractions)
    assert fractions[0] < 0.5
    assert fractions[-1] == 1.0
    assert {state["command_id"] for state in samples.states} == {"c1"}
    assert samples.states[-1]["position"] == pytest.approx({"x": 0.0, "y": 0.06, "z": 0.08})


def test_the_stop_hook_stops_a_move_where_it_is() -> None:
    async def scenario() -> tuple[Outcome, Point, list[str]]:
        robot = SimulatedRobot(speed=1.0, telemetry_period=0.05)
        samples = Samples()
        moving = asyncio.create_task(robot.move_to(move_to(100, 0, 0), samples.progress))
        await samples.arrived.wait()
        robot.on_stop("link lost: UNAVAILABLE")
        return await moving, robot.position, robot.stops

    outcome, position, stops = asyncio.run(scenario())
    assert not outcome.ok
    assert outcome.reason == "stopped: link lost: UNAVAILABLE"
    assert 0.0 <= position.x < 1.0
    assert outcome.result["position"] == pytest.approx(position.as_dict())
    assert stops == ["link lost: UNAVAILABLE"]


def test_a_cancelled_move_leaves_the_robot_where_it_was_and_the_next_starts_there() -> None:
    async def scenario() -> tuple[Point, Outcome]:
        robot = SimulatedRobot(speed=1.0, telemetry_period=0.05)
        samples = Samples()
        moving = asyncio.create_task(robot.move_to(move_to(100, 0, 0), samples.progress))
        await samples.arrived.wait()
        moving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await moving
        stopped_at = robot.position
        back = await robot.move_to(move_to(0, 0, 0, velocity=100), Samples().progress)
        return stopped_at, back

    stopped_at, back = asyncio.run(scenario())
    assert 0.0 <= stopped_at.x < 1.0
    assert back.ok
    assert back.result["distance"] == pytest.approx(stopped_at.x)


def test_a_stop_while_idle_does_not_stop_the_next_move() -> None:
    async def scenario() -> Outcome:
        robot = SimulatedRobot(speed=10.0, telemetry_period=0.01)
        robot.on_stop("an old cancellation")
        return await robot.move_to(move_to(0.1, 0, 0), Samples().progress)

    assert asyncio.run(scenario()).ok


def test_an_invalid_move_fails_and_leaves_the_robot_where_it_is() -> None:
    async def scenario() -> tuple[Outcome, Point]:
        robot = SimulatedRobot()
        outcome = await robot.on_command(
            command("move_to", {"target": {"x": 1}}), Samples().progress
        )
        return outcome, robot.position

    outcome, position = asyncio.run(scenario())
    assert (outcome.ok, outcome.reason) == (
        False,
        "params.target.y must be a finite number, not None",
    )
    assert position == ORIGIN


def test_an_unknown_command_type_fails_with_its_name() -> None:
    outcome = asyncio.run(SimulatedRobot().on_command(command("grip", {}), Samples().progress))
    assert (outcome.ok, outcome.reason) == (False, 'unknown command type "grip"')


def test_a_task_succeeds_after_a_moment() -> None:
    task = tasks_pb2.Task(id="t1", prompt="tidy up")
    outcome = asyncio.run(SimulatedRobot(task_seconds=0.01).on_task(task, Samples("t1").progress))
    assert (outcome.ok, dict(outcome.result)) == (True, {"summary": "simulated"})
