import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from transcoding.v1 import annotations_pb2 as _annotations_pb2_1
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SafetyPolicy(_message.Message):
    __slots__ = ("id", "name", "description", "version", "limits", "workspace", "allowed_command_types", "denied_command_types", "approval_command_types", "create_time", "update_time", "approval_ttl", "heartbeat_window")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_COMMAND_TYPES_FIELD_NUMBER: _ClassVar[int]
    DENIED_COMMAND_TYPES_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_COMMAND_TYPES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TTL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    version: int
    limits: Limits
    workspace: Workspace
    allowed_command_types: _containers.RepeatedScalarFieldContainer[str]
    denied_command_types: _containers.RepeatedScalarFieldContainer[str]
    approval_command_types: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    approval_ttl: _duration_pb2.Duration
    heartbeat_window: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., workspace: _Optional[_Union[Workspace, _Mapping]] = ..., allowed_command_types: _Optional[_Iterable[str]] = ..., denied_command_types: _Optional[_Iterable[str]] = ..., approval_command_types: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approval_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_linear_velocity", "max_acceleration", "max_force", "max_payload")
    MAX_LINEAR_VELOCITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCELERATION_FIELD_NUMBER: _ClassVar[int]
    MAX_FORCE_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    max_linear_velocity: float
    max_acceleration: float
    max_force: float
    max_payload: float
    def __init__(self, max_linear_velocity: _Optional[float] = ..., max_acceleration: _Optional[float] = ..., max_force: _Optional[float] = ..., max_payload: _Optional[float] = ...) -> None: ...

class Workspace(_message.Message):
    __slots__ = ("boxes", "prisms")
    BOXES_FIELD_NUMBER: _ClassVar[int]
    PRISMS_FIELD_NUMBER: _ClassVar[int]
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    prisms: _containers.RepeatedCompositeFieldContainer[Prism]
    def __init__(self, boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., prisms: _Optional[_Iterable[_Union[Prism, _Mapping]]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: Point
    max: Point
    def __init__(self, min: _Optional[_Union[Point, _Mapping]] = ..., max: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class Prism(_message.Message):
    __slots__ = ("vertices", "min_z", "max_z")
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    MIN_Z_FIELD_NUMBER: _ClassVar[int]
    MAX_Z_FIELD_NUMBER: _ClassVar[int]
    vertices: _containers.RepeatedCompositeFieldContainer[Point]
    min_z: float
    max_z: float
    def __init__(self, vertices: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., min_z: _Optional[float] = ..., max_z: _Optional[float] = ...) -> None: ...

class CreateSafetyPolicyRequest(_message.Message):
    __slots__ = ("safety_policy",)
    SAFETY_POLICY_FIELD_NUMBER: _ClassVar[int]
    safety_policy: SafetyPolicy
    def __init__(self, safety_policy: _Optional[_Union[SafetyPolicy, _Mapping]] = ...) -> None: ...

class ListSafetyPoliciesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSafetyPoliciesResponse(_message.Message):
    __slots__ = ("safety_policies", "next_page_token")
    SAFETY_POLICIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    safety_policies: _containers.RepeatedCompositeFieldContainer[SafetyPolicy]
    next_page_token: str
    def __init__(self, safety_policies: _Optional[_Iterable[_Union[SafetyPolicy, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSafetyPolicyRequest(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UpdateSafetyPolicyRequest(_message.Message):
    __slots__ = ("id", "safety_policy")
    ID_FIELD_NUMBER: _ClassVar[int]
    SAFETY_POLICY_FIELD_NUMBER: _ClassVar[int]
    id: str
    safety_policy: SafetyPolicy
    def __init__(self, id: _Optional[str] = ..., safety_policy: _Optional[_Union[SafetyPolicy, _Mapping]] = ...) -> None: ...

class DeleteSafetyPolicyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
