from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from roz.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RequestDeviceCodeRequest(_message.Message):
    __slots__ = ("scope", "client_name", "client_id")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    scope: str
    client_name: str
    client_id: str
    def __init__(self, scope: _Optional[str] = ..., client_name: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class RequestDeviceCodeResponse(_message.Message):
    __slots__ = ("device_code", "user_code", "verification_uri", "verification_uri_complete", "expires_in", "interval")
    DEVICE_CODE_FIELD_NUMBER: _ClassVar[int]
    USER_CODE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_URI_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_URI_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int
    def __init__(self, device_code: _Optional[str] = ..., user_code: _Optional[str] = ..., verification_uri: _Optional[str] = ..., verification_uri_complete: _Optional[str] = ..., expires_in: _Optional[int] = ..., interval: _Optional[int] = ...) -> None: ...

class ExchangeDeviceCodeRequest(_message.Message):
    __slots__ = ("device_code", "grant_type", "client_id")
    DEVICE_CODE_FIELD_NUMBER: _ClassVar[int]
    GRANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    device_code: str
    grant_type: str
    client_id: str
    def __init__(self, device_code: _Optional[str] = ..., grant_type: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class ExchangeDeviceCodeResponse(_message.Message):
    __slots__ = ("access_token", "token_type", "scope")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    token_type: str
    scope: str
    def __init__(self, access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., scope: _Optional[str] = ...) -> None: ...

class ApproveDeviceRequest(_message.Message):
    __slots__ = ("user_code", "scopes")
    USER_CODE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    user_code: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_code: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class DenyDeviceRequest(_message.Message):
    __slots__ = ("user_code",)
    USER_CODE_FIELD_NUMBER: _ClassVar[int]
    user_code: str
    def __init__(self, user_code: _Optional[str] = ...) -> None: ...
