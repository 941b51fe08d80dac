"""RobotLinkService: a robot's stream, proto ⇄ the robot link service, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from roz.v1 import robot_link_pb2 as pb
from roz.v1 import robot_link_pb2_grpc

from server.api.commands import command_to_proto
from server.api.commands import state_from_proto as command_state
from server.api.convert import datetime_of, dict_of, duration, parse_id, timedelta_of
from server.api.estop import SOURCE_FROM_PROTO, host_estop_to_proto
from server.api.principal import current_principal
from server.api.sessions import event_to_proto
from server.api.tasks import state_from_proto as task_state
from server.api.tasks import task_to_proto
from server.domain.commands import Command
from server.domain.errors import FieldViolation, InvalidArgument, PermissionDenied
from server.domain.robot_link import (
    Ack,
    EstopAck,
    EstopRaise,
    Heartbeat,
    Hello,
    ItemKind,
    Report,
    RobotMessage,
    Telemetry,
)
from server.domain.sessions import (
    AgentEnd,
    AgentEvent,
    AgentUpdate,
    Proposal,
    SessionEvent,
    TextDelta,
    ToolCall,
    TurnFinish,
)
from server.domain.tasks import Task
from server.services.robot_link import (
    Cancel,
    Drain,
    EstopNotice,
    Keepalive,
    ReportOutcome,
    RobotLinks,
    Sent,
    ServerMessage,
    SessionAnswer,
    Welcome,
)

_HELLO_FIRST = "a robot's first message is its hello"


class RobotLinkServicer(robot_link_pb2_grpc.RobotLinkServiceServicer):  # type: ignore[misc]
    def __init__(self, links: RobotLinks) -> None:
        self._links = links

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Any
    ) -> AsyncIterator[pb.ConnectResponse]:
        principal = current_principal()
        if principal.host_id is None:  # Authorize lets only robot keys in; kept as a guard
            raise PermissionDenied("only a robot key opens a robot link", reason="ROBOT_ONLY")
        requests = aiter(request_iterator)
        hello = await _hello(requests, self._links.terms.hello_timeout.total_seconds())
        link, welcome = await self._links.open(
            principal.tenant_id, principal.host_id, principal.key_id, hello
        )
        yield _encode(welcome)
        async for message in self._links.serve(link, _decoded(requests)):
            yield _encode(message)


async def _hello(requests: AsyncIterator[pb.ConnectRequest], timeout: float) -> Hello:  # noqa: ASYNC109
    try:
        async with asyncio.timeout(timeout):
            first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidArgument(_HELLO_FIRST) from None
    except TimeoutError:
        raise InvalidArgument(f"no hello within {timeout:g} s; {_HELLO_FIRST}") from None
    if first.WhichOneof("message") != "hello":
        raise InvalidArgument(_HELLO_FIRST, [FieldViolation("hello", "must come first")])
    named = first.hello.host_id
    if named:
        parse_id(named, "hello.host_id")
    return Hello(
        host_id=named,
        last_received_sequence=first.hello.last_received_sequence,
        client=first.hello.client[:200],
    )


async def _decoded(requests: AsyncIterator[pb.ConnectRequest]) -> AsyncIterator[RobotMessage]:
    async for request in requests:
        yield _decode(request)


def _decode(request: pb.ConnectRequest) -> RobotMessage:
    which = request.WhichOneof("message")
    if which == "ack":
        return Ack(request.ack.sequence)
    if which == "command_report":
        report = request.command_report
        return Report(
            kind=ItemKind.COMMAND,
            item_id=report.command_id,
            state=command_state(report.state, "command_report.state"),
            reason=report.reason,
            result=dict_of(report.result, "command_report.result")
            if report.HasField("result")
            else None,
            report_id=report.report_id,
        )
    if which == "task_report":
        task_report = request.task_report
        state = task_state(task_report.state, "task_report.state")
        if state is None:
            raise InvalidArgument(
                "a report names a state",
                [FieldViolation("task_report.state", "state is required")],
            )
        return Report(
            kind=ItemKind.TASK,
            item_id=task_report.task_id,
            state=state,
            reason=task_report.reason,
            result=dict_of(task_report.result, "task_report.result")
            if task_report.HasField("result")
            else None,
            report_id=task_report.report_id,
        )
    if which == "heartbeat":
        return Heartbeat()
    if which == "telemetry":
        sample = request.telemetry
        return Telemetry(
            state=dict_of(sample.state, "telemetry.state"),
            sample_time=datetime_of(sample.sample_time, "telemetry.sample_time")
            if sample.HasField("sample_time")
            else None,
        )
    if which == "estop_ack":
        return EstopAck(request.estop_ack.host_epoch, request.estop_ack.environment_epoch)
    if which == "estop_raise":
        source = SOURCE_FROM_PROTO.get(request.estop_raise.source)
        if source is None:
            raise InvalidArgument(
                "an e-stop the robot raises names its source",
                [
                    FieldViolation(
                        "estop_raise.source", "one of ROBOT_BUTTON, ROBOT_DEADMAN, ROBOT_GUARD"
                    )
                ],
            )
        return EstopRaise(source, request.estop_raise.reason)
    if which == "session_update":
        return _agent_update(request.session_update)
    if which == "hello":
        raise InvalidArgument("a robot says hello once, first")
    raise InvalidArgument("empty message", [FieldViolation("message", "one field must be set")])


def _agent_update(update: pb.SessionUpdate) -> AgentUpdate:
    """An agent's update. A session id that is not one names no session of this host: the
    update is answered as refused, never the end of the stream."""
    try:
        session_id = UUID(update.session_id)
    except ValueError:
        session_id = UUID(int=0)
    return AgentUpdate(session_id, update.sequence, _agent_event(update))


def _agent_event(update: pb.SessionUpdate) -> AgentEvent:
    which = update.WhichOneof("event")
    if which == "text_delta":
        return TextDelta(update.text_delta.text)
    if which == "tool_call_requested":
        call = update.tool_call_requested
        return ToolCall(
            call.call_id, call.tool_name, dict_of(call.parameters, "tool_call_requested.parameters")
        )
    if which == "action_proposed":
        action = update.action_proposed
        return Proposal(
            call_id=action.call_id,
            type=action.type,
            params=dict_of(action.params, "action_proposed.params"),
            timeout=timedelta_of(action.timeout, "action_proposed.timeout")
            if action.HasField("timeout")
            else None,
        )
    if which == "turn_finished":
        finished = update.turn_finished
        return TurnFinish(finished.stop_reason, finished.input_tokens, finished.output_tokens)
    if which == "session_ended":
        return AgentEnd(update.session_ended.message)
    raise InvalidArgument(
        "empty session update", [FieldViolation("session_update.event", "one field must be set")]
    )


def _encode(message: ServerMessage) -> pb.ConnectResponse:
    if isinstance(message, SessionAnswer):
        return pb.ConnectResponse(
            session_ack=pb.SessionAck(
                session_id=str(message.session_id),
                sequence=message.sequence,
                accepted=message.accepted,
                reason=message.reason,
            )
        )
    if isinstance(message, Sent):
        return pb.ConnectResponse(delivery=_delivery(message))
    if isinstance(message, ReportOutcome):
        return pb.ConnectResponse(report_result=_report_result(message))
    if isinstance(message, EstopNotice):
        return pb.ConnectResponse(
            estop=host_estop_to_proto(message.stop, with_acknowledgement=False)
        )
    if isinstance(message, Keepalive):
        return pb.ConnectResponse(keepalive=pb.Keepalive())
    if isinstance(message, Drain):
        return pb.ConnectResponse(
            drain=pb.Drain(
                reason=message.reason,
                reconnect_after=duration(message.reconnect_after),
            )
        )
    return pb.ConnectResponse(welcome=_welcome(message))


def _welcome(welcome: Welcome) -> pb.Welcome:
    return pb.Welcome(
        host_id=str(welcome.host_id),
        heartbeat_interval=duration(welcome.terms.heartbeat_interval),
        presence_window=duration(welcome.terms.presence_window),
        resume_after_sequence=welcome.resume_after,
        link_id=str(welcome.link_id),
        estop=host_estop_to_proto(welcome.stop, with_acknowledgement=False),
        sessions=[
            pb.SessionPosition(session_id=str(session_id), recorded_through=recorded)
            for session_id, recorded in welcome.sessions
        ],
    )


def _delivery(sent: Sent) -> pb.Delivery:
    item = sent.item
    if isinstance(item, Command):
        return pb.Delivery(sequence=sent.sequence, command=command_to_proto(item))
    if isinstance(item, Task):
        return pb.Delivery(sequence=sent.sequence, task=task_to_proto(item))
    if isinstance(item, SessionEvent):
        return pb.Delivery(sequence=sent.sequence, session_event=event_to_proto(item))
    if item is None:
        return pb.Delivery(sequence=sent.sequence)
    return pb.Delivery(sequence=sent.sequence, cancellation=_cancellation(item))


def _cancellation(cancel: Cancel) -> pb.Cancellation:
    if cancel.kind is ItemKind.COMMAND:
        return pb.Cancellation(command_id=str(cancel.item_id), reason=cancel.reason)
    return pb.Cancellation(task_id=str(cancel.item_id), reason=cancel.reason)


def _report_result(outcome: ReportOutcome) -> pb.ReportResult:
    result = pb.ReportResult(
        report_id=outcome.report_id,
        applied=outcome.judgement.applies,
        reason=outcome.judgement.reason,
    )
    if isinstance(outcome.item, Command):
        result.command.CopyFrom(command_to_proto(outcome.item))
    elif isinstance(outcome.item, Task):
        result.task.CopyFrom(task_to_proto(outcome.item))
    return result
