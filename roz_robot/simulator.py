"""A simulated robot: a point that moves through space at a set speed, for demos, tests and the
benchmark. It runs `move_to` commands and any task; everything else fails with a reason.

`move_to` takes `params.target {x, y, z}` (metres) and an optional `params.velocity` (m/s),
takes distance / velocity seconds of real time, publishes its position and progress a few times
a second while it moves, and completes with `{"position", "distance"}`. A cancellation or a stop
leaves the robot where it is, as a real arm would stop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roz_robot.messages import from_struct
from roz_robot.work import Outcome, Progress

log = logging.getLogger(__name__)

DEFAULT_SPEED = 0.5  # m/s
TASK_SECONDS = 0.5
TELEMETRY_PERIOD = 0.2  # s between telemetry samples while moving
AXES = ("x", "y", "z")


class InvalidMove(ValueError):
    """A move_to command the robot cannot carry out; the message is the FAILED reason."""


@dataclass(frozen=True)
class Point:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0

    def distance_to(self, other: Point) -> float:
        return math.dist((self.x, self.y, self.z), (other.x, other.y, other.z))

    def toward(self, other: Point, fraction: float) -> Point:
        """The point `fraction` (0..1) of the way from here to `other`."""
        f = min(1.0, max(0.0, fraction))
        return Point(
            self.x + (other.x - self.x) * f,
            self.y + (other.y - self.y) * f,
            self.z + (other.z - self.z) * f,
        )

    def as_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "z": self.z}


@dataclass(frozen=True)
class Move:
    """A straight move from `start` to `target` at constant `velocity`."""

    start: Point
    target: Point
    velocity: float

    @property
    def distance(self) -> float:
        return self.start.distance_to(self.target)

    @property
    def duration(self) -> float:
        return self.distance / self.velocity

    def fraction_at(self, elapsed: float) -> float:
        if self.duration == 0:
            return 1.0
        return min(1.0, max(0.0, elapsed / self.duration))

    def position_at(self, elapsed: float) -> Point:
        return self.start.toward(self.target, self.fraction_at(elapsed))


def plan_move(start: Point, params: Mapping[str, Any], default_speed: float) -> Move:
    """The move a `move_to` command's params ask for; InvalidMove says what is wrong."""
    target = params.get("target")
    if not isinstance(target, Mapping):
        raise InvalidMove("move_to needs params.target with numbers x, y and z")
    x, y, z = (_number(target.get(axis), f"params.target.{axis}") for axis in AXES)
    velocity = _number(params.get("velocity", default_speed), "params.velocity")
    if velocity <= 0:
        raise InvalidMove(f"params.velocity must be positive (m/s), not {velocity!r}")
    return Move(start=start, target=Point(x, y, z), velocity=velocity)


def _number(value: Any, name: str) -> float:
    # JSON numbers arrive as floats; a bool is an int to Python but not a coordinate.
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise InvalidMove(f"{name} must be a finite number, not {value!r}")


class SimulatedRobot:
    """The handlers and stop hook of a simulated robot, to plug into a RobotClient:

        robot = SimulatedRobot()
        RobotClient(..., on_command=robot.on_command, on_task=robot.on_task,
                    on_stop=robot.on_stop)

    One motion at a time: a second move waits for the first.
    """

    def __init__(
        self,
        *,
        speed: float = DEFAULT_SPEED,
        task_seconds: float = TASK_SECONDS,
        telemetry_period: float = TELEMETRY_PERIOD,
    ) -> None:
        if not speed > 0:
            raise ValueError("the speed must be positive")
        self.speed = speed
        self.task_seconds = task_seconds
        self.telemetry_period = telemetry_period
        self.position = Point()
        # Every reason the stop hook was called with, oldest first.
        self.stops: list[str] = []
        self._halt = asyncio.Event()
        self._halt_reason = ""
        self._motion = asyncio.Lock()

    async def on_command(self, command: Any, progress: Progress) -> Outcome:
        if command.type == "move_to":
            return await self.move_to(from_struct(command.params), progress)
        return Outcome(ok=False, reason=f'unknown command type "{command.type}"')

    async def on_task(self, task: Any, progress: Progress) -> Outcome:
        log.info("task %s: working on it", task.id)
        await asyncio.sleep(self.task_seconds)
        return Outcome(ok=True, result={"summary": "simulated"})

    def on_stop(self, reason: str) -> None:
        """Stops the motion in progress, where it is."""
        self.stops.append(reason)
        self._halt_reason = reason
        self._halt.set()

    async def move_to(self, params: Mapping[str, Any], progress: Progress) -> Outcome:
        async with self._motion:
            try:
                move = plan_move(self.position, params, self.speed)
            except InvalidMove as exc:
                return Outcome(ok=False, reason=str(exc))
            self._halt.clear()
            log.info(
                "command %s: moving %.3f m to %s at %.3g m/s (%.1f s)",
                progress.item_id,
                move.distance,
                _show(move.target),
                move.velocity,
                move.duration,
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                while (elapsed := loop.time() - started) < move.duration:
                    self.position = move.position_at(elapsed)
                    await progress.publish(self._sample(move, elapsed))
                    wait = min(self.telemetry_period, move.duration - elapsed)
                    try:
                        # Not wait_for: on 3.11 it can swallow a cancellation (the command's).
                        async with asyncio.timeout(wait):
                            await self._halt.wait()
                    except TimeoutError:
                        continue
                    self.position = move.position_at(loop.time() - started)
                    log.info("command %s: stopped at %s", progress.item_id, _show(self.position))
                    return Outcome(
                        ok=False,
                        reason=f"stopped: {self._halt_reason}",
                        result={"position": self.position.as_dict()},
                    )
            except asyncio.CancelledError:
                self.position = move.position_at(loop.time() - started)
                log.info("command %s: cancelled at %s", progress.item_id, _show(self.position))
                raise
            self.position = move.target
            await progress.publish(self._sample(move, move.duration))
            return Outcome(
                ok=True, result={"position": self.position.as_dict(), "distance": move.distance}
            )

    def _sample(self, move: Move, elapsed: float) -> dict[str, Any]:
        return {"position": self.position.as_dict(), "progress": move.fraction_at(elapsed)}


def _show(point: Point) -> str:
    return f"({point.x:.3f}, {point.y:.3f}, {point.z:.3f})"
