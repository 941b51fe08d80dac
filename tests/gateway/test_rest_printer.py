"""The compiled JSON printer writes exactly what json_format writes with Decision 2's options."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    struct_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from gateway.rest.printer import to_jsonable
from tests.gateway.rest_harness import echo_pb2

F = descriptor_pb2.FieldDescriptorProto


def _every_kind() -> type[Message]:
    """A message with one field of each shape the printer distinguishes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="testing/rest/printer_kinds.proto",
        package="testing.rest.printer",
        syntax="proto3",
        dependency=[echo_pb2.DESCRIPTOR.name],
    )
    message = file.message_type.add(name="Kinds")
    enum = message.enum_type.add(name="Mood")
    enum.value.add(name="MOOD_UNSPECIFIED", number=0)
    enum.value.add(name="MOOD_HAPPY", number=1)

    def add(name: str, number: int, kind: int, **extra: Any) -> None:
        message.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL, **extra)

    add("a_double", 1, F.TYPE_DOUBLE)
    add("a_float", 2, F.TYPE_FLOAT)
    add("a_uint64", 3, F.TYPE_UINT64)
    add("a_sint64", 4, F.TYPE_SINT64)
    add("a_fixed32", 5, F.TYPE_FIXED32)
    add("a_bool", 6, F.TYPE_BOOL)
    add("a_bytes", 7, F.TYPE_BYTES)
    add("a_mood", 8, F.TYPE_ENUM, type_name=".testing.rest.printer.Kinds.Mood")
    add("moods", 9, F.TYPE_ENUM, type_name=".testing.rest.printer.Kinds.Mood")
    message.field[-1].label = F.LABEL_REPEATED
    add("nesteds", 10, F.TYPE_MESSAGE, type_name=".testing.echo.v1.Nested")
    message.field[-1].label = F.LABEL_REPEATED
    add("maybe", 11, F.TYPE_STRING, proto3_optional=True, oneof_index=1)
    add("first", 12, F.TYPE_STRING, oneof_index=0)
    add("second", 13, F.TYPE_INT64, oneof_index=0)
    message.oneof_decl.add(name="choice")
    message.oneof_decl.add(name="_maybe")  # synthetic oneofs come last
    for name, number, key, value, type_name in (
        ("by_number", 14, F.TYPE_INT32, F.TYPE_MESSAGE, ".testing.echo.v1.Nested"),
        ("by_flag", 15, F.TYPE_BOOL, F.TYPE_STRING, ""),
        ("by_name", 16, F.TYPE_STRING, F.TYPE_INT64, ""),
    ):
        entry_name = "".join(part.title() for part in name.split("_")) + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key, label=F.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=value, label=F.LABEL_OPTIONAL)
        if type_name:
            entry.field[-1].type_name = type_name
        add(name, number, F.TYPE_MESSAGE, type_name=f".testing.rest.printer.Kinds.{entry_name}")
        message.field[-1].label = F.LABEL_REPEATED
    descriptor_pool.Default().Add(file)
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName("testing.rest.printer.Kinds")
    )


Kinds = _every_kind()


def _populated_echo() -> Message:
    request = echo_pb2.EchoRequest(
        message="héllo",
        count=-3,
        big=2**62,
        color=2,
        tags=["a", "b"],
        nested=echo_pb2.Nested(value="v", numbers=[1, 2]),
        blob=b"\x00\xff",
        labels={"k": "v"},
    )
    request.when.FromJsonString("2024-05-01T10:00:00.5Z")
    request.delay.FromJsonString("1.5s")
    request.mask.paths.extend(["create_time", "a"])
    request.limit.value = 0
    request.extra.update({"n": 1, "list": [None, "s", {"b": True}]})
    return request


def _kinds_set() -> Message:
    kinds = Kinds(
        a_double=1.25,
        a_float=0.1,
        a_uint64=2**64 - 1,
        a_sint64=-(2**40),
        a_fixed32=7,
        a_bool=True,
        a_bytes=b"\xfb\xff",
        a_mood=1,
        moods=[1, 0, 5],
        maybe="",
        second=9,
    )
    kinds.nesteds.add(value="x")
    kinds.by_number[3].value = "three"
    kinds.by_flag[True] = "yes"
    kinds.by_name["n"] = 10
    return kinds


def _status() -> Message:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="R", metadata={"a": "b"}))
    return status_pb2.Status(code=3, message="m", details=[detail])


def _file_descriptor() -> Message:
    proto = descriptor_pb2.FileDescriptorProto()
    echo_pb2.DESCRIPTOR.CopyToProto(proto)  # proto2 options with google.api.http extensions
    return proto


CASES = {
    "empty": lambda: echo_pb2.EchoRequest(),
    "populated": _populated_echo,
    "nested in a response": lambda: echo_pb2.EchoResponse(echoed=_populated_echo(), index=2),
    "unknown enum number": lambda: echo_pb2.EchoRequest(color=42),
    "every kind, unset": lambda: Kinds(),
    "every kind, set": _kinds_set,
    "status with an Any": _status,
    "proto2 with extensions": _file_descriptor,
    "wrapper": lambda: wrappers_pb2.UInt64Value(value=5),
    "struct": lambda: struct_pb2.Struct(fields={"a": struct_pb2.Value(bool_value=True)}),
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_same_document_as_json_format(make: Any) -> None:
    message = make()
    expected = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert to_jsonable(message) == expected


@pytest.mark.parametrize(
    ("value", "rendered"),
    [(math.inf, "Infinity"), (-math.inf, "-Infinity"), (math.nan, "NaN")],
)
def test_non_finite_numbers_are_strings(value: float, rendered: str) -> None:
    document = to_jsonable(Kinds(a_double=value, a_float=value))
    assert document["a_double"] == rendered
    assert document["a_float"] == rendered
