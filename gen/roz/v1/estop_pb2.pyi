import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EstopLatch(_message.Message):
    __slots__ = ("engaged", "epoch", "reason", "source", "actor", "change_time")
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SOURCE_UNSPECIFIED: _ClassVar[EstopLatch.Source]
        SOURCE_OPERATOR: _ClassVar[EstopLatch.Source]
        SOURCE_ROBOT_BUTTON: _ClassVar[EstopLatch.Source]
        SOURCE_ROBOT_DEADMAN: _ClassVar[EstopLatch.Source]
        SOURCE_ROBOT_GUARD: _ClassVar[EstopLatch.Source]
    SOURCE_UNSPECIFIED: EstopLatch.Source
    SOURCE_OPERATOR: EstopLatch.Source
    SOURCE_ROBOT_BUTTON: EstopLatch.Source
    SOURCE_ROBOT_DEADMAN: EstopLatch.Source
    SOURCE_ROBOT_GUARD: EstopLatch.Source
    ENGAGED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    engaged: bool
    epoch: int
    reason: str
    source: EstopLatch.Source
    actor: str
    change_time: _timestamp_pb2.Timestamp
    def __init__(self, engaged: _Optional[bool] = ..., epoch: _Optional[int] = ..., reason: _Optional[str] = ..., source: _Optional[_Union[EstopLatch.Source, str]] = ..., actor: _Optional[str] = ..., change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EstopAcknowledgement(_message.Message):
    __slots__ = ("connected", "acknowledged", "host_epoch", "environment_epoch", "acknowledge_time")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    HOST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGE_TIME_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    acknowledged: bool
    host_epoch: int
    environment_epoch: int
    acknowledge_time: _timestamp_pb2.Timestamp
    def __init__(self, connected: _Optional[bool] = ..., acknowledged: _Optional[bool] = ..., host_epoch: _Optional[int] = ..., environment_epoch: _Optional[int] = ..., acknowledge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HostEstop(_message.Message):
    __slots__ = ("host_id", "stopped", "host", "environment_id", "environment", "acknowledgement")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGEMENT_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    stopped: bool
    host: EstopLatch
    environment_id: str
    environment: EstopLatch
    acknowledgement: EstopAcknowledgement
    def __init__(self, host_id: _Optional[str] = ..., stopped: _Optional[bool] = ..., host: _Optional[_Union[EstopLatch, _Mapping]] = ..., environment_id: _Optional[str] = ..., environment: _Optional[_Union[EstopLatch, _Mapping]] = ..., acknowledgement: _Optional[_Union[EstopAcknowledgement, _Mapping]] = ...) -> None: ...

class EnvironmentEstop(_message.Message):
    __slots__ = ("environment_id", "latch", "hosts")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    LATCH_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    latch: EstopLatch
    hosts: _containers.RepeatedCompositeFieldContainer[HostEstop]
    def __init__(self, environment_id: _Optional[str] = ..., latch: _Optional[_Union[EstopLatch, _Mapping]] = ..., hosts: _Optional[_Iterable[_Union[HostEstop, _Mapping]]] = ...) -> None: ...

class EngageHostEstopRequest(_message.Message):
    __slots__ = ("host_id", "reason")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    reason: str
    def __init__(self, host_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ClearHostEstopRequest(_message.Message):
    __slots__ = ("host_id", "reason")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    reason: str
    def __init__(self, host_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetHostEstopRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class EngageEnvironmentEstopRequest(_message.Message):
    __slots__ = ("environment_id", "reason")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    reason: str
    def __init__(self, environment_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ClearEnvironmentEstopRequest(_message.Message):
    __slots__ = ("environment_id", "reason")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    reason: str
    def __init__(self, environment_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetEnvironmentEstopRequest(_message.Message):
    __slots__ = ("environment_id",)
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    def __init__(self, environment_id: _Optional[str] = ...) -> None: ...
