import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from roz.v1 import audit_pb2 as _audit_pb2
from roz.v1 import commands_pb2 as _commands_pb2
from roz.v1 import estop_pb2 as _estop_pb2
from roz.v1 import hosts_pb2 as _hosts_pb2
from roz.v1 import tasks_pb2 as _tasks_pb2
from transcoding.v1 import annotations_pb2 as _annotations_pb2_1
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchHostRequest(_message.Message):
    __slots__ = ("host_id", "after_sequence")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    after_sequence: int
    def __init__(self, host_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchCommandRequest(_message.Message):
    __slots__ = ("command_id", "after_sequence")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    after_sequence: int
    def __init__(self, command_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id", "after_sequence")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    after_sequence: int
    def __init__(self, task_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchFleetRequest(_message.Message):
    __slots__ = ("after_sequence",)
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    def __init__(self, after_sequence: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("sequence", "change", "host", "command", "task", "telemetry")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    change: _audit_pb2.AuditEvent
    host: HostState
    command: _commands_pb2.Command
    task: _tasks_pb2.Task
    telemetry: RobotTelemetry
    def __init__(self, sequence: _Optional[int] = ..., change: _Optional[_Union[_audit_pb2.AuditEvent, _Mapping]] = ..., host: _Optional[_Union[HostState, _Mapping]] = ..., command: _Optional[_Union[_commands_pb2.Command, _Mapping]] = ..., task: _Optional[_Union[_tasks_pb2.Task, _Mapping]] = ..., telemetry: _Optional[_Union[RobotTelemetry, _Mapping]] = ...) -> None: ...

class HostState(_message.Message):
    __slots__ = ("host", "estop")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ESTOP_FIELD_NUMBER: _ClassVar[int]
    host: _hosts_pb2.Host
    estop: _estop_pb2.HostEstop
    def __init__(self, host: _Optional[_Union[_hosts_pb2.Host, _Mapping]] = ..., estop: _Optional[_Union[_estop_pb2.HostEstop, _Mapping]] = ...) -> None: ...

class RobotTelemetry(_message.Message):
    __slots__ = ("host_id", "state", "sample_time", "receive_time")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    state: _struct_pb2.Struct
    sample_time: _timestamp_pb2.Timestamp
    receive_time: _timestamp_pb2.Timestamp
    def __init__(self, host_id: _Optional[str] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sample_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
