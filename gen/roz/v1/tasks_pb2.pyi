import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
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

class Task(_message.Message):
    __slots__ = ("id", "prompt", "environment_id", "host_id", "timeout", "allowed_tools", "parent_task_id", "labels", "state", "result", "transitions", "create_time", "update_time", "start_time", "end_time", "deliver_time", "acknowledge_time", "output", "trigger_id", "trigger_fire_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Task.State]
        STATE_PENDING: _ClassVar[Task.State]
        STATE_QUEUED: _ClassVar[Task.State]
        STATE_RUNNING: _ClassVar[Task.State]
        STATE_SUCCEEDED: _ClassVar[Task.State]
        STATE_FAILED: _ClassVar[Task.State]
        STATE_CANCELLED: _ClassVar[Task.State]
        STATE_TIMED_OUT: _ClassVar[Task.State]
        STATE_SAFETY_STOPPED: _ClassVar[Task.State]
    STATE_UNSPECIFIED: Task.State
    STATE_PENDING: Task.State
    STATE_QUEUED: Task.State
    STATE_RUNNING: Task.State
    STATE_SUCCEEDED: Task.State
    STATE_FAILED: Task.State
    STATE_CANCELLED: Task.State
    STATE_TIMED_OUT: Task.State
    STATE_SAFETY_STOPPED: Task.State
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_TOOLS_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DELIVER_TIME_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGE_TIME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIRE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    environment_id: str
    host_id: str
    timeout: _duration_pb2.Duration
    allowed_tools: _containers.RepeatedScalarFieldContainer[str]
    parent_task_id: str
    labels: _containers.ScalarMap[str, str]
    state: Task.State
    result: str
    transitions: _containers.RepeatedCompositeFieldContainer[TaskTransition]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    deliver_time: _timestamp_pb2.Timestamp
    acknowledge_time: _timestamp_pb2.Timestamp
    output: _struct_pb2.Struct
    trigger_id: str
    trigger_fire_id: str
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., environment_id: _Optional[str] = ..., host_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., allowed_tools: _Optional[_Iterable[str]] = ..., parent_task_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[Task.State, str]] = ..., result: _Optional[str] = ..., transitions: _Optional[_Iterable[_Union[TaskTransition, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deliver_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acknowledge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trigger_id: _Optional[str] = ..., trigger_fire_id: _Optional[str] = ...) -> None: ...

class TaskTransition(_message.Message):
    __slots__ = ("from_state", "to_state", "reason", "actor", "transition_time")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_TIME_FIELD_NUMBER: _ClassVar[int]
    from_state: Task.State
    to_state: Task.State
    reason: str
    actor: str
    transition_time: _timestamp_pb2.Timestamp
    def __init__(self, from_state: _Optional[_Union[Task.State, str]] = ..., to_state: _Optional[_Union[Task.State, str]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., transition_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTaskRequest(_message.Message):
    __slots__ = ("task", "idempotency_key")
    TASK_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    task: Task
    idempotency_key: str
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "environment_id", "host_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: Task.State
    environment_id: str
    host_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[Task.State, str]] = ..., environment_id: _Optional[str] = ..., host_id: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class TransitionTaskRequest(_message.Message):
    __slots__ = ("id", "state", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: Task.State
    reason: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[Task.State, str]] = ..., reason: _Optional[str] = ...) -> None: ...
