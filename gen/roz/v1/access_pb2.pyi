from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor

class MethodAccess(_message.Message):
    __slots__ = ("scope", "public", "authenticated", "robot")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    ROBOT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    public: bool
    authenticated: bool
    robot: bool
    def __init__(self, scope: _Optional[str] = ..., public: _Optional[bool] = ..., authenticated: _Optional[bool] = ..., robot: _Optional[bool] = ...) -> None: ...
