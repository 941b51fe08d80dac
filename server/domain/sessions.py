"""Agent sessions: what a session, a turn and an event are, what operators and agents may send,
and the rules of a session's life (one turn at a time, nothing after the end).

Storage checks these rules under the session's row lock before every change; the database's
constraints only back them up. Refusals carry a reason code, which the streaming API sends as a
`session_rejected` event and the unary API as the error's reason.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument

MAX_CONTENT_BYTES = 32 * 1024
MAX_TEXT_DELTA_BYTES = 64 * 1024
# A tool's parameters or result, a proposed action's params: JSON, at most this large.
MAX_STRUCT_BYTES = 128 * 1024
MAX_ID_LENGTH = 128
MAX_REASON_LENGTH = 1024
MAX_STOP_REASON_LENGTH = 64
MAX_TOKENS = 10**12
# Visible ASCII: ids travel in headers, logs and JSON without escaping.
_ID = re.compile(r"[\x21-\x7e]+")

# Refusal codes (SessionRejected.code; the reason of the unary calls' errors).
NO_SESSION = "NO_SESSION"
ALREADY_STARTED = "ALREADY_STARTED"
ROBOT_OFFLINE = "ROBOT_OFFLINE"
TURN_IN_PROGRESS = "TURN_IN_PROGRESS"
NO_ACTIVE_TURN = "NO_ACTIVE_TURN"
UNKNOWN_APPROVAL = "UNKNOWN_APPROVAL"
UNKNOWN_CALL = "UNKNOWN_CALL"
SESSION_ENDED = "SESSION_ENDED"
CALL_ID_TAKEN = "CALL_ID_TAKEN"


class SessionState(enum.Enum):
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(enum.Enum):
    OPERATOR_ENDED = "OPERATOR_ENDED"
    # The operator's stream closed without ending the session.
    OPERATOR_LEFT = "OPERATOR_LEFT"
    AGENT_ENDED = "AGENT_ENDED"
    # The robot stayed away past the grace period.
    ROBOT_GONE = "ROBOT_GONE"
    IDLE = "IDLE"


END_MESSAGES: Mapping[EndReason, str] = {
    EndReason.OPERATOR_ENDED: "ended by the operator",
    EndReason.OPERATOR_LEFT: "the operator's stream closed",
    EndReason.AGENT_ENDED: "ended by the robot's agent",
    EndReason.ROBOT_GONE: "the robot went away and did not come back in time",
    EndReason.IDLE: "nothing happened in the session for too long",
}


class TurnState(enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class Origin(enum.Enum):
    OPERATOR = "operator"
    AGENT = "agent"
    SERVER = "server"


class EventKind(enum.Enum):
    """What an event is: the name of the SessionEvent field it fills."""

    SESSION_STARTED = "session_started"
    USER_MESSAGE = "user_message"
    TURN_STARTED = "turn_started"
    TEXT_DELTA = "text_delta"
    TOOL_CALL_REQUESTED = "tool_call_requested"
    TOOL_RESULT = "tool_result"
    ACTION_REQUESTED = "action_requested"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_RESOLVED = "approval_resolved"
    ACTION_REFUSED = "action_refused"
    ACTION_STARTED = "action_started"
    ACTION_FINISHED = "action_finished"
    TURN_CANCEL_REQUESTED = "turn_cancel_requested"
    TURN_FINISHED = "turn_finished"
    SESSION_COMPLETED = "session_completed"


# What the robot's agent is sent (over its robot link): what it must act on. What it said
# itself, and what only informs the operator, stays in the log.
AGENT_BOUND: frozenset[EventKind] = frozenset(
    {
        EventKind.SESSION_STARTED,
        EventKind.USER_MESSAGE,
        EventKind.TOOL_RESULT,
        EventKind.APPROVAL_RESOLVED,
        EventKind.ACTION_REFUSED,
        EventKind.ACTION_FINISHED,
        EventKind.TURN_CANCEL_REQUESTED,
        EventKind.SESSION_COMPLETED,
    }
)


@dataclass(frozen=True)
class Session:
    id: UUID
    tenant_id: UUID
    host_id: UUID
    environment_id: UUID
    started_by: UUID | None
    state: SessionState
    end_reason: EndReason | None
    end_message: str
    create_time: datetime
    end_time: datetime | None
    activity_time: datetime
    last_sequence: int
    agent_sequence: int
    turn_count: int
    active_turn: int
    input_tokens: int
    output_tokens: int

    @property
    def active(self) -> bool:
        return self.state is SessionState.ACTIVE

    def check_active(self) -> None:
        if not self.active:
            raise FailedPrecondition(
                "the session has ended",
                reason=SESSION_ENDED,
                metadata={"session_id": str(self.id), "end_reason": _name(self.end_reason)},
            )

    def check_can_start_turn(self) -> None:
        self.check_active()
        if self.active_turn:
            raise FailedPrecondition(
                "a turn is running; wait for it to finish or cancel it",
                reason=TURN_IN_PROGRESS,
                metadata={"turn": str(self.active_turn)},
            )

    def check_turn_running(self) -> None:
        self.check_active()
        if not self.active_turn:
            raise FailedPrecondition("no turn is running", reason=NO_ACTIVE_TURN)


@dataclass(frozen=True)
class Turn:
    session_id: UUID
    index: int
    message_id: str
    state: TurnState
    stop_reason: str
    input_tokens: int
    output_tokens: int
    start_time: datetime
    end_time: datetime | None


@dataclass(frozen=True)
class SessionEvent:
    """One event of a session's log. `payload` is the event's message in proto JSON."""

    id: UUID
    session_id: UUID
    sequence: int
    kind: EventKind
    origin: Origin
    turn: int
    correlation_id: str
    payload: Mapping[str, Any]
    create_time: datetime


# -- what operators send -----------------------------------------------------------------------


@dataclass(frozen=True)
class UserMessage:
    content: str
    message_id: str = ""

    def validate(self, new_id: str) -> UserMessage:
        """The message with its id (`new_id` when it named none), or InvalidArgument."""
        violations: list[FieldViolation] = []
        size = len(self.content.encode())
        if not self.content.strip():
            violations.append(FieldViolation("content", "a message says something"))
        elif size > MAX_CONTENT_BYTES:
            violations.append(
                FieldViolation("content", f"at most {MAX_CONTENT_BYTES} bytes, not {size}")
            )
        _check_id(self.message_id, "message_id", violations, required=False)
        if violations:
            raise InvalidArgument("invalid message", violations)
        return UserMessage(self.content, self.message_id or new_id)


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    success: bool
    result: Mapping[str, Any] | None = None

    def validate(self, result_bytes: int) -> None:
        violations: list[FieldViolation] = []
        _check_id(self.call_id, "call_id", violations, required=True)
        if result_bytes > MAX_STRUCT_BYTES:
            violations.append(FieldViolation("result", f"at most {MAX_STRUCT_BYTES} bytes"))
        if violations:
            raise InvalidArgument("invalid tool result", violations)


@dataclass(frozen=True)
class Decision:
    approval_id: str
    approved: bool
    reason: str = ""

    def validate(self) -> None:
        violations: list[FieldViolation] = []
        if not self.approval_id:
            violations.append(FieldViolation("approval_id", "approval_id is required"))
        if len(self.reason) > MAX_REASON_LENGTH:
            violations.append(FieldViolation("reason", f"at most {MAX_REASON_LENGTH} characters"))
        if violations:
            raise InvalidArgument("invalid permission decision", violations)


def check_reason(reason: str, field_name: str = "reason") -> str:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(
            "reason too long",
            [FieldViolation(field_name, f"at most {MAX_REASON_LENGTH} characters")],
        )
    return reason


# -- what the robot's agent sends ---------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    tool_name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Proposal:
    """A physical action: becomes a command (its type, params and timeout)."""

    call_id: str
    type: str
    params: Mapping[str, Any]
    timeout: timedelta | None


@dataclass(frozen=True)
class TurnFinish:
    stop_reason: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class AgentEnd:
    message: str


AgentEvent = TextDelta | ToolCall | Proposal | TurnFinish | AgentEnd


@dataclass(frozen=True)
class AgentUpdate:
    """One numbered update of a session from the robot's agent."""

    session_id: UUID
    sequence: int
    event: AgentEvent


class Arrival(enum.Enum):
    """Where an agent update stands against what the session has recorded."""

    NEXT = "next"
    # Recorded before (a resend after a reconnect): answered again, not recorded twice.
    REPEAT = "repeat"
    # A gap: the agent must send the next one first.
    EARLY = "early"


def arrival(update_sequence: int, recorded_through: int) -> Arrival:
    if update_sequence <= recorded_through:
        return Arrival.REPEAT
    if update_sequence == recorded_through + 1:
        return Arrival.NEXT
    return Arrival.EARLY


def check_agent_event(session: Session, event: AgentEvent) -> None:
    """What the agent may say now: anything in a turn while one runs; only its end outside
    one; nothing once the session has ended. Also the event's own limits."""
    session.check_active()
    violations: list[FieldViolation] = []
    if isinstance(event, TextDelta):
        if len(event.text.encode()) > MAX_TEXT_DELTA_BYTES:
            violations.append(
                FieldViolation("text_delta.text", f"at most {MAX_TEXT_DELTA_BYTES} bytes")
            )
    elif isinstance(event, ToolCall):
        _check_id(event.call_id, "tool_call_requested.call_id", violations, required=True)
        if not event.tool_name or len(event.tool_name) > MAX_ID_LENGTH:
            violations.append(
                FieldViolation("tool_call_requested.tool_name", "1 to 128 characters")
            )
        _check_size(event.parameters, "tool_call_requested.parameters", violations)
    elif isinstance(event, Proposal):
        _check_id(event.call_id, "action_proposed.call_id", violations, required=True)
        _check_size(event.params, "action_proposed.params", violations)
    elif isinstance(event, TurnFinish):
        if len(event.stop_reason) > MAX_STOP_REASON_LENGTH:
            violations.append(
                FieldViolation("turn_finished.stop_reason", f"at most {MAX_STOP_REASON_LENGTH}")
            )
        for name, value in (
            ("input_tokens", event.input_tokens),
            ("output_tokens", event.output_tokens),
        ):
            if not 0 <= value <= MAX_TOKENS:
                violations.append(FieldViolation(f"turn_finished.{name}", "0 or more"))
    elif isinstance(event, AgentEnd) and len(event.message) > MAX_REASON_LENGTH:
        violations.append(FieldViolation("session_ended.message", f"at most {MAX_REASON_LENGTH}"))
    if violations:
        raise InvalidArgument("invalid session update", violations)
    if not isinstance(event, AgentEnd):
        session.check_turn_running()


def _check_size(value: Mapping[str, Any], name: str, violations: list[FieldViolation]) -> None:
    """A struct the log keeps: at most MAX_STRUCT_BYTES as JSON."""
    size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
    if size > MAX_STRUCT_BYTES:
        violations.append(FieldViolation(name, f"at most {MAX_STRUCT_BYTES} bytes, not {size}"))


def _check_id(value: str, name: str, violations: list[FieldViolation], *, required: bool) -> None:
    if not value:
        if required:
            violations.append(FieldViolation(name, f"{name.rsplit('.', 1)[-1]} is required"))
        return
    if len(value) > MAX_ID_LENGTH or _ID.fullmatch(value) is None:
        violations.append(
            FieldViolation(name, f"1 to {MAX_ID_LENGTH} visible ASCII characters, no spaces")
        )


def _name(reason: EndReason | None) -> str:
    return "" if reason is None else reason.value
