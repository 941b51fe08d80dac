from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
HTTP_RESPONSE_FIELD_NUMBER: _ClassVar[int]
http_response: _descriptor.FieldDescriptor

class HttpResponse(_message.Message):
    __slots__ = ("status", "event_id_field")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_FIELD_NUMBER: _ClassVar[int]
    status: int
    event_id_field: str
    def __init__(self, status: _Optional[int] = ..., event_id_field: _Optional[str] = ...) -> None: ...
