import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from roz.v1 import commands_pb2 as _commands_pb2
from roz.v1 import estop_pb2 as _estop_pb2
from roz.v1 import sessions_pb2 as _sessions_pb2
from roz.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "ack", "command_report", "task_report", "heartbeat", "telemetry", "estop_ack", "estop_raise", "session_update")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    COMMAND_REPORT_FIELD_NUMBER: _ClassVar[int]
    TASK_REPORT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    ESTOP_ACK_FIELD_NUMBER: _ClassVar[int]
    ESTOP_RAISE_FIELD_NUMBER: _ClassVar[int]
    SESSION_UPDATE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    command_report: CommandReport
    task_report: TaskReport
    heartbeat: Heartbeat
    telemetry: Telemetry
    estop_ack: EstopAck
    estop_raise: EstopRaise
    session_update: SessionUpdate
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., command_report: _Optional[_Union[CommandReport, _Mapping]] = ..., task_report: _Optional[_Union[TaskReport, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., telemetry: _Optional[_Union[Telemetry, _Mapping]] = ..., estop_ack: _Optional[_Union[EstopAck, _Mapping]] = ..., estop_raise: _Optional[_Union[EstopRaise, _Mapping]] = ..., session_update: _Optional[_Union[SessionUpdate, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host_id", "last_received_sequence", "client")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    last_received_sequence: int
    client: str
    def __init__(self, host_id: _Optional[str] = ..., last_received_sequence: _Optional[int] = ..., client: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class CommandReport(_message.Message):
    __slots__ = ("command_id", "state", "reason", "result", "report_id")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    state: _commands_pb2.Command.State
    reason: str
    result: _struct_pb2.Struct
    report_id: str
    def __init__(self, command_id: _Optional[str] = ..., state: _Optional[_Union[_commands_pb2.Command.State, str]] = ..., reason: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., report_id: _Optional[str] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("task_id", "state", "reason", "result", "report_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: _tasks_pb2.Task.State
    reason: str
    result: _struct_pb2.Struct
    report_id: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[_tasks_pb2.Task.State, str]] = ..., reason: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., report_id: _Optional[str] = ...) -> None: ...

class EstopAck(_message.Message):
    __slots__ = ("host_epoch", "environment_epoch")
    HOST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    host_epoch: int
    environment_epoch: int
    def __init__(self, host_epoch: _Optional[int] = ..., environment_epoch: _Optional[int] = ...) -> None: ...

class EstopRaise(_message.Message):
    __slots__ = ("source", "reason")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    source: _estop_pb2.EstopLatch.Source
    reason: str
    def __init__(self, source: _Optional[_Union[_estop_pb2.EstopLatch.Source, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("robot_time",)
    ROBOT_TIME_FIELD_NUMBER: _ClassVar[int]
    robot_time: _timestamp_pb2.Timestamp
    def __init__(self, robot_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("state", "sample_time")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TIME_FIELD_NUMBER: _ClassVar[int]
    state: _struct_pb2.Struct
    sample_time: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sample_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "delivery", "report_result", "keepalive", "drain", "estop", "session_ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    REPORT_RESULT_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ESTOP_FIELD_NUMBER: _ClassVar[int]
    SESSION_ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    delivery: Delivery
    report_result: ReportResult
    keepalive: Keepalive
    drain: Drain
    estop: _estop_pb2.HostEstop
    session_ack: SessionAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., delivery: _Optional[_Union[Delivery, _Mapping]] = ..., report_result: _Optional[_Union[ReportResult, _Mapping]] = ..., keepalive: _Optional[_Union[Keepalive, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., estop: _Optional[_Union[_estop_pb2.HostEstop, _Mapping]] = ..., session_ack: _Optional[_Union[SessionAck, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("host_id", "heartbeat_interval", "presence_window", "resume_after_sequence", "link_id", "estop", "sessions")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    ESTOP_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    heartbeat_interval: _duration_pb2.Duration
    presence_window: _duration_pb2.Duration
    resume_after_sequence: int
    link_id: str
    estop: _estop_pb2.HostEstop
    sessions: _containers.RepeatedCompositeFieldContainer[SessionPosition]
    def __init__(self, host_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., presence_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resume_after_sequence: _Optional[int] = ..., link_id: _Optional[str] = ..., estop: _Optional[_Union[_estop_pb2.HostEstop, _Mapping]] = ..., sessions: _Optional[_Iterable[_Union[SessionPosition, _Mapping]]] = ...) -> None: ...

class SessionPosition(_message.Message):
    __slots__ = ("session_id", "recorded_through")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    recorded_through: int
    def __init__(self, session_id: _Optional[str] = ..., recorded_through: _Optional[int] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("sequence", "command", "task", "cancellation", "session_event")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CANCELLATION_FIELD_NUMBER: _ClassVar[int]
    SESSION_EVENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    command: _commands_pb2.Command
    task: _tasks_pb2.Task
    cancellation: Cancellation
    session_event: _sessions_pb2.SessionEvent
    def __init__(self, sequence: _Optional[int] = ..., command: _Optional[_Union[_commands_pb2.Command, _Mapping]] = ..., task: _Optional[_Union[_tasks_pb2.Task, _Mapping]] = ..., cancellation: _Optional[_Union[Cancellation, _Mapping]] = ..., session_event: _Optional[_Union[_sessions_pb2.SessionEvent, _Mapping]] = ...) -> None: ...

class Cancellation(_message.Message):
    __slots__ = ("command_id", "task_id", "reason")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    task_id: str
    reason: str
    def __init__(self, command_id: _Optional[str] = ..., task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportResult(_message.Message):
    __slots__ = ("report_id", "applied", "reason", "command", "task")
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    applied: bool
    reason: str
    command: _commands_pb2.Command
    task: _tasks_pb2.Task
    def __init__(self, report_id: _Optional[str] = ..., applied: _Optional[bool] = ..., reason: _Optional[str] = ..., command: _Optional[_Union[_commands_pb2.Command, _Mapping]] = ..., task: _Optional[_Union[_tasks_pb2.Task, _Mapping]] = ...) -> None: ...

class Keepalive(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason", "reconnect_after")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_AFTER_FIELD_NUMBER: _ClassVar[int]
    reason: str
    reconnect_after: _duration_pb2.Duration
    def __init__(self, reason: _Optional[str] = ..., reconnect_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SessionUpdate(_message.Message):
    __slots__ = ("session_id", "sequence", "text_delta", "tool_call_requested", "action_proposed", "turn_finished", "session_ended")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ACTION_PROPOSED_FIELD_NUMBER: _ClassVar[int]
    TURN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    SESSION_ENDED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    text_delta: _sessions_pb2.TextDelta
    tool_call_requested: _sessions_pb2.ToolCallRequested
    action_proposed: _sessions_pb2.ProposedAction
    turn_finished: _sessions_pb2.TurnFinished
    session_ended: AgentEnd
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., text_delta: _Optional[_Union[_sessions_pb2.TextDelta, _Mapping]] = ..., tool_call_requested: _Optional[_Union[_sessions_pb2.ToolCallRequested, _Mapping]] = ..., action_proposed: _Optional[_Union[_sessions_pb2.ProposedAction, _Mapping]] = ..., turn_finished: _Optional[_Union[_sessions_pb2.TurnFinished, _Mapping]] = ..., session_ended: _Optional[_Union[AgentEnd, _Mapping]] = ...) -> None: ...

class AgentEnd(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class SessionAck(_message.Message):
    __slots__ = ("session_id", "sequence", "accepted", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    accepted: bool
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
