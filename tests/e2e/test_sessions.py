"""Agent sessions over a real listener: an operator's StreamSession, the robot's agent on its robot
link (a grpcio robot speaking the protocol as the test says), the safety path every proposed
action takes, the log's numbering across reconnects, refusals, and the end of sessions."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2
from roz.v1 import commands_pb2
from roz.v1 import robot_link_pb2 as link
from roz.v1 import sessions_pb2 as pb

from tests.e2e.conftest import Roz, TestClock, roz_servers
from tests.e2e.test_audit import events as audit_entries
from tests.e2e.test_commands import new_key, rest
from tests.e2e.test_robot_keys import robot_key
from tests.e2e.test_robot_link import eventually
from tests.e2e.test_watches import grpc_web_stream, sse
from tests.support.operator import Operator
from tests.support.robot import Robot

COMPLETED = commands_pb2.Command.STATE_COMPLETED
RUNNING = commands_pb2.Command.STATE_RUNNING


class Cell:
    """A tenant's environment whose policy wants move_to approved, caps velocity at 1 m/s and
    the workspace at the unit cube; one host in it with its robot key."""

    def __init__(self, roz: Roz, label: str = "sessions") -> None:
        self.roz = roz
        self.key = roz.new_tenant(label)
        tag = uuid.uuid4().hex[:8]
        policy = self.rest(
            "POST",
            "/api/v1/safety-policies",
            json={
                "name": f"agent-limits-{tag}",
                "limits": {"max_linear_velocity": 1.0},
                "workspace": {
                    "boxes": [{"min": {"x": 0, "y": 0, "z": 0}, "max": {"x": 1, "y": 1, "z": 1}}]
                },
                "approval_command_types": ["move_to"],
            },
        )
        environment = self.rest("POST", "/api/v1/environments", json={"name": f"cell-{tag}"})
        self.rest(
            "PUT",
            f"/api/v1/environments/{environment['id']}",
            params={"update_mask": "safety_policy_ids"},
            json={"safety_policy_ids": [policy["id"]]},
        )
        self.environment_id: str = environment["id"]
        self.host_id: str = self.rest(
            "POST",
            "/api/v1/hosts",
            json={"name": f"arm-{tag}", "environment_id": environment["id"]},
        )["id"]
        _, self.robot_secret = robot_key(roz, self.key, self.host_id)

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        return rest(self.roz, self.key, method, path, **kwargs)

    def robot(self, **kwargs: Any) -> Robot:
        robot = Robot(self.roz.listener.target, self.robot_secret, **kwargs)
        robot.welcome()
        return robot

    def operator(self, key: str = "") -> Operator:
        return Operator(self.roz.listener.target, key or self.key)


class Agent:
    """The robot's agent, as the test drives it over a grpcio robot: numbers its updates and
    reads what the server sends it, acknowledging every delivery."""

    def __init__(self, robot: Robot) -> None:
        self.robot = robot
        self.sequence: dict[str, int] = {}
        # Deliveries that came while an update waited for its answer.
        self.early: list[link.Delivery] = []

    def update(self, session_id: str, sequence: int | None = None, **event: Any) -> link.SessionAck:
        if sequence is None:
            sequence = self.sequence.get(session_id, 0) + 1
        self.sequence[session_id] = max(sequence, self.sequence.get(session_id, 0))
        self.robot.send(
            session_update=link.SessionUpdate(session_id=session_id, sequence=sequence, **event)
        )
        while True:
            response = self.robot.receive("session_ack", "delivery")
            if response.WhichOneof("message") == "session_ack":
                return response.session_ack
            self.early.append(response.delivery)

    def say(self, session_id: str, text: str) -> link.SessionAck:
        return self.update(session_id, text_delta=pb.TextDelta(text=text))

    def propose(self, session_id: str, call_id: str, type_: str, **params: Any) -> link.SessionAck:
        struct = struct_pb2.Struct()
        struct.update(params)
        return self.update(
            session_id,
            action_proposed=pb.ProposedAction(call_id=call_id, type=type_, params=struct),
        )

    def finish(self, session_id: str, tokens: tuple[int, int] = (0, 0)) -> link.SessionAck:
        return self.update(
            session_id,
            turn_finished=pb.TurnFinished(
                stop_reason="end_turn", input_tokens=tokens[0], output_tokens=tokens[1]
            ),
        )

    def heard(self) -> pb.SessionEvent:
        """The next session event delivered (acknowledged)."""
        delivery = self.delivered()
        assert delivery.WhichOneof("item") == "session_event", delivery
        return delivery.session_event

    def delivered(self) -> link.Delivery:
        delivery = self.early.pop(0) if self.early else self.robot.delivery()
        self.robot.ack(delivery.sequence)
        return delivery


def kinds(events: list[pb.SessionEvent]) -> list[str]:
    return [event.type for event in events]


@pytest.fixture
def cell(roz: Roz) -> Cell:
    return Cell(roz)


def test_a_full_session_over_native_grpc(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        started = operator.event()
        assert started.type == "session_started"
        assert started.sequence == 1
        session_id = started.session_id
        assert started.session_started.host_id == cell.host_id
        assert agent.heard().type == "session_started"

        operator.say("move to 0.5 0.5 0.5", message_id="m-1")
        said = operator.until("turn_started")
        assert kinds(said) == ["user_message", "turn_started"]
        assert [e.sequence for e in said] == [2, 3]
        assert all(e.turn == 1 and e.correlation_id == "m-1" for e in said)
        heard = agent.heard()
        assert heard.type == "user_message"
        assert heard.user_message.content == "move to 0.5 0.5 0.5"

        assert agent.say(session_id, "Moving to (0.5, 0.5, 0.5).").accepted
        ack = agent.propose(
            session_id, "call-1", "move_to", velocity=0.2, target={"x": 0.5, "y": 0.5, "z": 0.5}
        )
        assert ack.accepted
        assert ack.sequence == 2
        events = operator.until("approval_requested")
        assert kinds(events) == ["text_delta", "action_requested", "approval_requested"]
        assert events[0].origin == pb.SessionEvent.ORIGIN_AGENT
        requested = events[1].action_requested
        assert requested.call_id == "call-1"
        assert requested.command.state == commands_pb2.Command.STATE_AWAITING_APPROVAL
        command_id = requested.command.id
        approval = events[2].approval_requested
        assert approval.approval_id == command_id
        assert approval.type == "move_to"

        # Nothing runs before the operator approves.
        robot.nothing_for(0.3)
        operator.decide(command_id, True, "looks safe")
        resolved = operator.until("approval_resolved")[-1].approval_resolved
        assert resolved.approved
        assert resolved.call_id == "call-1"
        assert agent.heard().type == "approval_resolved"
        command = agent.delivered().command
        assert command.id == command_id
        assert command.session_id == session_id
        assert command.session_call_id == "call-1"

        robot.send(command_report=link.CommandReport(command_id=command_id, state=RUNNING))
        robot.receive("report_result")
        result = struct_pb2.Struct()
        result.update({"position": {"x": 0.5, "y": 0.5, "z": 0.5}})
        robot.send(
            command_report=link.CommandReport(
                command_id=command_id, state=COMPLETED, result=result, reason="arrived"
            )
        )
        # The report's answer and the agent's outcome, in either order.
        answers = [robot.receive("report_result", "delivery") for _ in range(2)]
        assert sorted(a.WhichOneof("message") for a in answers) == ["delivery", "report_result"]
        (outcome,) = [a.delivery for a in answers if a.WhichOneof("message") == "delivery"]
        robot.ack(outcome.sequence)
        assert outcome.session_event.action_finished.state == COMPLETED
        events = operator.until("action_finished")
        assert kinds(events) == ["action_started", "action_finished"]
        finished = events[-1].action_finished
        assert finished.state == COMPLETED
        assert finished.command_id == command_id
        assert finished.result["position"]["x"] == 0.5

        assert agent.say(session_id, "Done.").accepted
        assert agent.finish(session_id, tokens=(12, 30)).accepted
        events = operator.until("turn_finished")
        assert kinds(events) == ["text_delta", "turn_finished"]
        assert events[-1].turn_finished.output_tokens == 30

        operator.send(cancel_session=pb.CancelSession(reason="all done"))
        completed = operator.until("session_completed")[-1].session_completed
        assert completed.reason == "OPERATOR_ENDED"
        assert completed.input_tokens == 12
        assert completed.output_tokens == 30
        assert operator.ended() == grpc.StatusCode.OK
        assert agent.heard().type == "session_completed"

    session = cell.rest("GET", f"/api/v1/sessions/{session_id}")
    assert session["state"] == "STATE_ENDED"
    assert session["end_reason"] == "OPERATOR_ENDED"
    assert session["turn_count"] == 1
    assert session["output_tokens"] == "30"
    turns = cell.rest("GET", f"/api/v1/sessions/{session_id}/turns")["turns"]
    assert [(t["index"], t["state"], t["message_id"]) for t in turns] == [
        (1, "STATE_FINISHED", "m-1")
    ]
    stored = cell.rest("GET", f"/api/v1/commands/{command_id}")
    assert stored["session_id"] == session_id
    assert stored["state"] == "STATE_COMPLETED"
    # The trail: the session's start and end, and its action's entries naming the session.
    eventually(lambda: len(audit_entries(cell.roz, cell.key, subject_id=session_id)) == 2)
    trail = audit_entries(cell.roz, cell.key, subject_id=session_id)
    assert [e["kind"] for e in trail] == ["session.started", "session.ended"]
    assert trail[1]["detail"]["reason"] == "OPERATOR_ENDED"
    eventually(lambda: len(audit_entries(cell.roz, cell.key, subject_id=command_id)) >= 6)
    action = audit_entries(cell.roz, cell.key, subject_id=command_id)
    moves = {e["kind"]: e["detail"].get("session_id") for e in action}
    for kind in ("command.created", "command.approved", "command.running", "command.ended"):
        assert moves[kind] == session_id


def test_the_same_session_over_rest_with_server_sent_events(cell: Cell) -> None:
    with cell.robot() as robot:
        agent = Agent(robot)
        created = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})
        session_id = created["id"]
        assert created["state"] == "STATE_ACTIVE"
        assert created["started_by"]
        assert agent.heard().type == "session_started"
        events = sse(cell, f"/api/v1/sessions/{session_id}/events")
        first_id, first = next(events)
        assert (first_id, first["type"]) == ("1", "session_started")

        said = cell.rest(
            "POST", f"/api/v1/sessions/{session_id}/messages", json={"content": "move a bit"}
        )
        assert said["type"] == "user_message"
        assert said["sequence"] == "2"
        message_id = said["correlation_id"]
        assert message_id  # generated when the client names none
        assert agent.heard().user_message.content == "move a bit"
        agent.say(session_id, "Moving.")
        agent.propose(
            session_id, "c-1", "move_to", velocity=0.2, target={"x": 0.1, "y": 0.1, "z": 0.1}
        )
        seen = [next(events) for _ in range(5)]
        assert [event["type"] for _, event in seen] == [
            "user_message",
            "turn_started",
            "text_delta",
            "action_requested",
            "approval_requested",
        ]
        assert [event_id for event_id, _ in seen] == ["2", "3", "4", "5", "6"]
        approval_id = seen[-1][1]["approval_requested"]["approval_id"]
        events.close()

        decided = cell.rest(
            "POST",
            f"/api/v1/sessions/{session_id}/decisions",
            json={"approval_id": approval_id, "approved": False, "reason": "not now"},
        )
        assert decided["approval_resolved"] == {
            "approval_id": approval_id,
            "call_id": "c-1",
            "approved": False,
            "reason": "not now",
            "actor": decided["approval_resolved"]["actor"],
        }
        # Resumed after what it saw: the rest, nothing twice.
        resumed = sse(cell, f"/api/v1/sessions/{session_id}/events", last_event_id="6")
        rest_of = [next(resumed) for _ in range(2)]
        resumed.close()
        assert [(i, e["type"]) for i, e in rest_of] == [
            ("7", "approval_resolved"),
            ("8", "action_finished"),
        ]
        assert rest_of[1][1]["action_finished"]["state"] == "STATE_REJECTED"
        # The agent hears the denial and the action's end; nothing runs.
        assert agent.heard().approval_resolved.approved is False
        assert agent.heard().action_finished.state == commands_pb2.Command.STATE_REJECTED
        agent.finish(session_id)

        ended = cell.rest("POST", f"/api/v1/sessions/{session_id}:end", json={"reason": "bye"})
        assert ended["state"] == "STATE_ENDED"
        assert ended["end_reason"] == "OPERATOR_ENDED"
        assert ended["end_message"] == "bye"
        # An ended session's stream ends after its last event.
        tail = list(sse(cell, f"/api/v1/sessions/{session_id}/events", last_event_id="8"))
        assert [e["type"] for _, e in tail] == ["turn_finished", "session_completed"]
        again = cell.rest("POST", f"/api/v1/sessions/{session_id}:end", json={})
        assert again["end_message"] == "bye"  # ending an ended session changes nothing


def test_the_session_events_over_grpc_web(cell: Cell) -> None:
    with cell.robot() as robot:
        agent = Agent(robot)
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        agent.heard()
        events = grpc_web_stream(
            cell,
            "/roz.v1.SessionService/WatchSession",
            pb.WatchSessionRequest(session_id=session_id),
            pb.SessionEvent.FromString,
        )
        assert next(events).type == "session_started"
        cell.rest("POST", f"/api/v1/sessions/{session_id}/messages", json={"content": "hi"})
        agent.heard()
        agent.say(session_id, "hello")
        seen = [next(events) for _ in range(3)]
        assert [e.type for e in seen] == ["user_message", "turn_started", "text_delta"]
        assert seen[-1].text_delta.text == "hello"
        events.close()


# -- refusals ------------------------------------------------------------------------------------


def rejection(event: pb.SessionEvent) -> tuple[str, bool]:
    assert event.type == "session_rejected", event
    assert event.sequence == 0
    assert not event.id
    return event.session_rejected.code, event.session_rejected.retryable


def test_the_stream_refuses_what_comes_out_of_order_and_stays_open(cell: Cell) -> None:
    other = Cell(cell.roz, "someone-else")
    with cell.robot() as robot, other.robot(), cell.operator() as operator:
        operator.say(
            "hello?",
        )
        assert rejection(operator.event()) == ("NO_SESSION", False)
        operator.send(request_id="r-1", ping=pb.Ping())
        pong = operator.event()
        assert pong.type == "pong"
        assert pong.correlation_id == "r-1"
        # Another tenant's host is no host at all.
        operator.start(other.host_id)
        assert rejection(operator.event()) == ("NOT_FOUND", False)
        operator.start("not-a-uuid")
        code, _ = rejection(operator.event())
        assert code == "INVALID_ARGUMENT"
        operator.send()
        assert rejection(operator.event())[0] == "INVALID_ARGUMENT"

        operator.start(cell.host_id)
        session_id = operator.event().session_id
        operator.start(cell.host_id)
        assert rejection(operator.event()) == ("ALREADY_STARTED", False)
        operator.say("  ")
        refused = operator.event()
        assert rejection(refused)[0] == "INVALID_ARGUMENT"
        assert "content" in refused.session_rejected.message
        operator.say("first")
        assert kinds(operator.until("turn_started")) == ["user_message", "turn_started"]
        operator.say("second, too soon")
        assert rejection(operator.event()) == ("TURN_IN_PROGRESS", True)
        operator.decide(str(uuid.uuid4()), True)
        assert rejection(operator.event()) == ("UNKNOWN_APPROVAL", False)
        operator.send(tool_result=pb.ToolResult(call_id="never-asked", success=True))
        assert rejection(operator.event()) == ("UNKNOWN_CALL", False)
        # Nothing refused reached the log: it holds the start, the message and its turn.
        log = cell.rest("GET", f"/api/v1/sessions/{session_id}")
        assert log["last_sequence"] == "3"
        assert log["turn_count"] == 1
        del robot


def test_a_session_needs_its_robot_online_and_not_stopped(cell: Cell) -> None:
    offline = cell.roz.rest(cell.key).post("/api/v1/sessions", json={"host_id": cell.host_id})
    assert offline.status_code == 400
    assert offline.json()["details"][0]["reason"] == "ROBOT_OFFLINE"
    with cell.robot():
        cell.rest("POST", f"/api/v1/hosts/{cell.host_id}/estop", json={"reason": "test"})
        stopped = cell.roz.rest(cell.key).post("/api/v1/sessions", json={"host_id": cell.host_id})
        assert stopped.status_code == 400
        assert stopped.json()["details"][0]["reason"] == "ESTOP_ENGAGED"
        with cell.operator() as operator:
            operator.start(cell.host_id)
            assert rejection(operator.event()) == ("ESTOP_ENGAGED", True)
    assert cell.rest("GET", "/api/v1/sessions").get("sessions", []) == []


def test_an_action_the_policy_forbids_is_refused_and_the_agent_hears_why(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        operator.say("go fast")
        agent.heard()
        ack = agent.propose(
            session_id, "too-fast", "move_to", velocity=5.0, target={"x": 2, "y": 0.5, "z": 0.5}
        )
        assert ack.accepted  # the update is recorded; the action is refused
        refused = operator.until("action_refused")[-1]
        assert refused.correlation_id == "too-fast"
        assert refused.action_refused.code == "SAFETY_VIOLATION"
        reasons = {v["reason"] for v in refused.action_refused.violations}
        assert reasons == {"SAFETY_LIMIT_EXCEEDED", "OUTSIDE_WORKSPACE"}, reasons
        heard = agent.heard()
        assert heard.type == "action_refused"
        assert heard.action_refused.message
        # No command was made.
        assert cell.rest("GET", "/api/v1/commands").get("commands", []) == []
        robot.nothing_for(0.3)


def test_deciding_needs_the_right_to_approve_commands(cell: Cell) -> None:
    chat_only, _ = new_key(cell.roz, cell.key, "sessions:write", "commands:read")
    with cell.robot() as robot, cell.operator(chat_only) as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        operator.say("move")
        agent.heard()
        agent.propose(
            session_id, "c", "move_to", velocity=0.1, target={"x": 0.2, "y": 0.2, "z": 0.2}
        )
        approval_id = operator.until("approval_requested")[-1].approval_requested.approval_id
        operator.decide(approval_id, True)
        assert rejection(operator.event()) == ("SCOPE_MISSING", False)
        denied = cell.roz.rest(chat_only).post(
            f"/api/v1/sessions/{session_id}/decisions",
            json={"approval_id": approval_id, "approved": True},
        )
        assert denied.status_code == 403
        command = cell.rest("GET", f"/api/v1/commands/{approval_id}")
        assert command["state"] == "STATE_AWAITING_APPROVAL"


def test_sessions_are_the_tenants_own(cell: Cell) -> None:
    other = Cell(cell.roz, "other-tenant")
    with cell.robot() as robot, other.robot() as other_robot:
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        Agent(robot).heard()
        client = cell.roz.rest(other.key)
        for method, path, body in (
            ("GET", f"/api/v1/sessions/{session_id}", None),
            ("GET", f"/api/v1/sessions/{session_id}/turns", None),
            ("POST", f"/api/v1/sessions/{session_id}/messages", {"content": "hi"}),
            ("POST", f"/api/v1/sessions/{session_id}:end", {}),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 404, (path, response.text)
        assert client.get(f"/api/v1/sessions/{session_id}/events").status_code == 404
        assert client.get("/api/v1/sessions").json().get("sessions", []) == []
        # Another host's robot cannot speak in the session.
        ack = Agent(other_robot).say(session_id, "let me in")
        assert not ack.accepted
        assert ack.reason == "no such session on this host"
        assert cell.rest("GET", f"/api/v1/sessions/{session_id}")["last_sequence"] == "1"
        # A host with sessions keeps its history: it cannot be deleted under them.
        gone = cell.roz.rest(cell.key).delete(f"/api/v1/hosts/{cell.host_id}")
        assert gone.status_code == 400
        assert gone.json()["details"][0]["reason"] == "HOST_IN_USE"


# -- reconnects and ends -------------------------------------------------------------------------


def test_a_session_survives_the_robots_reconnect_with_nothing_lost_or_twice(cell: Cell) -> None:
    robot = cell.robot()
    agent = Agent(robot)
    with cell.operator() as operator:
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()  # the start, acknowledged (delivery 1)
        robot.cut()
        # While the robot is away the operator speaks; the message waits in the log.
        operator.say("are you there?")
        operator.until("turn_started")
        robot = cell.robot(last_received=1)
        agent.robot = robot
        assert agent.heard().user_message.content == "are you there?"
        # The agent's first words go out; the link breaks before their answer is read.
        robot.send(
            session_update=link.SessionUpdate(
                session_id=session_id, sequence=1, text_delta=pb.TextDelta(text="yes")
            )
        )
        assert operator.event().text_delta.text == "yes"
        robot.cut()
        robot = cell.robot(last_received=2)
        agent.robot = robot
        # Resent after the reconnect: answered again, recorded once; then the next one.
        again = agent.update(session_id, 1, text_delta=pb.TextDelta(text="yes"))
        assert again.accepted
        assert again.reason == "recorded before"
        assert agent.update(session_id, 2, text_delta=pb.TextDelta(text=" I am")).accepted
        assert operator.event().text_delta.text == " I am"
        early = agent.update(session_id, 5, text_delta=pb.TextDelta(text="skipped ahead"))
        assert not early.accepted
        assert early.reason == "out of order: expected sequence 3"
        operator.nothing_for(0.3)
        log = cell.rest("GET", f"/api/v1/sessions/{session_id}")
        assert log["last_sequence"] == "5"  # started, message, turn, two deltas
        robot.cut()


def test_an_operator_stream_resumes_a_session_and_leaving_ends_it(cell: Cell) -> None:
    with cell.robot() as robot:
        agent = Agent(robot)
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        agent.heard()
        cell.rest("POST", f"/api/v1/sessions/{session_id}/messages", json={"content": "hi"})
        agent.heard()
        agent.say(session_id, "hello")
        with cell.operator() as operator:
            operator.start(cell.host_id, session_id=session_id, after_sequence=2)
            assert kinds(operator.until("text_delta")) == ["turn_started", "text_delta"]
            agent.finish(session_id)
            assert operator.event().type == "turn_finished"
            operator.cut()
        # The stream went away: so does the session, and the agent is told.
        eventually(
            lambda: cell.rest("GET", f"/api/v1/sessions/{session_id}")["state"] == "STATE_ENDED"
        )
        session = cell.rest("GET", f"/api/v1/sessions/{session_id}")
        assert session["end_reason"] == "OPERATOR_LEFT"
        ended = agent.heard()
        assert ended.session_completed.reason == "OPERATOR_LEFT"


def test_a_half_closed_stream_ends_its_session_and_then_the_stream(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        operator.start(cell.host_id)
        operator.event()
        Agent(robot).heard()
        operator.close()
        completed = operator.until("session_completed")[-1]
        assert completed.session_completed.reason == "OPERATOR_LEFT"
        assert operator.ended() == grpc.StatusCode.OK


def test_cancelling_a_turn_cancels_its_waiting_actions_and_tells_the_agent(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        operator.say("move")
        agent.heard()
        agent.propose(
            session_id, "m", "move_to", velocity=0.1, target={"x": 0.2, "y": 0.2, "z": 0.2}
        )
        approval = operator.until("approval_requested")[-1].approval_requested
        operator.send(cancel_turn=pb.CancelTurn())
        events = operator.until("turn_cancel_requested")
        assert kinds(events) == ["action_finished", "turn_cancel_requested"]
        assert events[0].action_finished.state == commands_pb2.Command.STATE_CANCELLED
        assert agent.heard().action_finished.state == commands_pb2.Command.STATE_CANCELLED
        assert agent.heard().type == "turn_cancel_requested"
        agent.update(session_id, turn_finished=pb.TurnFinished(stop_reason="cancelled"))
        operator.until("turn_finished")
        # The action can no longer be approved; the turn is recorded as cancelled.
        operator.decide(approval.approval_id, True)
        assert rejection(operator.event()) == ("UNKNOWN_APPROVAL", False)
        turns = cell.rest("GET", f"/api/v1/sessions/{session_id}/turns")["turns"]
        assert turns[0]["state"] == "STATE_CANCELLED"
        operator.send(cancel_turn=pb.CancelTurn())
        assert rejection(operator.event()) == ("NO_ACTIVE_TURN", False)


def test_the_agent_may_end_the_session(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        assert agent.update(session_id, session_ended=link.AgentEnd(message="battery low")).accepted
        completed = operator.until("session_completed")[-1].session_completed
        assert (completed.reason, completed.message) == ("AGENT_ENDED", "battery low")
        assert operator.ended() == grpc.StatusCode.OK
        late = agent.say(session_id, "one more thing")
        assert not late.accepted
        assert late.reason == "the session has ended"


def test_an_estop_refuses_the_agents_actions_and_holds_what_the_agent_is_sent(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        operator.say("move")
        agent.heard()
        cell.rest("POST", f"/api/v1/hosts/{cell.host_id}/estop", json={"reason": "person inside"})
        robot.receive("estop")
        agent.propose(
            session_id, "m", "move_to", velocity=0.1, target={"x": 0.2, "y": 0.2, "z": 0.2}
        )
        refused = operator.until("action_refused")[-1].action_refused
        assert refused.code == "ESTOP_ENGAGED"
        robot.nothing_for(0.3)  # nothing goes to a stopped robot, its session's events neither
        cell.rest("POST", f"/api/v1/hosts/{cell.host_id}/estop/clear", json={"reason": "clear"})
        robot.receive("estop")
        assert agent.heard().action_refused.code == "ESTOP_ENGAGED"


@pytest.fixture(scope="module")
def clocked() -> Iterator[tuple[Roz, TestClock]]:
    """A server of this module's own on a clock the tests move, whose sweeps the tests run
    (the interval is an hour), with a two-minute grace for robots."""
    clock = TestClock()
    with roz_servers() as start:
        server = start(
            clock=clock, sweep_interval_seconds=3600.0, session_robot_grace_seconds=120.0
        )
        yield server, clock


def sweep(server: Roz) -> int:
    ended: int = server.listener.call(server.app.sessions.end_abandoned())
    return ended


def offline(cell: Cell) -> bool:
    return bool(cell.rest("GET", f"/api/v1/hosts/{cell.host_id}")["status"] == "STATUS_OFFLINE")


def test_a_session_ends_when_its_robot_stays_away_past_the_grace(
    clocked: tuple[Roz, TestClock],
) -> None:
    server, clock = clocked
    cell = Cell(server)
    robot = cell.robot()
    with cell.operator() as operator:
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent = Agent(robot)
        agent.heard()
        operator.say("move")
        agent.heard()
        agent.propose(
            session_id, "m", "move_to", velocity=0.1, target={"x": 0.2, "y": 0.2, "z": 0.2}
        )
        operator.until("approval_requested")
        robot.cut()
        eventually(lambda: offline(cell))
        clock.advance(100)
        assert sweep(server) == 0  # within the grace: a reconnect finds the session
        robot = cell.robot(last_received=2)
        clock.advance(100)
        assert sweep(server) == 0  # it came back in time
        robot.cut()
        eventually(lambda: offline(cell))
        clock.advance(121)
        assert sweep(server) == 1
        events = operator.until("session_completed")
        # Its action waiting for approval is cancelled with it.
        assert kinds(events) == ["action_finished", "session_completed"]
        assert events[0].action_finished.state == commands_pb2.Command.STATE_CANCELLED
        assert events[-1].session_completed.reason == "ROBOT_GONE"
        assert operator.ended() == grpc.StatusCode.OK
    session = cell.rest("GET", f"/api/v1/sessions/{session_id}")
    assert session["end_reason"] == "ROBOT_GONE"
    assert sweep(server) == 0  # ended once


def test_a_session_nothing_happens_in_ends_as_idle() -> None:
    with roz_servers() as start:
        server = start(sweep_interval_seconds=3600.0, session_idle_seconds=2.0)
        cell = Cell(server)
        with cell.robot() as robot:
            agent = Agent(robot)
            session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
            agent.heard()
            time.sleep(1.2)
            cell.rest("POST", f"/api/v1/sessions/{session_id}/messages", json={"content": "hi"})
            agent.heard()
            time.sleep(1.2)
            assert sweep(server) == 0  # the message was news 1.2 s ago
            time.sleep(1.0)
            assert sweep(server) == 1
            session = cell.rest("GET", f"/api/v1/sessions/{session_id}")
            assert session["end_reason"] == "IDLE"
            turns = cell.rest("GET", f"/api/v1/sessions/{session_id}/turns")["turns"]
            assert turns[0]["state"] == "STATE_INTERRUPTED"
            assert agent.heard().session_completed.reason == "IDLE"


# -- bad input, concurrency ----------------------------------------------------------------------


def test_bad_input_is_refused_by_field_and_changes_nothing(cell: Cell) -> None:
    client = cell.roz.rest(cell.key)

    def refused(method: str, path: str, status: int, **kwargs: Any) -> dict[str, Any]:
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (path, response.status_code, response.text)
        body: dict[str, Any] = response.json()
        assert "psycopg" not in response.text
        assert "SQL" not in response.text
        return body

    def fields(body: dict[str, Any]) -> list[str]:
        return [
            violation["field"]
            for detail in body["details"]
            for violation in detail.get("field_violations", [])
        ]

    assert fields(refused("POST", "/api/v1/sessions", 400, json={})) == ["host_id"]
    assert fields(refused("POST", "/api/v1/sessions", 400, json={"host_id": "nope"})) == ["host_id"]
    refused("POST", "/api/v1/sessions", 404, json={"host_id": str(uuid.uuid4())})
    refused("GET", "/api/v1/sessions/not-an-id", 400)
    refused("GET", f"/api/v1/sessions/{uuid.uuid4()}", 404)
    refused("GET", "/api/v1/sessions", 400, params={"state": "STATE_SLEEPING"})
    with cell.robot() as robot:
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        Agent(robot).heard()
        base = f"/api/v1/sessions/{session_id}"
        assert fields(refused("POST", base + "/messages", 400, json={"content": ""})) == ["content"]
        big = "x" * (33 * 1024)
        assert fields(refused("POST", base + "/messages", 400, json={"content": big})) == [
            "content"
        ]
        body = {"content": "hi", "message_id": "has spaces"}
        assert fields(refused("POST", base + "/messages", 400, json=body)) == ["message_id"]
        refused("POST", base + "/messages", 400, json={"content": 5})
        refused("POST", base + "/messages", 400, json={"content": "hi", "surprise": 1})
        decision = {"approval_id": "not-a-command", "approved": True}
        assert (
            refused("POST", base + "/decisions", 400, json=decision)["details"][0]["reason"]
            == "UNKNOWN_APPROVAL"
        )
        assert fields(refused("POST", base + "/decisions", 400, json={"approved": True})) == [
            "approval_id"
        ]
        refused("GET", base + "/turns", 400, params={"page_token": "abc"})
        refused("GET", base + "/turns", 400, params={"page_size": "-1"})
        refused("GET", base + "/events", 400, headers={"last-event-id": "-3"})
        refused("POST", base + ":end", 400, json={"reason": "r" * 2000})
        # Nothing of that was recorded.
        session = cell.rest("GET", base)
        assert session["last_sequence"] == "1"
        assert session["state"] == "STATE_ACTIVE"


def test_of_many_messages_at_once_one_starts_the_turn(cell: Cell) -> None:
    with cell.robot() as robot:
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        Agent(robot).heard()

        def send(index: int) -> int:
            with cell.roz.rest(cell.key) as client:
                return client.post(
                    f"/api/v1/sessions/{session_id}/messages", json={"content": f"m{index}"}
                ).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = sorted(pool.map(send, range(32)))
        assert statuses == [201] + [400] * 31
        session = cell.rest("GET", f"/api/v1/sessions/{session_id}")
        assert session["turn_count"] == 1
        assert session["last_sequence"] == "3"


# -- the simulator's scripted agent --------------------------------------------------------------


@contextmanager
def simulator(cell: Cell, state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """`roz-robot simulate` for the cell's host, as a user runs it, until the block ends."""
    env = {**os.environ, "ROZ_API_KEY": cell.robot_secret}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roz_robot",
            "simulate",
            "--server",
            cell.roz.listener.target,
            "--state-dir",
            str(state_dir),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(
            lambda: cell.rest("GET", f"/api/v1/hosts/{cell.host_id}")["status"] == "STATUS_ONLINE"
        )
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_session_with_the_simulators_agent_over_native_grpc(cell: Cell, tmp_path: Path) -> None:
    with simulator(cell, tmp_path), cell.operator() as operator:
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        operator.say("move to 0.1 0.1 0.1", message_id="go")
        events = operator.until("approval_requested", timeout=20)
        said = "".join(e.text_delta.text for e in events if e.type == "text_delta")
        assert said == "Moving to (0.1, 0.1, 0.1)."
        proposed = events[-2].action_requested.command
        assert proposed.type == "move_to"
        assert proposed.params["velocity"] == 0.2
        assert dict(proposed.params["target"]) == {"x": 0.1, "y": 0.1, "z": 0.1}
        operator.decide(events[-1].approval_requested.approval_id, True)
        events = operator.until("turn_finished", timeout=20)
        assert kinds(events)[:3] == ["approval_resolved", "action_started", "action_finished"]
        finished = events[2].action_finished
        assert finished.state == COMPLETED
        assert dict(finished.result["position"]) == pytest.approx({"x": 0.1, "y": 0.1, "z": 0.1})
        report = "".join(e.text_delta.text for e in events if e.type == "text_delta")
        assert report.strip().startswith("Finished COMPLETED")
        turn = events[-1]
        assert turn.correlation_id == "go"
        assert turn.turn_finished.input_tokens == 5
        assert turn.turn_finished.output_tokens > 0
        operator.send(cancel_session=pb.CancelSession())
        assert operator.until("session_completed")[-1].session_completed.turn_count == 1
    session = cell.rest("GET", f"/api/v1/sessions/{session_id}")
    assert session["input_tokens"] == "5"


def test_a_session_with_the_simulators_agent_over_rest_and_sse(cell: Cell, tmp_path: Path) -> None:
    with simulator(cell, tmp_path):
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        events = sse(cell, f"/api/v1/sessions/{session_id}/events")
        cell.rest(
            "POST", f"/api/v1/sessions/{session_id}/messages", json={"content": "move to 2 0 0"}
        )
        seen: list[dict[str, Any]] = []
        for _, event in events:
            seen.append(event)
            if event["type"] == "turn_finished":
                break
        events.close()
        types = [event["type"] for event in seen]
        assert "action_refused" in types
        assert "action_requested" not in types
        refused = next(e for e in seen if e["type"] == "action_refused")["action_refused"]
        assert refused["code"] == "SAFETY_VIOLATION"
        report = "".join(e["text_delta"]["text"] for e in seen if e["type"] == "text_delta")
        assert "Refused (SAFETY_VIOLATION)" in report  # the agent heard why and said so
        assert cell.rest("GET", "/api/v1/commands").get("commands", []) == []


def test_a_restarted_robot_carries_on_numbering_where_the_server_is(
    cell: Cell, tmp_path: Path
) -> None:
    with cell.operator() as operator:
        with simulator(cell, tmp_path) as first:
            operator.start(cell.host_id)
            session_id = operator.event().session_id
            operator.say("move to 2 0 0")  # refused: the agent says so and ends its turn
            operator.until("turn_finished", timeout=20)
            first.kill()  # no goodbye: the robot forgets its numbering
            first.wait()
        recorded = int(cell.rest("GET", f"/api/v1/sessions/{session_id}")["last_sequence"])
        with simulator(cell, tmp_path):
            operator.say("move to 0.1 0 0")
            events = operator.until("approval_requested", timeout=20)
            said = "".join(e.text_delta.text for e in events if e.type == "text_delta")
            assert said == "Moving to (0.1, 0, 0)."
            assert events[0].sequence > recorded


def test_the_welcome_says_where_each_active_session_stands(cell: Cell) -> None:
    with cell.robot() as robot:
        agent = Agent(robot)
        talking = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        agent.heard()
        over = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        agent.heard()
        cell.rest("POST", f"/api/v1/sessions/{talking}/messages", json={"content": "hi"})
        agent.heard()
        agent.say(talking, "a")
        agent.say(talking, "b")
        cell.rest("POST", f"/api/v1/sessions/{over}:end", json={})
        last = agent.delivered().sequence
    robot = Robot(cell.roz.listener.target, cell.robot_secret, last_received=last)
    with robot:
        positions = [(p.session_id, p.recorded_through) for p in robot.welcome().sessions]
    assert positions == [(talking, 2)]


def drain(robot: Robot, quiet: float = 0.3) -> None:
    """Reads whatever the robot is sent until it goes quiet, acknowledging deliveries."""
    while True:
        try:
            response = robot.receive(timeout=quiet)
        except queue.Empty:
            return
        if response.WhichOneof("message") == "delivery":
            robot.ack(response.delivery.sequence)


def post(cell: Cell, path: str, body: dict[str, Any], statuses: list[tuple[str, int]]) -> None:
    """A REST POST whose status is kept in `statuses` (for a thread)."""
    with cell.roz.rest(cell.key) as client:
        statuses.append((path, client.post(path, json=body).status_code))


def test_an_engage_and_an_agents_proposal_never_wait_for_each_other(cell: Cell) -> None:
    """An engage locks the host, the commands in hand and, through their moves' trigger, their
    sessions; a proposal locks its session and then (for its command's checks) the host's
    environment and the host. The test holds the environment so that the proposal waits there
    while the engage ends a running action of the same session: without the proposal taking the
    host first, that is a lock cycle, which PostgreSQL breaks by aborting one of the two."""
    with cell.robot() as robot:
        agent = Agent(robot)
        session_id = cell.rest("POST", "/api/v1/sessions", json={"host_id": cell.host_id})["id"]
        cell.rest("POST", f"/api/v1/sessions/{session_id}/messages", json={"content": "go"})
        drain(robot)
        agent.early.clear()
        proposal = pb.ProposedAction(call_id="first", type="wave")
        assert agent.update(session_id, action_proposed=proposal).accepted
        deliveries, agent.early = list(agent.early), []
        while not any(d.HasField("command") for d in deliveries):
            deliveries.append(robot.delivery())
        for delivery in deliveries:
            robot.ack(delivery.sequence)
        command = next(d.command for d in deliveries if d.HasField("command"))
        robot.send(command_report=link.CommandReport(command_id=command.id, state=RUNNING))
        while robot.receive("report_result", "delivery").WhichOneof("message") != "report_result":
            pass
        statuses: list[tuple[str, int]] = []
        with psycopg.connect(cell.roz.app.database.owner_dsn) as blocker:
            blocker.execute(
                "SELECT 1 FROM roz.environments WHERE id = %s FOR NO KEY UPDATE",
                (cell.environment_id,),
            )
            second = pb.ProposedAction(call_id="second", type="wave")
            robot.send(
                session_update=link.SessionUpdate(
                    session_id=session_id, sequence=2, action_proposed=second
                )
            )
            time.sleep(0.5)  # the proposal is waiting for the environment
            engage = threading.Thread(
                target=post,
                args=(
                    cell,
                    f"/api/v1/hosts/{cell.host_id}/estop",
                    {"reason": "stop"},
                    statuses,
                ),
            )
            engage.start()
            time.sleep(0.5)  # the engage is under way
            blocker.rollback()
        engage.join(timeout=30)
        while (answer := robot.receive(timeout=30)).WhichOneof("message") != "session_ack":
            pass
        assert statuses == [(f"/api/v1/hosts/{cell.host_id}/estop", 200)]
        assert answer.session_ack.accepted
        # The second action was made (before the engage, which then found it unsent and left
        # it held) or refused (after it): either way, once.
        commands = cell.rest("GET", "/api/v1/commands", params={"host_id": cell.host_id})
        assert sorted(c["session_call_id"] for c in commands["commands"]) in (
            ["first", "second"],
            ["first"],
        )


def test_each_message_on_a_sessions_stream_takes_from_the_tenants_rate_limit() -> None:
    with roz_servers() as start:
        cell = Cell(start(rate_limit_rps=0.5, rate_limit_burst=30))
        with cell.operator() as operator:
            for index in range(40):
                operator.send(request_id=str(index), ping=pb.Ping())
            answers = [operator.event() for _ in range(40)]
        pongs = [a.correlation_id for a in answers if a.type == "pong"]
        refused = [a for a in answers if a.type == "session_rejected"]
        # The setup's calls and the stream's open took their tokens first.
        assert 10 <= len(pongs) < 30
        assert pongs == [str(i) for i in range(len(pongs))]
        assert len(refused) == 40 - len(pongs)
        assert {rejection(a) for a in refused} == {("RESOURCE_EXHAUSTED", True)}


def test_an_oversized_agent_update_is_refused_and_the_link_goes_on(cell: Cell) -> None:
    with cell.robot() as robot, cell.operator() as operator:
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        operator.say("go")
        agent.heard()
        big = struct_pb2.Struct()
        big.update({"blob": "x" * (200 * 1024)})
        for update in (
            {
                "tool_call_requested": pb.ToolCallRequested(
                    call_id="t", tool_name="n", parameters=big
                )
            },
            {"action_proposed": pb.ProposedAction(call_id="a", type="wave", params=big)},
        ):
            refused = agent.update(session_id, **update)
            assert not refused.accepted
            assert "at most 131072 bytes" in refused.reason
        assert agent.say(session_id, "still here").accepted
        events = operator.until("text_delta")
        assert kinds(events) == ["user_message", "turn_started", "text_delta"]
        assert cell.rest("GET", "/api/v1/commands").get("commands", []) == []


def test_an_operator_that_stops_reading_holds_only_its_own_place(cell: Cell) -> None:
    with (
        cell.robot() as robot,
        Operator(cell.roz.listener.target, cell.key, small_window=True) as operator,
    ):
        agent = Agent(robot)
        operator.start(cell.host_id)
        session_id = operator.event().session_id
        agent.heard()
        operator.say("talk a lot")
        agent.heard()
        operator.pause()
        # Far more than the stream's window and the server's outbox: the agent is never held up.
        chunk = "y" * 2048
        for _ in range(600):
            assert agent.say(session_id, chunk).accepted
        watched = cell.rest("GET", f"/api/v1/sessions/{session_id}")
        assert watched["last_sequence"] == str(3 + 600)
        # Another operator is served meanwhile.
        other = sse(cell, f"/api/v1/sessions/{session_id}/events", last_event_id="600")
        assert [next(other)[0] for _ in range(3)] == ["601", "602", "603"]
        other.close()
        operator.resume()
        deltas = [e for e in operator.until("turn_started") if e.type == "text_delta"]
        deltas += [operator.event(timeout=20) for _ in range(600)]
        assert [e.sequence for e in deltas] == list(range(4, 604))
