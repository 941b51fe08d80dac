import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditEvent(_message.Message):
    __slots__ = ("sequence", "kind", "event_time", "actor", "host_id", "environment_id", "subject_id", "detail", "hash", "previous_hash")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: str
    event_time: _timestamp_pb2.Timestamp
    actor: Actor
    host_id: str
    environment_id: str
    subject_id: str
    detail: _struct_pb2.Struct
    hash: str
    previous_hash: str
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[_Union[Actor, _Mapping]] = ..., host_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., detail: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., hash: _Optional[str] = ..., previous_hash: _Optional[str] = ...) -> None: ...

class Actor(_message.Message):
    __slots__ = ("api_key_id", "host_id", "protocol", "request_id")
    class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PROTOCOL_UNSPECIFIED: _ClassVar[Actor.Protocol]
        PROTOCOL_GRPC: _ClassVar[Actor.Protocol]
        PROTOCOL_GRPC_WEB: _ClassVar[Actor.Protocol]
        PROTOCOL_REST: _ClassVar[Actor.Protocol]
        PROTOCOL_CONNECT: _ClassVar[Actor.Protocol]
    PROTOCOL_UNSPECIFIED: Actor.Protocol
    PROTOCOL_GRPC: Actor.Protocol
    PROTOCOL_GRPC_WEB: Actor.Protocol
    PROTOCOL_REST: Actor.Protocol
    PROTOCOL_CONNECT: Actor.Protocol
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    host_id: str
    protocol: Actor.Protocol
    request_id: str
    def __init__(self, api_key_id: _Optional[str] = ..., host_id: _Optional[str] = ..., protocol: _Optional[_Union[Actor.Protocol, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "host_id", "environment_id", "subject_id", "kind", "after_sequence", "start_time", "end_time", "order_by")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    host_id: str
    environment_id: str
    subject_id: str
    kind: str
    after_sequence: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    order_by: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., host_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., kind: _Optional[str] = ..., after_sequence: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., order_by: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("audit_events", "next_page_token")
    AUDIT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audit_events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, audit_events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyAuditEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditEventsResponse(_message.Message):
    __slots__ = ("intact", "verified_entries", "head_sequence", "head_hash", "broken", "broken_sequence", "description")
    class Break(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BREAK_UNSPECIFIED: _ClassVar[VerifyAuditEventsResponse.Break]
        BREAK_ALTERED: _ClassVar[VerifyAuditEventsResponse.Break]
        BREAK_MISSING: _ClassVar[VerifyAuditEventsResponse.Break]
        BREAK_UNLINKED: _ClassVar[VerifyAuditEventsResponse.Break]
        BREAK_TRUNCATED: _ClassVar[VerifyAuditEventsResponse.Break]
    BREAK_UNSPECIFIED: VerifyAuditEventsResponse.Break
    BREAK_ALTERED: VerifyAuditEventsResponse.Break
    BREAK_MISSING: VerifyAuditEventsResponse.Break
    BREAK_UNLINKED: VerifyAuditEventsResponse.Break
    BREAK_TRUNCATED: VerifyAuditEventsResponse.Break
    INTACT_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    BROKEN_FIELD_NUMBER: _ClassVar[int]
    BROKEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    intact: bool
    verified_entries: int
    head_sequence: int
    head_hash: str
    broken: VerifyAuditEventsResponse.Break
    broken_sequence: int
    description: str
    def __init__(self, intact: _Optional[bool] = ..., verified_entries: _Optional[int] = ..., head_sequence: _Optional[int] = ..., head_hash: _Optional[str] = ..., broken: _Optional[_Union[VerifyAuditEventsResponse.Break, str]] = ..., broken_sequence: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...
