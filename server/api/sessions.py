"""SessionService: proto ⇄ the sessions service, and the operator's bidirectional stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from google.protobuf import json_format
from google.rpc import code_pb2
from roz.v1 import sessions_pb2 as pb
from roz.v1 import sessions_pb2_grpc

from server.api.convert import dict_of, parse_id, timestamp
from server.api.errors import status_for
from server.api.principal import current_principal
from server.api.watches import resume_after
from server.domain.api_keys import Principal
from server.domain.errors import DomainError, FieldViolation, InvalidArgument
from server.domain.rate_limits import TokenBuckets
from server.domain.sessions import (
    ALREADY_STARTED,
    NO_SESSION,
    Decision,
    EndReason,
    EventKind,
    Origin,
    Session,
    SessionEvent,
    SessionState,
    ToolResult,
    Turn,
    TurnState,
    UserMessage,
    check_reason,
)
from server.services.sessions import Checkpoint, Sessions
from server.storage.sessions import MAX_TURNS_PAGE, SessionRepository

log = logging.getLogger(__name__)

_STATE_TO_PROTO = {
    SessionState.ACTIVE: pb.Session.STATE_ACTIVE,
    SessionState.ENDED: pb.Session.STATE_ENDED,
}
_STATE_FROM_PROTO = {number: state for state, number in _STATE_TO_PROTO.items()}
_TURN_STATE_TO_PROTO = {
    TurnState.RUNNING: pb.SessionTurn.STATE_RUNNING,
    TurnState.FINISHED: pb.SessionTurn.STATE_FINISHED,
    TurnState.CANCELLED: pb.SessionTurn.STATE_CANCELLED,
    TurnState.INTERRUPTED: pb.SessionTurn.STATE_INTERRUPTED,
}
_ORIGIN_TO_PROTO = {
    Origin.OPERATOR: pb.SessionEvent.ORIGIN_OPERATOR,
    Origin.AGENT: pb.SessionEvent.ORIGIN_AGENT,
    Origin.SERVER: pb.SessionEvent.ORIGIN_SERVER,
}
# Codes a client may succeed with later, as they are (the robot reconnects, the turn ends …).
_RETRYABLE = frozenset(
    {"ROBOT_OFFLINE", "ESTOP_ENGAGED", "TURN_IN_PROGRESS", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
)
# Events waiting for an operator's stream to read them: a reader that stops holds the log back.
_OUTBOX = 256
# Events converted lately, by id.
CONVERTED = 4096
_converted: OrderedDict[UUID, pb.SessionEvent] = OrderedDict()


def session_to_proto(session: Session) -> pb.Session:
    return pb.Session(
        id=str(session.id),
        host_id=str(session.host_id),
        environment_id=str(session.environment_id),
        started_by="" if session.started_by is None else str(session.started_by),
        state=_STATE_TO_PROTO[session.state],
        end_reason="" if session.end_reason is None else session.end_reason.value,
        end_message=session.end_message,
        create_time=timestamp(session.create_time),
        end_time=timestamp(session.end_time),
        turn_count=session.turn_count,
        active_turn=session.active_turn,
        input_tokens=session.input_tokens,
        output_tokens=session.output_tokens,
        last_sequence=session.last_sequence,
    )


def event_to_proto(event: SessionEvent) -> pb.SessionEvent:
    """The event's message; converted once and shared (an event never changes, and the
    operator's stream and the robot's delivery send the same one). Never mutate it."""
    message = _converted.get(event.id)
    if message is None:
        message = _converted[event.id] = _event_to_proto(event)
        if len(_converted) > CONVERTED:
            _converted.popitem(last=False)
    return message


def _event_to_proto(event: SessionEvent) -> pb.SessionEvent:
    message = pb.SessionEvent(
        id=str(event.id),
        session_id=str(event.session_id),
        sequence=event.sequence,
        correlation_id=event.correlation_id,
        create_time=timestamp(event.create_time),
        type=event.kind.value,
        origin=_ORIGIN_TO_PROTO[event.origin],
        turn=event.turn,
    )
    payload = getattr(message, event.kind.value)
    payload.SetInParent()
    json_format.ParseDict(dict(event.payload), payload, ignore_unknown_fields=True)
    return message


def _turn_to_proto(turn: Turn) -> pb.SessionTurn:
    return pb.SessionTurn(
        index=turn.index,
        message_id=turn.message_id,
        state=_TURN_STATE_TO_PROTO[turn.state],
        stop_reason=turn.stop_reason,
        input_tokens=turn.input_tokens,
        output_tokens=turn.output_tokens,
        start_time=timestamp(turn.start_time),
        end_time=timestamp(turn.end_time),
    )


def _checkpoint(checkpoint: Checkpoint) -> pb.SessionEvent:
    return pb.SessionEvent(session_id=str(checkpoint.session_id), sequence=checkpoint.sequence)


def _tool_result(call_id: str, success: bool, result: Any, has: bool) -> tuple[ToolResult, int]:
    """The domain's tool result and the size of its result on the wire."""
    return (
        ToolResult(call_id, success, dict_of(result, "result") if has else None),
        result.ByteSize() if has else 0,
    )


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        sessions: Sessions,
        repository: Callable[[], SessionRepository],
        rate_limits: TokenBuckets,
    ) -> None:
        self._sessions = sessions
        self._repository = repository
        # The tenants' buckets the interceptor chain's RateLimit takes from.
        self._rate_limits = rate_limits

    async def StreamSession(
        self, request_iterator: AsyncIterator[pb.StreamSessionRequest], context: Any
    ) -> AsyncIterator[pb.SessionEvent]:
        stream = _OperatorStream(self._sessions, current_principal(), self._rate_limits)
        async for event in stream.run(aiter(request_iterator)):
            yield event

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        principal = current_principal()
        host_id = parse_id(request.host_id, "host_id")
        session = await self._sessions.start(principal.tenant_id, str(host_id), principal.key_id)
        return session_to_proto(session)

    async def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.Session:
        session_id = parse_id(request.id, "id")
        return session_to_proto(await self._sessions.get(current_principal().tenant_id, session_id))

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Any
    ) -> pb.ListSessionsResponse:
        state = None
        if request.state:
            state = _STATE_FROM_PROTO.get(request.state)
            if state is None:
                raise InvalidArgument(
                    "unknown state", [FieldViolation("state", "STATE_ACTIVE or STATE_ENDED")]
                )
        page = await self._repository().list(
            current_principal().tenant_id,
            page_size=request.page_size,
            page_token=request.page_token,
            host_id=parse_id(request.host_id, "host_id") if request.host_id else None,
            state=state,
        )
        return pb.ListSessionsResponse(
            sessions=[session_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def ListSessionTurns(
        self, request: pb.ListSessionTurnsRequest, context: Any
    ) -> pb.ListSessionTurnsResponse:
        session_id = parse_id(request.session_id, "session_id")
        if request.page_size < 0:
            raise InvalidArgument(
                "invalid page size", [FieldViolation("page_size", "must not be negative")]
            )
        limit = min(request.page_size or 50, MAX_TURNS_PAGE)
        after = _turn_token(request.page_token)
        turns, more = await self._repository().turns(
            current_principal().tenant_id, session_id, after=after, limit=limit
        )
        return pb.ListSessionTurnsResponse(
            turns=[_turn_to_proto(turn) for turn in turns],
            next_page_token=str(turns[-1].index) if more and turns else "",
        )

    async def SendMessage(self, request: pb.SendMessageRequest, context: Any) -> pb.SessionEvent:
        session_id = parse_id(request.session_id, "session_id")
        event = await self._sessions.send_message(
            current_principal().tenant_id,
            session_id,
            UserMessage(request.content, request.message_id),
        )
        return event_to_proto(event)

    async def SendToolResult(
        self, request: pb.SendToolResultRequest, context: Any
    ) -> pb.SessionEvent:
        session_id = parse_id(request.session_id, "session_id")
        result, size = _tool_result(
            request.call_id, request.success, request.result, request.HasField("result")
        )
        event = await self._sessions.send_tool_result(
            current_principal().tenant_id, session_id, result, size
        )
        return event_to_proto(event)

    async def DecidePermission(
        self, request: pb.DecidePermissionRequest, context: Any
    ) -> pb.SessionEvent:
        principal = current_principal()
        session_id = parse_id(request.session_id, "session_id")
        event = await self._sessions.decide(
            principal.tenant_id,
            session_id,
            Decision(request.approval_id, request.approved, request.reason),
            actor=principal.key_id,
            scopes=principal.scopes,
        )
        return event_to_proto(event)

    async def CancelTurn(self, request: pb.CancelTurnRequest, context: Any) -> pb.Session:
        principal = current_principal()
        session_id = parse_id(request.session_id, "session_id")
        session = await self._sessions.cancel_turn(
            principal.tenant_id, session_id, check_reason(request.reason), principal.key_id
        )
        return session_to_proto(session)

    async def EndSession(self, request: pb.EndSessionRequest, context: Any) -> pb.Session:
        principal = current_principal()
        session_id = parse_id(request.session_id, "session_id")
        session = await self._sessions.end(
            principal.tenant_id,
            session_id,
            EndReason.OPERATOR_ENDED,
            check_reason(request.reason),
            principal.key_id,
        )
        return session_to_proto(session)

    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: Any
    ) -> AsyncIterator[pb.SessionEvent]:
        session_id = parse_id(request.session_id, "session_id")
        after = resume_after(request, context) or 0
        async for item in self._sessions.events(current_principal().tenant_id, session_id, after):
            yield _checkpoint(item) if isinstance(item, Checkpoint) else event_to_proto(item)


def _turn_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise InvalidArgument(
            "invalid page token", [FieldViolation("page_token", "use a token a page returned")]
        )
    return int(token)


# -- the operator's stream ---------------------------------------------------------------------

_DONE = object()
# Ends of sessions whose stream was cut, still being written.
_ENDING: set[asyncio.Task[Any]] = set()


class _OperatorStream:
    """One StreamSession call: the requests applied in order, the session's events and the
    answers to refused requests interleaved on the way out."""

    def __init__(self, sessions: Sessions, principal: Principal, rate_limits: TokenBuckets) -> None:
        self._sessions = sessions
        self._principal = principal
        self._rate_limits = rate_limits
        self._tenant = principal.tenant_id
        self._outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=_OUTBOX)
        self._session_id: UUID | None = None
        self._ended = False
        self._pump: asyncio.Task[None] | None = None

    async def run(
        self, requests: AsyncIterator[pb.StreamSessionRequest]
    ) -> AsyncIterator[pb.SessionEvent]:
        reader = asyncio.create_task(self._read(requests), name="session-operator-reader")
        try:
            while True:
                item = await self._outbox.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            pump = self._pump
            if pump is not None:
                pump.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if self._session_id is not None and not self._ended:
                # Cut off (the client went away): the session ends with the stream.
                task = asyncio.ensure_future(self._leave(self._session_id))
                _ENDING.add(task)
                task.add_done_callback(_ENDING.discard)

    async def _read(self, requests: AsyncIterator[pb.StreamSessionRequest]) -> None:
        try:
            async for request in requests:
                await self._handle(request)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the stream broke: the caller sees why
            await self._outbox.put(exc)
            return
        # The client closed its side: the session ends with it, and the stream after the end.
        if self._session_id is None:
            await self._outbox.put(_DONE)
            return
        if not self._ended:
            await self._leave(self._session_id)

    async def _leave(self, session_id: UUID) -> None:
        self._ended = True
        try:
            await self._sessions.end(
                self._tenant, session_id, EndReason.OPERATOR_LEFT, "", self._principal.key_id
            )
        except Exception:
            log.warning("could not end session %s after its stream", session_id, exc_info=True)

    async def _handle(self, request: pb.StreamSessionRequest) -> None:
        which = request.WhichOneof("message")
        # Each message takes a token of the tenant's bucket, as a call does.
        wait = self._rate_limits.take(self._tenant)
        if wait > 0:
            await self._reject(
                request,
                "RESOURCE_EXHAUSTED",
                f"rate limit exceeded, retry after {wait:.3f}s",
                retryable=True,
            )
            return
        try:
            if which == "ping":
                await self._outbox.put(self._answer(request, pong=pb.Pong()))
            elif which == "start":
                await self._start(request.start)
            elif which is None:
                raise InvalidArgument(
                    "empty message", [FieldViolation("message", "one field must be set")]
                )
            elif self._session_id is None:
                await self._reject(request, NO_SESSION, "send start first", retryable=False)
            else:
                await self._act(which, request)
        except DomainError as exc:
            code, message = _refusal(exc)
            await self._reject(request, code, message, retryable=code in _RETRYABLE)
        except Exception as exc:
            status = status_for(exc)
            if status is None:
                raise
            await self._reject(
                request, code_pb2.Code.Name(status.code), status.message, retryable=True
            )

    async def _start(self, start: pb.StartSession) -> None:
        if self._session_id is not None:
            raise _Refused(ALREADY_STARTED, "this stream already has a session")
        host_id = parse_id(start.host_id, "start.host_id")
        after = 0
        if start.session_id:
            session = await self._sessions.get(
                self._tenant, parse_id(start.session_id, "start.session_id")
            )
            if session.host_id != host_id:
                raise InvalidArgument(
                    "the session is on another host",
                    [FieldViolation("start.host_id", "must be the session's host")],
                )
            session.check_active()
            if start.after_sequence < 0:
                raise InvalidArgument(
                    "invalid sequence",
                    [FieldViolation("start.after_sequence", "must not be negative")],
                )
            after = start.after_sequence
        else:
            session = await self._sessions.start(self._tenant, str(host_id), self._principal.key_id)
        self._session_id = session.id
        self._pump = asyncio.create_task(self._relay(session.id, after))

    async def _relay(self, session_id: UUID, after: int) -> None:
        try:
            async for item in self._sessions.events(self._tenant, session_id, after):
                if isinstance(item, Checkpoint):
                    await self._outbox.put(_checkpoint(item))
                    continue
                await self._outbox.put(event_to_proto(item))
                if item.kind is EventKind.SESSION_COMPLETED:
                    self._ended = True
            await self._outbox.put(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._outbox.put(exc)

    async def _act(self, which: str, request: pb.StreamSessionRequest) -> None:
        session_id = self._session_id
        assert session_id is not None
        tenant, actor = self._tenant, self._principal.key_id
        if which == "user_message":
            message = request.user_message
            await self._sessions.send_message(
                tenant, session_id, UserMessage(message.content, message.message_id)
            )
        elif which == "tool_result":
            sent = request.tool_result
            result, size = _tool_result(
                sent.call_id, sent.success, sent.result, sent.HasField("result")
            )
            await self._sessions.send_tool_result(tenant, session_id, result, size)
        elif which == "permission_decision":
            decision = request.permission_decision
            await self._sessions.decide(
                tenant,
                session_id,
                Decision(decision.approval_id, decision.approved, decision.reason),
                actor=actor,
                scopes=self._principal.scopes,
            )
        elif which == "cancel_turn":
            await self._sessions.cancel_turn(tenant, session_id, "", actor)
        elif which == "cancel_session":
            reason = check_reason(request.cancel_session.reason, "cancel_session.reason")
            self._ended = True
            await self._sessions.end(tenant, session_id, EndReason.OPERATOR_ENDED, reason, actor)

    def _answer(self, request: pb.StreamSessionRequest, **event: Any) -> pb.SessionEvent:
        (kind,) = event
        return pb.SessionEvent(
            session_id="" if self._session_id is None else str(self._session_id),
            correlation_id=request.request_id[:128],
            create_time=timestamp(datetime.now(UTC)),
            type=kind,
            origin=pb.SessionEvent.ORIGIN_SERVER,
            **event,
        )

    async def _reject(
        self, request: pb.StreamSessionRequest, code: str, message: str, *, retryable: bool
    ) -> None:
        await self._outbox.put(
            self._answer(
                request,
                session_rejected=pb.SessionRejected(
                    code=code, message=message, retryable=retryable
                ),
            )
        )


class _Refused(DomainError):
    """A request this stream refuses by its own rules (a second start)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _refusal(exc: DomainError) -> tuple[str, str]:
    """A refused request's code and message: the error's reason when it has one, else its
    gRPC code's name; the message names each bad field."""
    status = status_for(exc)
    code = getattr(exc, "reason", "") or (
        code_pb2.Code.Name(status.code) if status is not None else "INVALID_ARGUMENT"
    )
    return code, exc.explained() if isinstance(exc, InvalidArgument) else exc.message
