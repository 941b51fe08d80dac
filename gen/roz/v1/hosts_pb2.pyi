import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
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

class Host(_message.Message):
    __slots__ = ("id", "name", "kind", "environment_id", "capabilities", "labels", "status", "last_seen_time", "create_time", "update_time")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Host.Kind]
        KIND_EDGE: _ClassVar[Host.Kind]
        KIND_CLOUD: _ClassVar[Host.Kind]
    KIND_UNSPECIFIED: Host.Kind
    KIND_EDGE: Host.Kind
    KIND_CLOUD: Host.Kind
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Host.Status]
        STATUS_ONLINE: _ClassVar[Host.Status]
        STATUS_OFFLINE: _ClassVar[Host.Status]
        STATUS_DEGRADED: _ClassVar[Host.Status]
        STATUS_MAINTENANCE: _ClassVar[Host.Status]
    STATUS_UNSPECIFIED: Host.Status
    STATUS_ONLINE: Host.Status
    STATUS_OFFLINE: Host.Status
    STATUS_DEGRADED: Host.Status
    STATUS_MAINTENANCE: Host.Status
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    kind: Host.Kind
    environment_id: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    status: Host.Status
    last_seen_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[Host.Kind, str]] = ..., environment_id: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[Host.Status, str]] = ..., last_seen_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateHostRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "environment_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: Host.Status
    environment_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[Host.Status, str]] = ..., environment_id: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    next_page_token: str
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetHostRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UpdateHostStatusRequest(_message.Message):
    __slots__ = ("id", "status", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: Host.Status
    reason: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[Host.Status, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class HostStatusChange(_message.Message):
    __slots__ = ("id", "host_id", "from_status", "to_status", "reason", "changed_by_key_id", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    host_id: str
    from_status: Host.Status
    to_status: Host.Status
    reason: str
    changed_by_key_id: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., host_id: _Optional[str] = ..., from_status: _Optional[_Union[Host.Status, str]] = ..., to_status: _Optional[_Union[Host.Status, str]] = ..., reason: _Optional[str] = ..., changed_by_key_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListHostStatusChangesRequest(_message.Message):
    __slots__ = ("host_id", "page_size", "page_token")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    page_size: int
    page_token: str
    def __init__(self, host_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHostStatusChangesResponse(_message.Message):
    __slots__ = ("status_changes", "next_page_token")
    STATUS_CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status_changes: _containers.RepeatedCompositeFieldContainer[HostStatusChange]
    next_page_token: str
    def __init__(self, status_changes: _Optional[_Iterable[_Union[HostStatusChange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateHostRequest(_message.Message):
    __slots__ = ("id", "host", "update_mask")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: Host
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, id: _Optional[str] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteHostRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
