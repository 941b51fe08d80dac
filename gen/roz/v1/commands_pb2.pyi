import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from transcoding.v1 import annotations_pb2 as _annotations_pb2_1
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Command(_message.Message):
    __slots__ = ("id", "host_id", "type", "params", "idempotency_key", "timeout", "state", "applied_policies", "transitions", "create_time", "update_time", "deliver_time", "acknowledge_time", "result", "session_id", "session_call_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Command.State]
        STATE_AWAITING_APPROVAL: _ClassVar[Command.State]
        STATE_PENDING: _ClassVar[Command.State]
        STATE_RUNNING: _ClassVar[Command.State]
        STATE_COMPLETED: _ClassVar[Command.State]
        STATE_FAILED: _ClassVar[Command.State]
        STATE_CANCELLED: _ClassVar[Command.State]
        STATE_TIMED_OUT: _ClassVar[Command.State]
        STATE_REJECTED: _ClassVar[Command.State]
    STATE_UNSPECIFIED: Command.State
    STATE_AWAITING_APPROVAL: Command.State
    STATE_PENDING: Command.State
    STATE_RUNNING: Command.State
    STATE_COMPLETED: Command.State
    STATE_FAILED: Command.State
    STATE_CANCELLED: Command.State
    STATE_TIMED_OUT: Command.State
    STATE_REJECTED: Command.State
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_POLICIES_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELIVER_TIME_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    host_id: str
    type: str
    params: _struct_pb2.Struct
    idempotency_key: str
    timeout: _duration_pb2.Duration
    state: Command.State
    applied_policies: _containers.RepeatedCompositeFieldContainer[PolicyVersion]
    transitions: _containers.RepeatedCompositeFieldContainer[CommandTransition]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    deliver_time: _timestamp_pb2.Timestamp
    acknowledge_time: _timestamp_pb2.Timestamp
    result: _struct_pb2.Struct
    session_id: str
    session_call_id: str
    def __init__(self, id: _Optional[str] = ..., host_id: _Optional[str] = ..., type: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., state: _Optional[_Union[Command.State, str]] = ..., applied_policies: _Optional[_Iterable[_Union[PolicyVersion, _Mapping]]] = ..., transitions: _Optional[_Iterable[_Union[CommandTransition, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deliver_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acknowledge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., session_id: _Optional[str] = ..., session_call_id: _Optional[str] = ...) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("policy_id", "version")
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    version: int
    def __init__(self, policy_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class CommandTransition(_message.Message):
    __slots__ = ("from_state", "to_state", "reason", "actor", "transition_time")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_TIME_FIELD_NUMBER: _ClassVar[int]
    from_state: Command.State
    to_state: Command.State
    reason: str
    actor: str
    transition_time: _timestamp_pb2.Timestamp
    def __init__(self, from_state: _Optional[_Union[Command.State, str]] = ..., to_state: _Optional[_Union[Command.State, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., transition_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCommandRequest(_message.Message):
    __slots__ = ("command", "validate_only")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    command: Command
    validate_only: bool
    def __init__(self, command: _Optional[_Union[Command, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ListCommandsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "host_id", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    host_id: str
    state: Command.State
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., host_id: _Optional[str] = ..., state: _Optional[_Union[Command.State, str]] = ...) -> None: ...

class ListCommandsResponse(_message.Message):
    __slots__ = ("commands", "next_page_token")
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[Command]
    next_page_token: str
    def __init__(self, commands: _Optional[_Iterable[_Union[Command, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCommandRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class TransitionCommandRequest(_message.Message):
    __slots__ = ("id", "state", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: Command.State
    reason: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[Command.State, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteCommandRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
