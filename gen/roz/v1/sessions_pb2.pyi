import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from roz.v1 import commands_pb2 as _commands_pb2
from transcoding.v1 import annotations_pb2 as _annotations_pb2_1
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Session(_message.Message):
    __slots__ = ("id", "host_id", "environment_id", "started_by", "state", "end_reason", "end_message", "create_time", "end_time", "turn_count", "active_turn", "input_tokens", "output_tokens", "last_sequence")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Session.State]
        STATE_ACTIVE: _ClassVar[Session.State]
        STATE_ENDED: _ClassVar[Session.State]
    STATE_UNSPECIFIED: Session.State
    STATE_ACTIVE: Session.State
    STATE_ENDED: Session.State
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    END_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TURN_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TURN_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    host_id: str
    environment_id: str
    started_by: str
    state: Session.State
    end_reason: str
    end_message: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    turn_count: int
    active_turn: int
    input_tokens: int
    output_tokens: int
    last_sequence: int
    def __init__(self, id: _Optional[str] = ..., host_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., started_by: _Optional[str] = ..., state: _Optional[_Union[Session.State, str]] = ..., end_reason: _Optional[str] = ..., end_message: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., turn_count: _Optional[int] = ..., active_turn: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class SessionTurn(_message.Message):
    __slots__ = ("index", "message_id", "state", "stop_reason", "input_tokens", "output_tokens", "start_time", "end_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[SessionTurn.State]
        STATE_RUNNING: _ClassVar[SessionTurn.State]
        STATE_FINISHED: _ClassVar[SessionTurn.State]
        STATE_CANCELLED: _ClassVar[SessionTurn.State]
        STATE_INTERRUPTED: _ClassVar[SessionTurn.State]
    STATE_UNSPECIFIED: SessionTurn.State
    STATE_RUNNING: SessionTurn.State
    STATE_FINISHED: SessionTurn.State
    STATE_CANCELLED: SessionTurn.State
    STATE_INTERRUPTED: SessionTurn.State
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    index: int
    message_id: str
    state: SessionTurn.State
    stop_reason: str
    input_tokens: int
    output_tokens: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., message_id: _Optional[str] = ..., state: _Optional[_Union[SessionTurn.State, str]] = ..., stop_reason: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamSessionRequest(_message.Message):
    __slots__ = ("start", "user_message", "tool_result", "permission_decision", "cancel_turn", "cancel_session", "ping", "request_id")
    START_FIELD_NUMBER: _ClassVar[int]
    USER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_DECISION_FIELD_NUMBER: _ClassVar[int]
    CANCEL_TURN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_SESSION_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    start: StartSession
    user_message: UserMessage
    tool_result: ToolResult
    permission_decision: PermissionDecision
    cancel_turn: CancelTurn
    cancel_session: CancelSession
    ping: Ping
    request_id: str
    def __init__(self, start: _Optional[_Union[StartSession, _Mapping]] = ..., user_message: _Optional[_Union[UserMessage, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., permission_decision: _Optional[_Union[PermissionDecision, _Mapping]] = ..., cancel_turn: _Optional[_Union[CancelTurn, _Mapping]] = ..., cancel_session: _Optional[_Union[CancelSession, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("host_id", "session_id", "after_sequence")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    session_id: str
    after_sequence: int
    def __init__(self, host_id: _Optional[str] = ..., session_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class CancelTurn(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelSession(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("id", "session_id", "sequence", "correlation_id", "create_time", "type", "origin", "turn", "session_started", "session_rejected", "user_message", "turn_started", "text_delta", "tool_call_requested", "tool_result", "action_requested", "approval_requested", "approval_resolved", "action_refused", "action_started", "action_finished", "turn_cancel_requested", "turn_finished", "session_completed", "pong")
    class Origin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ORIGIN_UNSPECIFIED: _ClassVar[SessionEvent.Origin]
        ORIGIN_OPERATOR: _ClassVar[SessionEvent.Origin]
        ORIGIN_AGENT: _ClassVar[SessionEvent.Origin]
        ORIGIN_SERVER: _ClassVar[SessionEvent.Origin]
    ORIGIN_UNSPECIFIED: SessionEvent.Origin
    ORIGIN_OPERATOR: SessionEvent.Origin
    ORIGIN_AGENT: SessionEvent.Origin
    ORIGIN_SERVER: SessionEvent.Origin
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    SESSION_REJECTED_FIELD_NUMBER: _ClassVar[int]
    USER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TURN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    ACTION_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    ACTION_REFUSED_FIELD_NUMBER: _ClassVar[int]
    ACTION_STARTED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FINISHED_FIELD_NUMBER: _ClassVar[int]
    TURN_CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TURN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    SESSION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    id: str
    session_id: str
    sequence: int
    correlation_id: str
    create_time: _timestamp_pb2.Timestamp
    type: str
    origin: SessionEvent.Origin
    turn: int
    session_started: SessionStarted
    session_rejected: SessionRejected
    user_message: UserMessage
    turn_started: TurnStarted
    text_delta: TextDelta
    tool_call_requested: ToolCallRequested
    tool_result: ToolResult
    action_requested: ActionRequested
    approval_requested: ApprovalRequested
    approval_resolved: ApprovalResolved
    action_refused: ActionRefused
    action_started: ActionStarted
    action_finished: ActionFinished
    turn_cancel_requested: TurnCancelRequested
    turn_finished: TurnFinished
    session_completed: SessionCompleted
    pong: Pong
    def __init__(self, id: _Optional[str] = ..., session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., correlation_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., origin: _Optional[_Union[SessionEvent.Origin, str]] = ..., turn: _Optional[int] = ..., session_started: _Optional[_Union[SessionStarted, _Mapping]] = ..., session_rejected: _Optional[_Union[SessionRejected, _Mapping]] = ..., user_message: _Optional[_Union[UserMessage, _Mapping]] = ..., turn_started: _Optional[_Union[TurnStarted, _Mapping]] = ..., text_delta: _Optional[_Union[TextDelta, _Mapping]] = ..., tool_call_requested: _Optional[_Union[ToolCallRequested, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., action_requested: _Optional[_Union[ActionRequested, _Mapping]] = ..., approval_requested: _Optional[_Union[ApprovalRequested, _Mapping]] = ..., approval_resolved: _Optional[_Union[ApprovalResolved, _Mapping]] = ..., action_refused: _Optional[_Union[ActionRefused, _Mapping]] = ..., action_started: _Optional[_Union[ActionStarted, _Mapping]] = ..., action_finished: _Optional[_Union[ActionFinished, _Mapping]] = ..., turn_cancel_requested: _Optional[_Union[TurnCancelRequested, _Mapping]] = ..., turn_finished: _Optional[_Union[TurnFinished, _Mapping]] = ..., session_completed: _Optional[_Union[SessionCompleted, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("host_id", "environment_id", "started_by")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    environment_id: str
    started_by: str
    def __init__(self, host_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., started_by: _Optional[str] = ...) -> None: ...

class SessionRejected(_message.Message):
    __slots__ = ("code", "message", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class UserMessage(_message.Message):
    __slots__ = ("content", "message_id")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    content: str
    message_id: str
    def __init__(self, content: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class TurnStarted(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ToolCallRequested(_message.Message):
    __slots__ = ("call_id", "tool_name", "parameters")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool_name: str
    parameters: _struct_pb2.Struct
    def __init__(self, call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "success", "result")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    success: bool
    result: _struct_pb2.Struct
    def __init__(self, call_id: _Optional[str] = ..., success: _Optional[bool] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ProposedAction(_message.Message):
    __slots__ = ("call_id", "type", "params", "timeout")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    type: str
    params: _struct_pb2.Struct
    timeout: _duration_pb2.Duration
    def __init__(self, call_id: _Optional[str] = ..., type: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ActionRequested(_message.Message):
    __slots__ = ("call_id", "command")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    command: _commands_pb2.Command
    def __init__(self, call_id: _Optional[str] = ..., command: _Optional[_Union[_commands_pb2.Command, _Mapping]] = ...) -> None: ...

class ApprovalRequested(_message.Message):
    __slots__ = ("approval_id", "call_id", "type", "params", "reason")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    call_id: str
    type: str
    params: _struct_pb2.Struct
    reason: str
    def __init__(self, approval_id: _Optional[str] = ..., call_id: _Optional[str] = ..., type: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class PermissionDecision(_message.Message):
    __slots__ = ("approval_id", "approved", "reason")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    approved: bool
    reason: str
    def __init__(self, approval_id: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ApprovalResolved(_message.Message):
    __slots__ = ("approval_id", "call_id", "approved", "reason", "actor")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    call_id: str
    approved: bool
    reason: str
    actor: str
    def __init__(self, approval_id: _Optional[str] = ..., call_id: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ActionRefused(_message.Message):
    __slots__ = ("call_id", "code", "message", "violations")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    code: str
    message: str
    violations: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, call_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., violations: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class ActionStarted(_message.Message):
    __slots__ = ("call_id", "command_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    command_id: str
    def __init__(self, call_id: _Optional[str] = ..., command_id: _Optional[str] = ...) -> None: ...

class ActionFinished(_message.Message):
    __slots__ = ("call_id", "command_id", "state", "reason", "result")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    command_id: str
    state: _commands_pb2.Command.State
    reason: str
    result: _struct_pb2.Struct
    def __init__(self, call_id: _Optional[str] = ..., command_id: _Optional[str] = ..., state: _Optional[_Union[_commands_pb2.Command.State, str]] = ..., reason: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TurnCancelRequested(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TurnFinished(_message.Message):
    __slots__ = ("stop_reason", "input_tokens", "output_tokens")
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    stop_reason: str
    input_tokens: int
    output_tokens: int
    def __init__(self, stop_reason: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class SessionCompleted(_message.Message):
    __slots__ = ("reason", "message", "input_tokens", "output_tokens", "turn_count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TURN_COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    input_tokens: int
    output_tokens: int
    turn_count: int
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., turn_count: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "host_id", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    host_id: str
    state: Session.State
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., host_id: _Optional[str] = ..., state: _Optional[_Union[Session.State, str]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListSessionTurnsRequest(_message.Message):
    __slots__ = ("session_id", "page_size", "page_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionTurnsResponse(_message.Message):
    __slots__ = ("turns", "next_page_token")
    TURNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    turns: _containers.RepeatedCompositeFieldContainer[SessionTurn]
    next_page_token: str
    def __init__(self, turns: _Optional[_Iterable[_Union[SessionTurn, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("session_id", "content", "message_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    message_id: str
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class SendToolResultRequest(_message.Message):
    __slots__ = ("session_id", "call_id", "success", "result")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    call_id: str
    success: bool
    result: _struct_pb2.Struct
    def __init__(self, session_id: _Optional[str] = ..., call_id: _Optional[str] = ..., success: _Optional[bool] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DecidePermissionRequest(_message.Message):
    __slots__ = ("session_id", "approval_id", "approved", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    approval_id: str
    approved: bool
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., approval_id: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelTurnRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchSessionRequest(_message.Message):
    __slots__ = ("session_id", "after_sequence")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    after_sequence: int
    def __init__(self, session_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...
