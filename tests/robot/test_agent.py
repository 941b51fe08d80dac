"""A robot's agent in sessions, against the scripted server (tests/robot/scripted.py): updates
numbered per session, kept until answered and sent again after a reconnect, refusals, events
handed to the agent in order without holding up the link, outcomes that reach a waiting agent at
once, the end of a session; and the simulator's scripted agent, turn by turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from roz.v1 import commands_pb2, robot_link_pb2, sessions_pb2

from roz_robot import (
    AgentSession,
    Outcome,
    Progress,
    RobotClient,
    SessionEnded,
    UpdateRefused,
)
from roz_robot.backoff import Backoff
from roz_robot.messages import from_struct, to_struct
from roz_robot.scripted_agent import ScriptedAgent, target_for
from roz_robot.simulator import Point, SimulatedRobot
from tests.robot.scripted import (
    HOST,
    OTHER_SESSION,
    SESSION,
    ScriptedLink,
    ScriptedStream,
    command,
    linked,
    scenario,
    session_event,
    until,
)

KEY = "roz_sk_" + "a" * 43
PENDING = commands_pb2.Command.STATE_PENDING
RUNNING = commands_pb2.Command.STATE_RUNNING
COMPLETED = commands_pb2.Command.STATE_COMPLETED


class Talker:
    """An agent the test drives: it notes each event it is handed (as it is handed), keeps each
    session, and runs `on_message` for a user message when one is set."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, int, str]] = []
        self.sessions: dict[str, AgentSession] = {}
        self.on_message: Callable[[AgentSession, Any], Awaitable[None]] | None = None

    async def on_session_event(self, session: AgentSession, event: Any) -> None:
        self.sessions[session.id] = session
        self.heard.append((session.id, event.sequence, event.WhichOneof("event")))
        if event.HasField("user_message") and self.on_message is not None:
            await self.on_message(session, event)

    def heard_in(self, session_id: str) -> list[str]:
        return [kind for sid, _, kind in self.heard if sid == session_id]


def robot(target: str, state_dir: Path, agent: Any = None, **handlers: Any) -> RobotClient:
    return RobotClient(
        target,
        KEY,
        state_dir=state_dir,
        agent=agent,
        backoff=Backoff(base=0.01, cap=0.05),
        **handlers,
    )


@asynccontextmanager
async def running(client: RobotClient) -> AsyncIterator[RobotClient]:
    run = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        await asyncio.wait_for(client.stop(), 10)
        await run


def started(sequence: int = 1, session_id: str = SESSION) -> Any:
    return session_event(
        sequence, session_id=session_id, session_started=sessions_pb2.SessionStarted(host_id=HOST)
    )


def message(sequence: int, content: str, turn: int = 1) -> Any:
    return session_event(
        sequence, turn=turn, user_message=sessions_pb2.UserMessage(content=content)
    )


async def updates(stream: ScriptedStream, count: int) -> list[Any]:
    return [await stream.expect("session_update") for _ in range(count)]


async def acked_through(stream: ScriptedStream, sequence: int, *also: str) -> list[Any]:
    """Waits for the acknowledgement of `sequence`; returns the messages of kinds `also` that
    came meanwhile."""
    others = []
    while True:
        got = await stream.expect("ack", *also)
        if not isinstance(got, robot_link_pb2.Ack):
            others.append(got)
        elif got.sequence >= sequence:
            return others


async def a_session(server: ScriptedLink, talker: Talker) -> tuple[ScriptedStream, AgentSession]:
    """The next link, welcomed, with the session started on it and handed to the agent."""
    stream, _ = await linked(server)
    stream.deliver_event(1, started())
    await until(lambda: SESSION in talker.sessions)
    return stream, talker.sessions[SESSION]


# -- updates: numbered, in order, kept until answered ----------------------------------------


def test_updates_are_numbered_per_session_from_1_and_sent_in_order(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        async with running(robot(server.target, tmp_path, talker)):
            stream, first = await a_session(server, talker)
            stream.deliver_event(2, started(session_id=OTHER_SESSION))
            await until(lambda: OTHER_SESSION in talker.sessions)
            other = talker.sessions[OTHER_SESSION]
            assert (first.id, first.host_id, other.id) == (SESSION, HOST, OTHER_SESSION)

            await first.say("Hello")
            await other.say("Hi")
            call_id = await first.propose("move_to", {"target": {"x": 1}}, timeout=5)
            await first.finish_turn("end_turn", input_tokens=3, output_tokens=4)
            tool_call = await other.request_tool("camera", {"zoom": 2}, call_id="t1")
            await first.end("bye")

            sent = await updates(stream, 6)
            assert [(u.session_id, u.sequence, u.WhichOneof("event")) for u in sent] == [
                (SESSION, 1, "text_delta"),
                (OTHER_SESSION, 1, "text_delta"),
                (SESSION, 2, "action_proposed"),
                (SESSION, 3, "turn_finished"),
                (OTHER_SESSION, 2, "tool_call_requested"),
                (SESSION, 4, "session_ended"),
            ]
            hello, _, action, turn, tool, end = sent
            assert hello.text_delta.text == "Hello"
            assert (action.action_proposed.call_id, action.action_proposed.type) == (
                call_id,
                "move_to",
            )
            assert from_struct(action.action_proposed.params) == {"target": {"x": 1}}
            assert action.action_proposed.timeout.seconds == 5
            assert (turn.turn_finished.stop_reason, turn.turn_finished.input_tokens) == (
                "end_turn",
                3,
            )
            assert turn.turn_finished.output_tokens == 4
            assert (tool_call, tool.tool_call_requested.tool_name) == ("t1", "camera")
            assert tool.tool_call_requested.call_id == "t1"
            assert from_struct(tool.tool_call_requested.parameters) == {"zoom": 2}
            assert end.session_ended.message == "bye"

    scenario(test)


def test_unanswered_updates_go_again_after_a_reconnect_in_order_and_answered_ones_never(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        async with running(robot(server.target, tmp_path, talker)) as client:
            first, session = await a_session(server, talker)
            for text in ("one", "two", "three", "four"):
                await session.say(text)
            sent = await updates(first, 4)
            first.answer_update(sent[1])  # answers "one" and "two"
            await until(lambda: list(session._unanswered) == [3, 4])
            first.end(grpc.StatusCode.UNAVAILABLE, "the proxy restarted")
            await until(lambda: not client.connected)
            await session.say("five")  # while offline: kept for the next link

            second, _ = await linked(server)
            again = await updates(second, 3)
            assert [(u.sequence, u.text_delta.text) for u in again] == [
                (3, "three"),
                (4, "four"),
                (5, "five"),
            ]
            await session.say("six")
            (six,) = await updates(second, 1)
            assert (six.sequence, six.text_delta.text) == (6, "six")
            await second.nothing_but_chatter(0.2)
            second.answer_update(six)
            await until(lambda: not session._unanswered)
            second.end(grpc.StatusCode.UNAVAILABLE)

            third, _ = await linked(server)
            await third.nothing_but_chatter(0.3)

    scenario(test)


def test_an_out_of_order_refusal_sends_again_from_the_sequence_the_server_expects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        async with running(robot(server.target, tmp_path, talker)):
            stream, session = await a_session(server, talker)
            for text in ("a", "b", "c", "d"):
                await session.say(text)
            sent = await updates(stream, 4)
            stream.answer_update(sent[0])
            # The server lost "b": it refuses what follows, each time naming "b".
            for later in sent[2:]:
                stream.answer_update(
                    later, accepted=False, reason="out of order: expected sequence 2"
                )
            again = await updates(stream, 3)
            assert [(u.sequence, u.text_delta.text) for u in again] == [
                (2, "b"),
                (3, "c"),
                (4, "d"),
            ]
            await stream.nothing_but_chatter(0.3)  # once, for both refusals
            stream.answer_update(again[-1])
            await until(lambda: not session._unanswered)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("update 3 refused: out of order" in w for w in warnings)

    scenario(test)


def test_a_refused_proposal_is_logged_dropped_and_ends_the_wait_for_its_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        async with running(robot(server.target, tmp_path, talker)) as client:
            stream, session = await a_session(server, talker)
            call_id = await session.propose("move_to", {"target": {"x": 1, "y": 0, "z": 0}})
            (proposal,) = await updates(stream, 1)
            stream.answer_update(proposal, accepted=False, reason="no turn is running")
            with pytest.raises(UpdateRefused, match="no turn is running"):
                await session.wait_outcome(call_id, timeout=5)
            client.reconnect()
            again, _ = await linked(server)
            await again.nothing_but_chatter(0.3)
        assert f"session {SESSION}: update 1 refused: no turn is running" in caplog.messages

    scenario(test)


def test_an_agent_that_says_more_than_is_answered_waits_for_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("roz_robot.agent.UNANSWERED_LIMIT", 2)

    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        async with running(robot(server.target, tmp_path, talker)):
            stream, session = await a_session(server, talker)
            await session.say("a")
            await session.say("b")
            third = asyncio.create_task(session.say("c"))
            sent = await updates(stream, 2)
            await stream.nothing_but_chatter(0.2)
            assert not third.done()
            stream.answer_update(sent[0])
            (c,) = await updates(stream, 1)
            assert (c.sequence, c.text_delta.text) == (3, "c")
            await third

    scenario(test)


# -- events: in order, never in the way --------------------------------------------------------


def test_an_outcome_reaches_the_agent_waiting_for_it_while_its_handler_still_runs(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()

        async def move(session: AgentSession, event: Any) -> None:
            call_id = await session.propose("move_to", {"target": {"x": 1, "y": 0, "z": 0}})
            outcome = await session.wait_outcome(call_id, timeout=10)
            await session.say(f"{outcome.type} {outcome.action_finished.command_id}")

        talker.on_message = move
        async with running(robot(server.target, tmp_path, talker)):
            stream, _ = await a_session(server, talker)
            stream.deliver_event(2, message(2, "move"))
            (proposal,) = await updates(stream, 1)
            call_id = proposal.action_proposed.call_id
            finished = sessions_pb2.ActionFinished(
                call_id=call_id, command_id="c1", state=COMPLETED
            )
            stream.deliver_event(3, session_event(3, turn=1, action_finished=finished))
            (said,) = await updates(stream, 1)
            assert said.text_delta.text == "action_finished c1"
            # Handed to the agent too, once the handler that waited for it was done.
            await until(lambda: len(talker.heard) == 3)
            assert talker.heard_in(SESSION) == [
                "session_started",
                "user_message",
                "action_finished",
            ]

    scenario(test)


def test_a_sessions_events_reach_the_agent_in_order_without_holding_up_the_link(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        gate = asyncio.Event()
        ran: list[str] = []

        async def hold(session: AgentSession, event: Any) -> None:
            await gate.wait()

        async def run_command(item: Any, progress: Progress) -> Outcome:
            ran.append(item.id)
            return Outcome(ok=True)

        talker.on_message = hold
        client = robot(server.target, tmp_path, talker, on_command=run_command)
        async with running(client):
            stream, session = await a_session(server, talker)
            stream.deliver_event(2, message(2, "wait for it"))
            cancel = sessions_pb2.TurnCancelRequested(reason="too slow")
            stream.deliver_event(3, session_event(3, turn=1, turn_cancel_requested=cancel))
            stream.deliver(4, command=command("c4"))
            stream.deliver_event(5, started(session_id=OTHER_SESSION))
            # While the agent is busy with the message: everything acknowledged, the command
            # run, the other session heard, and the request to cancel already visible.
            await acked_through(stream, 5, "command_report")
            await until(lambda: ran == ["c4"] and talker.heard_in(OTHER_SESSION) != [])
            assert session.cancel_requested
            assert talker.heard_in(SESSION) == ["session_started", "user_message"]
            gate.set()
            await until(lambda: len(talker.heard_in(SESSION)) == 3)
            assert talker.heard_in(SESSION) == [
                "session_started",
                "user_message",
                "turn_cancel_requested",
            ]

    scenario(test)


def test_the_end_of_a_session_fails_waits_and_sends_and_forgets_it(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        talker = Talker()
        failures: list[Exception] = []

        async def wait(session: AgentSession, event: Any) -> None:
            call_id = await session.propose("move_to", {"target": {"x": 1, "y": 0, "z": 0}})
            try:
                await session.wait_outcome(call_id)
            except SessionEnded as exc:
                failures.append(exc)

        talker.on_message = wait
        async with running(robot(server.target, tmp_path, talker)):
            stream, session = await a_session(server, talker)
            stream.deliver_event(2, message(2, "go"))
            await updates(stream, 1)
            completed = sessions_pb2.SessionCompleted(reason="OPERATOR_ENDED")
            stream.deliver_event(3, session_event(3, session_completed=completed))
            await until(lambda: failures != [])
            assert str(failures[0]) == f"session {SESSION} ended (OPERATOR_ENDED)"
            assert session.ended
            with pytest.raises(SessionEnded):
                await session.say("anyone there?")
            await until(lambda: talker.heard_in(SESSION)[-1:] == ["session_completed"])

            # Its end delivered again opens nothing; the next session's start is heard, and
            # would have been after a reopened one's.
            stream.deliver_event(4, session_event(3, session_completed=completed))
            stream.deliver_event(5, started(session_id=OTHER_SESSION))
            await until(lambda: talker.heard_in(OTHER_SESSION) == ["session_started"])
            assert talker.heard_in(SESSION) == [
                "session_started",
                "user_message",
                "session_completed",
            ]
            await stream.nothing_but_chatter(0.2)

    scenario(test)


def test_a_robot_without_an_agent_acknowledges_session_events_and_works_as_before(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        ran: list[str] = []

        async def run_command(item: Any, progress: Progress) -> Outcome:
            ran.append(item.id)
            return Outcome(ok=True)

        async with running(robot(server.target, tmp_path, on_command=run_command)):
            stream, _ = await linked(server)
            stream.deliver_event(1, started())
            stream.deliver_event(2, message(2, "hello?"))
            await acked_through(stream, 2)
            stream.send(session_ack={"session_id": SESSION, "sequence": 1, "accepted": True})
            stream.deliver(3, command=command("c3"))
            report = await stream.expect("command_report")  # and no session update before it
            assert (report.command_id, report.state) == ("c3", RUNNING)
            await until(lambda: ran == ["c3"])

    scenario(test)


# -- the simulator's scripted agent ----------------------------------------------------------


def test_the_scripted_agents_target_is_the_messages_point_else_a_step_along_x() -> None:
    here = Point(0.3, -1.0, 0.25)
    assert target_for("move to 1 2 0.5", here) == Point(1.0, 2.0, 0.5)
    assert target_for("go to (-1.5, .5, +2) and wait 3 s", here) == Point(-1.5, 0.5, 2.0)
    assert target_for("a bit closer", here) == Point(0.4, -1.0, 0.25)
    assert target_for("to 1 2", here, step=0.5) == Point(0.8, -1.0, 0.25)


async def said_then_proposed(stream: ScriptedStream) -> tuple[str, Any]:
    """The text the agent says, up to its proposal, and the proposal; each answered."""
    text = ""
    while True:
        (update,) = await updates(stream, 1)
        stream.answer_update(update)
        if update.HasField("action_proposed"):
            return text, update.action_proposed
        text += update.text_delta.text


def test_the_scripted_agent_moves_the_robot_a_step_and_says_how_it_went(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        simulated = SimulatedRobot(telemetry_period=0.05)
        client = robot(
            server.target,
            tmp_path,
            ScriptedAgent(simulated),
            on_command=simulated.on_command,
            on_stop=simulated.on_stop,
        )
        async with running(client):
            stream, _ = await linked(server)
            stream.deliver_event(1, started())
            stream.deliver_event(2, message(2, "come a little closer"))
            text, proposal = await said_then_proposed(stream)
            assert text == "Moving to (0.1, 0, 0)."
            assert proposal.type == "move_to"
            assert from_struct(proposal.params) == {
                "target": {"x": 0.1, "y": 0.0, "z": 0.0},
                "velocity": 0.2,
            }

            # The server made it a command of this host, which the simulator runs.
            move = commands_pb2.Command(
                id="c1", host_id=HOST, type="move_to", params=proposal.params, state=PENDING
            )
            stream.deliver(3, command=move)
            stream.answer(await stream.expect("command_report"), state=RUNNING)
            done = await stream.expect("command_report")
            stream.answer(done, state=COMPLETED)
            assert done.state == COMPLETED
            finished = sessions_pb2.ActionFinished(
                call_id=proposal.call_id, command_id="c1", state=COMPLETED, result=done.result
            )
            stream.deliver_event(4, session_event(3, turn=1, action_finished=finished))

            (outcome,) = await updates(stream, 1)
            assert outcome.text_delta.text == (
                ' Finished COMPLETED: {"distance": 0.1, '
                '"position": {"x": 0.1, "y": 0.0, "z": 0.0}}.'
            )
            (turn,) = await updates(stream, 1)
            said = text + outcome.text_delta.text
            assert (turn.turn_finished.stop_reason, turn.turn_finished.input_tokens) == (
                "end_turn",
                4,
            )
            assert turn.turn_finished.output_tokens == len(said.split()) == 16
            assert simulated.position == Point(0.1, 0.0, 0.0)

    scenario(test)


def test_the_scripted_agent_goes_where_the_message_says_and_says_why_it_was_refused(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        client = robot(server.target, tmp_path, ScriptedAgent(SimulatedRobot()))
        async with running(client):
            stream, _ = await linked(server)
            stream.deliver_event(1, started())
            stream.deliver_event(2, message(2, "move to 1 2 0.5"))
            text, proposal = await said_then_proposed(stream)
            assert text == "Moving to (1, 2, 0.5)."
            assert from_struct(proposal.params) == {
                "target": {"x": 1.0, "y": 2.0, "z": 0.5},
                "velocity": 0.2,
            }
            refused = sessions_pb2.ActionRefused(
                call_id=proposal.call_id,
                code="SAFETY_VIOLATION",
                message="the target is outside the workspace",
                violations=[to_struct({"reason": "workspace"})],
            )
            stream.deliver_event(3, session_event(3, turn=1, action_refused=refused))
            said, turn = await updates(stream, 2)
            assert said.text_delta.text == (
                " Refused (SAFETY_VIOLATION): the target is outside the workspace."
            )
            assert (turn.turn_finished.stop_reason, turn.turn_finished.input_tokens) == (
                "end_turn",
                5,
            )

    scenario(test)


def test_the_scripted_agent_ends_a_cancelled_turn_at_once_and_takes_the_next(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        client = robot(server.target, tmp_path, ScriptedAgent(SimulatedRobot()))
        async with running(client):
            stream, _ = await linked(server)
            stream.deliver_event(1, started())
            stream.deliver_event(2, message(2, "move to 5 5 5"))
            await said_then_proposed(stream)
            cancel = sessions_pb2.TurnCancelRequested(reason="wrong place")
            stream.deliver_event(3, session_event(3, turn=1, turn_cancel_requested=cancel))
            (turn,) = await updates(stream, 1)
            assert turn.turn_finished.stop_reason == "cancelled"
            assert turn.turn_finished.output_tokens == 5  # "Moving to (5, 5, 5)."

            # The next turn is not cancelled: the request was about the one before.
            stream.deliver_event(4, message(4, "move to 1 1 1", turn=2))
            text, proposal = await said_then_proposed(stream)
            assert text == "Moving to (1, 1, 1)."
            assert proposal.type == "move_to"
            await stream.nothing_but_chatter(0.2)

    scenario(test)
