"""proto3 JSON output, compiled once per message type: the hot half of every REST response.

It produces what `json_format.MessageToDict(m, preserving_proto_field_name=True,
always_print_fields_with_no_presence=True)` produces (Decision 2), several times faster, because
the per-field decisions json_format makes on every call (presence, kind, enum table, int64 …)
are made here once per type. Keys come in declaration order. Types whose JSON form is special
and rare in responses (Any, Struct, Value, ListValue) are left to json_format itself.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from gateway.rest.fields import descriptor_of

Convert = Callable[[Any], Any]
Printer = Callable[[Message], dict[str, Any]]

_INT64 = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})
_BY_JSON_FORMAT = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
    }
)
_AS_JSON_STRING = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)


def to_jsonable(message: Message) -> Any:
    """The message as proto3 JSON (a dict, or a string/number/list for well-known types)."""
    return _value_converter(descriptor_of(message))(message)


@cache
def _value_converter(descriptor: Descriptor) -> Convert:
    """How a message of this type is written as a JSON value."""
    full_name = descriptor.full_name
    if full_name in _AS_JSON_STRING:
        return _json_string
    if full_name in _BY_JSON_FORMAT:
        return _by_json_format
    if descriptor.file.name == "google/protobuf/wrappers.proto":
        inner = _scalar_converter(descriptor.fields_by_name["value"])
        if inner is None:
            return _wrapped
        return lambda message: inner(message.value)
    return _message_printer(descriptor)


def _message_printer(descriptor: Descriptor) -> Printer:
    # (name, has presence, how to convert the attribute value or None to take it as it is)
    plan: list[tuple[str, bool, Convert | None]] = []
    for field in descriptor.fields:
        plan.append((field.name, field.has_presence, _field_converter(field)))

    def print_message(message: Message) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for name, presence, convert in plan:
            if presence and not message.HasField(name):
                continue
            value = getattr(message, name)
            document[name] = value if convert is None else convert(value)
        return document

    if not descriptor.is_extendable:
        return print_message

    def print_with_extensions(message: Message) -> dict[str, Any]:
        # Only proto2 types (descriptor options, mostly) can carry extensions.
        document = print_message(message)
        for field, value in message.ListFields():
            if field.is_extension:
                convert = _field_converter(field)
                document[f"[{field.full_name}]"] = value if convert is None else convert(value)
        return document

    return print_with_extensions


def _field_converter(field: FieldDescriptor) -> Convert | None:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key = _map_key(entry.fields_by_name["key"])
        value = _single(entry.fields_by_name["value"])
        if value is None:
            return lambda entries: {key(k): v for k, v in entries.items()}
        return lambda entries: {key(k): value(v) for k, v in entries.items()}
    single = _single(field)
    if field.is_repeated:
        if single is None:
            return list
        return lambda items: [single(item) for item in items]
    return single


def _single(field: FieldDescriptor) -> Convert | None:
    if field.message_type is not None:
        return _Lazy(field.message_type)
    return _scalar_converter(field)


class _Lazy:
    """Defers a nested type's printer to first use, so recursive types compile."""

    __slots__ = ("_convert", "_descriptor")

    def __init__(self, descriptor: Descriptor) -> None:
        self._descriptor = descriptor
        self._convert: Convert | None = None

    def __call__(self, value: Any) -> Any:
        convert = self._convert
        if convert is None:
            convert = self._convert = _value_converter(self._descriptor)
        return convert(value)


def _scalar_converter(field: FieldDescriptor) -> Convert | None:
    cpp_type = field.cpp_type
    if cpp_type in _INT64:
        return str
    enum = field.enum_type
    if enum is not None:
        if enum.full_name == "google.protobuf.NullValue":
            return _null
        names = {value.number: value.name for value in reversed(enum.values)}
        return lambda number: names.get(number, number)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _base64
    if cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    return None  # int32 and friends, bool, string: already their JSON value


def _map_key(field: FieldDescriptor) -> Convert:
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return lambda key: "true" if key else "false"
    return str


def _json_string(message: Any) -> Any:
    return message.ToJsonString()


def _by_json_format(message: Message) -> Any:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _wrapped(message: Any) -> Any:
    return message.value


def _null(_: Any) -> None:
    return None


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _double(value: float) -> Any:
    if math.isfinite(value):
        return value
    return _non_finite(value)


def _float(value: float) -> Any:
    if math.isfinite(value):
        return type_checkers.ToShortestFloat(value)
    return _non_finite(value)


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
