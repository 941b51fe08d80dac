"""Which field of a JSON body json_format refused, and what that field wants (error path only).

json_format says why in prose that names Python types ("expected string or bytes-like object,
got 'int'") and, for nested faults, not where. Here the refused document is walked against the
descriptor by proto3 JSON's rules, so the violation names the field path (`nested.numbers[1]`,
`labels["k"]`) and what the field takes in JSON terms: "count must be an int32 (a whole number
from -2147483648 to 2147483647), not the string "many"". When the walk finds nothing wrong,
json_format's own message is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.rest.enums import enum_table, invalid_enum_message
from gateway.rest.fields import fields_by_any_name, is_map

BODY = "body"  # the violation field for faults of the document as a whole
MAX_DEPTH = 64  # json_format counts message levels (Struct/Value included)

Fault = tuple[str, str]  # (field path, description)

_PREFIX = re.compile(r"^(Failed to parse \w+ field: )+")
_SUFFIX = re.compile(r'( at "?[\w.\[\]]*"?)?\.*$')
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
_FLOAT32_MAX = 3.4028234663852886e38

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: ("uint64", 0, 2**64 - 1),
}
_WELL_KNOWN_TEXT = {
    "google.protobuf.Timestamp": 'an RFC 3339 timestamp string such as "2024-01-31T12:00:00Z"',
    "google.protobuf.Duration": 'a duration string such as "1.5s"',
    "google.protobuf.FieldMask": 'a string of comma-separated field paths such as "a,b.c"',
}
_WRAPPER_PREFIX = "google.protobuf."
_WRAPPERS = frozenset(
    _WRAPPER_PREFIX + name + "Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


def locate(document: Any, descriptor: Descriptor, path: str, original: Exception) -> Fault:
    """The first faulty field of `document`, an object for `descriptor` json_format refused."""
    if not isinstance(document, dict):
        return path or BODY, f"expected a JSON object for {descriptor.full_name}"
    names = fields_by_any_name(descriptor)
    factory = message_factory.GetMessageClass(descriptor)
    for key, value in document.items():
        where = f"{path}.{key}" if path else key
        field = names.get(key)
        if field is None:
            if key.startswith("[") or key == "@type":
                continue  # extensions and Any's type are json_format's to judge
            return where, f'unknown field "{key}" in {descriptor.full_name}'
        try:
            json_format.ParseDict({key: value}, factory(), max_recursion_depth=MAX_DEPTH)
        except json_format.ParseError as exc:
            fault = _check_field(field, value, where, exc)
            return fault or (where, f"invalid value for {where}: {clean(exc)}")
    return path or BODY, clean(original)


def clean(exc: Exception) -> str:
    """json_format's message without its "Failed to parse x field:" and " at X.y" wrapping."""
    text = str(exc).split("\n", 1)[0]
    return _SUFFIX.sub("", _PREFIX.sub("", text)) or "invalid value"


# -- one field's value -------------------------------------------------------------------------


def _check_field(field: FieldDescriptor, value: Any, where: str, exc: Exception) -> Fault | None:
    entry = field.message_type
    if entry is not None and is_map(field):
        key_field = entry.fields_by_name["key"]
        value_field = entry.fields_by_name["value"]
        if not isinstance(value, dict):
            wanted = f"a JSON object (a map to {expected(value_field)})"
            return where, _must(where, wanted, value)
        for key, item in value.items():
            at = f"{where}[{json.dumps(key, ensure_ascii=False)}]"
            fault = _check_map_key(key_field, key, at) or _check_item(value_field, item, at, exc)
            if fault is not None:
                return fault
        return None
    if field.is_repeated:
        if not isinstance(value, list):
            wanted = f"a JSON array whose items are each {expected(field)}"
            return where, _must(where, wanted, value)
        for index, item in enumerate(value):
            fault = _check_item(field, item, f"{where}[{index}]", exc)
            if fault is not None:
                return fault
        return None
    if value is None:
        return None  # proto3 JSON: null is the field's default
    return _check_value(field, value, where, exc)


def _check_item(field: FieldDescriptor, item: Any, where: str, exc: Exception) -> Fault | None:
    if item is None:
        if field.message_type is not None and field.message_type.full_name.endswith(".Value"):
            return None
        return where, _must(where, expected(field), item)
    return _check_value(field, item, where, exc)


def _check_map_key(field: FieldDescriptor, key: str, where: str) -> Fault | None:
    """Map keys are JSON strings whatever the key type: "true", "-7"."""
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        ok = key in ("true", "false")
    elif field.cpp_type in _INT_RANGES:
        _, low, high = _INT_RANGES[field.cpp_type]
        number = _int_from_text(key)
        ok = number is not None and low <= number <= high
    else:
        return None
    return None if ok else (where, f"{where}: invalid map key for {expected(field)}")


def _check_value(
    field: FieldDescriptor, value: Any, where: str, exc: Exception | None
) -> Fault | None:
    """A non-null value for one singular field, or one item of a repeated or map field."""
    message = field.message_type
    if message is not None:
        name = message.full_name
        if name in _WRAPPERS:
            return _check_value(message.fields_by_name["value"], value, where, exc)
        if name == "google.protobuf.Value":
            return None
        if name in _WELL_KNOWN_TEXT and not isinstance(value, str):
            return where, _must(where, _WELL_KNOWN_TEXT[name], value)
        if name == "google.protobuf.ListValue" and not isinstance(value, list):
            return where, _must(where, "a JSON array", value)
        if name not in _WELL_KNOWN_TEXT and name != "google.protobuf.ListValue":
            if not isinstance(value, dict):
                return where, _must(where, expected(field), value)
            if not name.startswith(_WRAPPER_PREFIX):
                return _check_message(value, message, where, exc)
        return None
    if field.enum_type is not None:
        return _check_enum(field, value, where)
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return None if isinstance(value, bool) else (where, _must(where, expected(field), value))
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        if not isinstance(value, str):
            return where, _must(where, expected(field), value)
        if field.type == FieldDescriptor.TYPE_BYTES and not _is_base64(value):
            return where, _must(where, expected(field), value)
        return None
    if field.cpp_type in _INT_RANGES:
        return _check_int(field, value, where)
    return _check_float(field, value, where)


def _check_message(
    value: dict[str, Any], descriptor: Descriptor, where: str, exc: Exception | None
) -> Fault | None:
    factory = message_factory.GetMessageClass(descriptor)
    try:
        json_format.ParseDict(value, factory(), max_recursion_depth=MAX_DEPTH)
    except json_format.ParseError as inner:
        return locate(value, descriptor, where, inner)
    return None


def _check_enum(field: FieldDescriptor, value: Any, where: str) -> Fault | None:
    table = enum_table(field.enum_type)
    if isinstance(value, str):
        found = table.number(value, lenient=False)
    elif isinstance(value, int) and not isinstance(value, bool):
        found = table.number(str(value), lenient=False)
    else:
        found = None
    if found is None or not -(2**31) <= found < 2**31:
        return where, f"{where}: {invalid_enum_message(table, value)}"
    return None


def _check_int(field: FieldDescriptor, value: Any, where: str) -> Fault | None:
    _, low, high = _INT_RANGES[field.cpp_type]
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _int_from_text(value)
    if number is None or not low <= number <= high:
        return where, _must(where, expected(field), value)
    return None


def _int_from_text(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _check_float(field: FieldDescriptor, value: Any, where: str) -> Fault | None:
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float):
        number = float(value) if abs(value) < 2**1024 else math.inf
    elif isinstance(value, str) and value in _FLOAT_WORDS:
        return None
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    else:
        number = None
    if number is None or not math.isfinite(number):
        return where, _must(where, expected(field), value)
    if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT and abs(number) > _FLOAT32_MAX:
        return where, _must(where, expected(field), value)
    return None


def _is_base64(text: str) -> bool:
    data = text.rstrip("=")
    data += "=" * (-len(data) % 4)
    try:
        if "-" in data or "_" in data:
            base64.urlsafe_b64decode(data.encode("ascii"))
        else:
            base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return True


# -- saying it -----------------------------------------------------------------------------------


def expected(field: FieldDescriptor) -> str:
    """What a (singular) field takes in proto3 JSON, in words."""
    message = field.message_type
    if message is not None:
        name = message.full_name
        if name in _WRAPPERS:
            return expected(message.fields_by_name["value"])
        if name in _WELL_KNOWN_TEXT:
            return _WELL_KNOWN_TEXT[name]
        if name == "google.protobuf.Value":
            return "any JSON value"
        if name == "google.protobuf.ListValue":
            return "a JSON array"
        if name == "google.protobuf.Any":
            return 'a JSON object with "@type"'
        return f"a JSON object ({name})"
    if field.enum_type is not None:
        return f"a value of enum {field.enum_type.full_name} (a name or number)"
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "true or false"
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return "a base64 string"
        return "a string"
    if field.cpp_type in _INT_RANGES:
        kind, low, high = _INT_RANGES[field.cpp_type]
        return f"an {kind} (a whole number from {low} to {high})"
    kind = "a float" if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT else "a double"
    return f'{kind} (a number, or "NaN", "Infinity" or "-Infinity")'


def _must(where: str, wanted: str, value: Any) -> str:
    return f"{where} must be {wanted}, not {_shown(value)}"


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = json.dumps(value)
        return "the number " + (text if len(text) <= 40 else text[:37] + "...")
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return "the string " + json.dumps(text, ensure_ascii=False)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
