"""The simulated robot's agent, a script and not a model: it answers every user message with a
small `move_to` (to the point the message names, else a step from where the robot is), proposed
to the server, and says how it went. It never moves the robot itself: the server turns the
proposal into a command, which the simulator runs like any other.

A turn: "Moving to (x, y, z)." in a few text deltas, the proposal (at a slow velocity), the wait
for its outcome, a sentence about it (finished in which state with what result, or refused and
why), then the end of the turn with its words counted as tokens. A request to cancel the turn
ends the wait and the turn ("cancelled").
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from roz_robot.agent import AgentSession, UpdateRefused
from roz_robot.messages import from_struct, state_name
from roz_robot.record import ItemKind
from roz_robot.simulator import Point, SimulatedRobot

# Slow, as a move proposed by an agent near people should be.
DEFAULT_VELOCITY = 0.2  # m/s
# How far a move goes along x when the message names no point.
STEP = 0.1  # m
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def target_for(message: str, position: Point, step: float = STEP) -> Point:
    """The first three numbers of `message` as x, y and z ("move to 1 2 0.5"); else `step`
    metres along x from `position`."""
    numbers = [float(n) for n in NUMBER.findall(message)[:3]]
    if len(numbers) == 3:
        return Point(*numbers)
    return Point(round(position.x + step, 3), position.y, position.z)


class ScriptedAgent:
    """The agent of one simulated robot: `RobotClient(..., agent=ScriptedAgent(robot))`."""

    def __init__(
        self, robot: SimulatedRobot, *, velocity: float = DEFAULT_VELOCITY, step: float = STEP
    ) -> None:
        self._robot = robot
        self._velocity = velocity
        self._step = step

    async def on_session_event(self, session: AgentSession, event: Any) -> None:
        # Only a user message starts work; the outcomes and a request to cancel reach the turn
        # that waits for them as they arrive, not through these calls.
        if event.HasField("user_message"):
            await self._answer(session, event.user_message.content)

    async def _answer(self, session: AgentSession, message: str) -> None:
        reply = _Reply(session, input_tokens=len(message.split()))
        target = target_for(message, self._robot.position, self._step)
        for delta in ("Moving to ", f"({target.x:g}, {target.y:g}, {target.z:g})", "."):
            await reply.say(delta)
        if session.cancel_requested:
            await reply.finish("cancelled")
            return
        call_id = await session.propose(
            "move_to", {"target": target.as_dict(), "velocity": self._velocity}
        )
        try:
            outcome = await _outcome_unless_cancelled(session, call_id)
        except UpdateRefused as exc:
            await reply.say(f" The server refused the proposal: {exc}.")
            await reply.finish("error")
            return
        if outcome is None:
            await reply.finish("cancelled")
            return
        await reply.say(f" {_describe(outcome)}")
        await reply.finish("end_turn")


class _Reply:
    """What the agent says in one turn, counted in words for the turn's tokens."""

    def __init__(self, session: AgentSession, *, input_tokens: int) -> None:
        self._session = session
        self._input_tokens = input_tokens
        self._said: list[str] = []

    async def say(self, text: str) -> None:
        self._said.append(text)
        await self._session.say(text)

    async def finish(self, stop_reason: str) -> None:
        words = len("".join(self._said).split())
        await self._session.finish_turn(stop_reason, self._input_tokens, words)


async def _outcome_unless_cancelled(session: AgentSession, call_id: str) -> Any | None:
    """The action's outcome, or None if the operator cancels the turn first."""
    outcome = asyncio.create_task(session.wait_outcome(call_id))
    cancel = asyncio.create_task(session.wait_cancel_requested())
    try:
        await asyncio.wait({outcome, cancel}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (outcome, cancel):
            waiting.cancel()
        await asyncio.gather(outcome, cancel, return_exceptions=True)
    return outcome.result() if not outcome.cancelled() else None


def _describe(outcome: Any) -> str:
    if outcome.HasField("action_refused"):
        refused = outcome.action_refused
        return f"Refused ({refused.code}): {refused.message}."
    finished = outcome.action_finished
    state = state_name(ItemKind.COMMAND, finished.state)
    reason = f" ({finished.reason})" if finished.reason else ""
    result = json.dumps(from_struct(finished.result), sort_keys=True)
    return f"Finished {state}{reason}: {result}."
