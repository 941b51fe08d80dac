"""Text from a URL (path captures, query values) turned into a protobuf field value.

Follows grpc-gateway's de-facto rules for the query string: enums by name or number, bytes in
standard or URL-safe base64, Timestamp in RFC 3339, Duration in proto ("1.5s") or Go ("1h2m")
syntax, FieldMask as comma-separated paths, wrappers as their bare scalar, Struct/Value as JSON.
A converter raises ValueError with a message fit for a BadRequest field violation.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.rest.enums import enum_table, invalid_enum_message

# A converter returns a scalar to assign, or a message to copy into the field.
Converter = Callable[[str], Any]

_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "t", "1"})
_FALSE = frozenset({"false", "f", "0"})
_FLOAT_WORDS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_NANOS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_DURATION_NANOS = 315_576_000_000 * 1_000_000_000 + 999_999_999

_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_JSON_TEXT_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


def converter_for(field: FieldDescriptor, lenient_enums: bool) -> Converter | None:
    """How to read this field from text, or None if URL text cannot set it (a plain message)."""
    if field.message_type is not None:
        return _message_converter(field.message_type, lenient_enums)
    if field.enum_type is not None:
        table = enum_table(field.enum_type)

        def to_enum(text: str) -> int:
            number = table.number(text, lenient_enums)
            if number is None:
                raise ValueError(invalid_enum_message(table, text))
            return number

        return to_enum
    return _SCALARS[field.cpp_type] if field.type != FieldDescriptor.TYPE_BYTES else to_bytes


def _message_converter(descriptor: Descriptor, lenient_enums: bool) -> Converter | None:
    full_name = descriptor.full_name
    factory = message_factory.GetMessageClass(descriptor)
    if full_name == "google.protobuf.Timestamp":

        def to_timestamp(text: str) -> Message:
            value = factory()
            try:
                value.FromJsonString(text)  # type: ignore[attr-defined]
            except ValueError as exc:
                raise ValueError(f"invalid RFC 3339 timestamp {text!r}: {exc}") from None
            return value

        return to_timestamp
    if full_name == "google.protobuf.Duration":

        def to_duration(text: str) -> Message:
            value = factory()
            value.FromNanoseconds(parse_duration_nanos(text))  # type: ignore[attr-defined]
            return value

        return to_duration
    if full_name == "google.protobuf.FieldMask":

        def to_field_mask(text: str) -> Message:
            value = factory()
            paths = [_snake_path(path.strip()) for path in text.split(",") if path.strip()]
            value.paths.extend(paths)  # type: ignore[attr-defined]
            return value

        return to_field_mask
    if full_name in _WRAPPERS:
        inner = converter_for(descriptor.fields_by_name["value"], lenient_enums)
        assert inner is not None

        def to_wrapper(text: str) -> Message:
            value = factory()
            value.value = inner(text)  # type: ignore[attr-defined]
            return value

        return to_wrapper
    if full_name in _JSON_TEXT_TYPES:

        def to_json_value(text: str) -> Message:
            value = factory()
            try:
                json_format.Parse(text, value)
            except json_format.ParseError as exc:
                raise ValueError(f"invalid JSON for {full_name}: {exc}") from None
            return value

        return to_json_value
    return None


def to_int(text: str) -> int:
    # int() alone would also take "1_000" and " 7 ".
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"invalid integer {text!r}")
    return int(text)


def to_float(text: str) -> float:
    word = _FLOAT_WORDS.get(text)
    if word is not None:
        return word
    if "_" in text or text.strip() != text or text.lower() in ("nan", "inf", "infinity", "-inf"):
        raise ValueError(f"invalid number {text!r}")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None


def to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}; expected true or false")


def to_string(text: str) -> str:
    return text


def to_bytes(text: str) -> bytes:
    """Standard base64, or URL-safe; padding optional."""
    # A '+' of standard base64 arrives as a space when the client did not escape it.
    data = text.replace(" ", "+").rstrip("=")
    data += "=" * (-len(data) % 4)
    try:
        if "-" in data or "_" in data:
            return base64.urlsafe_b64decode(data.encode("ascii"))
        return base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"invalid base64 {text!r}") from None


_SCALARS: dict[int, Converter] = {
    FieldDescriptor.CPPTYPE_INT32: to_int,
    FieldDescriptor.CPPTYPE_INT64: to_int,
    FieldDescriptor.CPPTYPE_UINT32: to_int,
    FieldDescriptor.CPPTYPE_UINT64: to_int,
    FieldDescriptor.CPPTYPE_DOUBLE: to_float,
    FieldDescriptor.CPPTYPE_FLOAT: to_float,
    FieldDescriptor.CPPTYPE_BOOL: to_bool,
    FieldDescriptor.CPPTYPE_STRING: to_string,
}


def parse_duration_nanos(text: str) -> int:
    """Go duration syntax, which includes the proto JSON form: "1.5s", "1h2m", "-300ms", "0"."""
    body = text[1:] if text[:1] in "+-" else text
    negative = text.startswith("-")
    if body == "0":
        return 0
    position, total = 0, Decimal(0)
    while position < len(body):
        match = _GO_DURATION_PART.match(body, position)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}; use e.g. 1.5s, 300ms or 1h2m")
        total += Decimal(match.group(1)) * _NANOS_PER_UNIT[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}; use e.g. 1.5s, 300ms or 1h2m")
    nanos = int(total)
    if nanos > _MAX_DURATION_NANOS:
        raise ValueError(f"duration {text!r} is out of range")
    return -nanos if negative else nanos


def _snake_path(path: str) -> str:
    # FieldMask paths use proto names; lowerCamel spellings (the JSON form) are accepted too.
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), path)
