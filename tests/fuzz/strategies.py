"""Hypothesis strategies read from descriptors: JSON documents, query strings, paths, protobuf.

Everything is derived from a method's request descriptor or a binding's path template, so a new
field, method or route is fuzzed without touching this file. Values are a mix of what the field
takes (so calls get past parsing into the servicers) and any JSON at all (so parsing is hit).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any
from urllib.parse import quote

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from gateway.rest.fields import is_map
from gateway.rest.templates import ANY, REST, PathTemplate

# -- ids seen in responses -------------------------------------------------------------------------

# Ids of resources the fuzzed server made, so path and body values can name real rows.
KNOWN_IDS: list[str] = []
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NO_ID = "00000000-0000-0000-0000-000000000000"

KNOWN_ID = st.integers(0, 2**16).map(
    lambda index: KNOWN_IDS[index % len(KNOWN_IDS)] if KNOWN_IDS else _NO_ID
)


def remember_ids(document: Any) -> None:
    """Adds the UUIDs under "...id" keys of a response document to KNOWN_IDS (at most 200)."""
    if isinstance(document, dict):
        for key, value in document.items():
            if isinstance(value, str) and key.endswith("id") and _UUID.fullmatch(value):
                if value not in KNOWN_IDS and len(KNOWN_IDS) < 200:
                    KNOWN_IDS.append(value)
            else:
                remember_ids(value)
    elif isinstance(document, list):
        for item in document:
            remember_ids(item)


# -- JSON ------------------------------------------------------------------------------------------

_TEXT = st.text(max_size=12)
_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | _TEXT
    | st.uuids().map(str)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3),
    max_leaves=6,
)

_INT_BOUNDS = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_WELL_KNOWN_TEXT = {
    "google.protobuf.Timestamp": st.sampled_from(
        ["2024-01-31T12:00:00Z", "1970-01-01T00:00:00.5+01:00", "9999-12-31T23:59:59Z", "0001-"]
    ),
    "google.protobuf.Duration": st.sampled_from(["1.5s", "0s", "-3s", "315576000001s", "1h"]),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """A JSON value of the kind the field takes, edges included."""
    if field.enum_type is not None:
        names = [value.name for value in field.enum_type.values]
        return st.sampled_from(names) | st.integers(-3, 2**31) | _TEXT
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=12).map(lambda data: base64.b64encode(data).decode())
        return st.one_of(
            _NAME, _NAME, KNOWN_ID, st.text(max_size=40), st.sampled_from(["", " ", "a" * 300])
        )
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        numbers = st.integers(low, high) | st.sampled_from([low, high, low - 1, high + 1, 0, -1])
        return numbers | numbers.map(str)
    return st.floats() | st.sampled_from(["NaN", "Infinity", "-Infinity"])


def field_value(field: FieldDescriptor, depth: int = 2) -> st.SearchStrategy[Any]:
    """A JSON value for one field: mostly of its kind, sometimes anything."""
    if is_map(field):
        entry = field.message_type
        value = _single(entry.fields_by_name["value"], depth - 1)
        typed = st.dictionaries(_TEXT, value, max_size=3)
    elif field.is_repeated:
        typed = st.lists(_single(field, depth - 1), max_size=3)
    else:
        typed = _single(field, depth)
    return st.one_of(*[typed] * 7, JSON_VALUES)


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    message = field.message_type
    if message is None:
        return _scalar(field)
    name = message.full_name
    if name in _WELL_KNOWN_TEXT:
        return _WELL_KNOWN_TEXT[name] | _TEXT
    if name == "google.protobuf.FieldMask":
        paths = [f.name for f in field.containing_type.fields] or ["x"]
        return st.lists(st.sampled_from([*paths, "no_such_field", "a.b"]), max_size=3).map(",".join)
    if (
        name.startswith("google.protobuf.")
        and name.endswith("Value")
        and "value" in [f.name for f in message.fields]
    ):
        return _scalar(message.fields_by_name["value"])
    if name.startswith("google.protobuf."):
        return JSON_VALUES
    if depth <= 0:
        return st.just({}) | JSON_VALUES
    return document(message, depth - 1)


def document(descriptor: Descriptor, depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object for a message: any subset of its fields, by either spelling, maybe a stray."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        optional[field.name] = field_value(field, depth)
        if field.json_name != field.name:
            optional[field.json_name] = field_value(field, depth)
    typed = st.fixed_dictionaries({}, optional=optional)
    stray = st.tuples(typed, _TEXT, JSON_VALUES).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(*[typed] * 7, stray)


# -- URLs ------------------------------------------------------------------------------------------

_SEGMENT_TEXT = (
    KNOWN_ID
    | KNOWN_ID
    | st.uuids().map(str)
    | st.text(min_size=1, max_size=16).map(lambda text: quote(text, safe=""))
    | st.sampled_from(["%", "%zz", "%2F", "%00", "..", ".", "%C3%28", "a%2Fb", "-1", "0"])
)


@st.composite
def path(draw: st.DrawFn, template: PathTemplate) -> str:
    """A request path the template matches (percent-encoded), with fuzzed variable values."""
    parts: list[str] = []
    for segment in template.segments:
        if segment == ANY:
            parts.append(draw(_SEGMENT_TEXT))
        elif segment == REST:
            parts.extend(draw(st.lists(_SEGMENT_TEXT, max_size=3)))
        else:
            parts.append(segment)
    text = "/" + "/".join(parts)
    return f"{text}:{template.verb}" if template.verb is not None else text


def _query_names(descriptor: Descriptor, prefix: str = "", depth: int = 2) -> list[str]:
    names: list[str] = []
    for field in descriptor.fields:
        names.append(prefix + field.name)
        if field.json_name != field.name:
            names.append(prefix + field.json_name)
        if field.message_type is not None and not is_map(field) and depth > 0:
            names.extend(_query_names(field.message_type, f"{prefix}{field.name}.", depth - 1))
    return names


@st.composite
def query(draw: st.DrawFn, descriptor: Descriptor) -> str:
    """A query string naming the request's fields (dotted too), plus strays and raw garbage."""
    names = _query_names(descriptor) or ["x"]
    name = st.sampled_from(names) | st.sampled_from(["pretty", "", "a[0]", "x.y", "%zz"]) | _TEXT
    value = (
        st.text(max_size=20)
        | st.integers(-(2**65), 2**65).map(str)
        | st.sampled_from(["true", "NaN", "1.5s", "2024-01-31T12:00:00Z", "%", "%zz", "a,b"])
    )
    pairs = draw(st.lists(st.tuples(name, value, st.booleans()), max_size=5))
    parts = []
    for key, text, bare in pairs:
        quoted = quote(key, safe="%.[]")
        parts.append(quoted if bare and not text else f"{quoted}={quote(text, safe='%,')}")
    return "&".join(parts)


# -- protobuf --------------------------------------------------------------------------------------


_TIME_RANGES = {
    "google.protobuf.Timestamp": (253402300799, 0),
    "google.protobuf.Duration": (315576000000, -1),
}


@st.composite
def message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 2) -> Message:
    """A message of the type, fields set to valid protobuf values of any content.

    Timestamps and Durations are mostly within their documented ranges, and sometimes not (only
    a binary client can send those; the servicers must refuse them as field violations).
    """
    built = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name in _TIME_RANGES:
        seconds, nanos = _TIME_RANGES[descriptor.full_name]
        if draw(st.integers(0, 9)) == 0:  # out of range: nanos or seconds beyond the type's
            built.seconds = draw(st.integers(-(2**63), 2**63 - 1))
            built.nanos = draw(st.integers(-(2**31), 2**31 - 1))
            return built
        built.seconds = draw(st.integers(-seconds if nanos < 0 else -62135596800, seconds))
        built.nanos = draw(st.integers(0, 999_999_999)) if built.seconds >= 0 else 0
        return built
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        try:
            if is_map(field):
                _fill_map(draw, built, field)
            elif field.is_repeated:
                for _ in range(draw(st.integers(0, 2))):
                    _add(draw, built, field, depth)
            else:
                _set(draw, built, field, depth)
        except (ValueError, TypeError):
            continue  # a value protobuf itself refuses (e.g. a oneof's second member)
    return built


def _proto_scalar(draw: st.DrawFn, field: FieldDescriptor) -> Any:
    if field.enum_type is not None:
        if field.enum_type.is_closed:
            return draw(st.sampled_from([v.number for v in field.enum_type.values]))
        return draw(st.integers(-3, 2**31 - 1))
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return draw(st.booleans())
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return draw(st.binary(max_size=16))
        return draw(st.text(max_size=30) | st.uuids().map(str))
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        return draw(st.integers(low, high) | st.sampled_from([low, high, 0]))
    return draw(st.floats(width=32 if kind == FieldDescriptor.CPPTYPE_FLOAT else 64))


def _set(draw: st.DrawFn, built: Message, field: FieldDescriptor, depth: int) -> None:
    if field.message_type is None:
        setattr(built, field.name, _proto_scalar(draw, field))
        return
    target = getattr(built, field.name)
    if depth > 0:
        target.CopyFrom(draw(message(field.message_type, depth - 1)))
    else:
        target.SetInParent()


def _add(draw: st.DrawFn, built: Message, field: FieldDescriptor, depth: int) -> None:
    items = getattr(built, field.name)
    if field.message_type is None:
        items.append(_proto_scalar(draw, field))
    elif depth > 0:
        items.add().CopyFrom(draw(message(field.message_type, depth - 1)))
    else:
        items.add()


def _fill_map(draw: st.DrawFn, built: Message, field: FieldDescriptor) -> None:
    entry = field.message_type
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    items = getattr(built, field.name)
    for _ in range(draw(st.integers(0, 2))):
        key = _proto_scalar(draw, key_field)
        if value_field.message_type is None:
            items[key] = _proto_scalar(draw, value_field)
        else:
            items[key].SetInParent()


def frame(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">BI", flags, len(payload) if length is None else length) + payload


@st.composite
def framed_body(draw: st.DrawFn, descriptor: Descriptor) -> bytes:
    """A length-prefixed request body: well formed, or broken the ways clients break it."""
    valid = draw(message(descriptor)).SerializeToString()
    junk = draw(st.binary(max_size=40))
    return draw(
        st.sampled_from(
            [
                frame(valid),  # a good call (with odd values)
                frame(junk),  # a payload that is not the message
                junk,  # no framing at all
                frame(valid) + frame(valid),  # two messages
                frame(valid, length=len(valid) + 7),  # shorter than it says
                frame(valid, length=2**32 - 1),  # "4 GB"
                frame(valid, flags=1),  # compressed, nothing negotiated
                frame(valid, flags=draw(st.integers(2, 255))),  # flags no one defined
                frame(b"grpc-status: 0\r\n", flags=0x80),  # only a trailer frame
                b"",  # no message
                frame(valid)[:3],  # a cut prefix
            ]
        )
    )


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
