"""Protobuf descriptors → JSON Schema (OpenAPI 3.1) as the REST transcoder reads and writes them.

The mapping is the one printer.py writes and codec.py reads: proto field names, 64-bit integers
as strings, enums by exact name, well-known types in their JSON forms (Timestamp and Duration and
FieldMask as strings, Struct/Value as any JSON, wrappers as their value or null), maps as objects,
oneof members as optional properties of which at most one is set. Every message becomes one
component under `components/schemas`, named by its full name, so recursive types are `$ref`s.
`google.api.field_behavior` makes REQUIRED fields required, OUTPUT_ONLY ones readOnly and
INPUT_ONLY ones writeOnly; an update's body is a variant with nothing required. Comments come
from a {full name: text} map (see comments.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from google.api import field_behavior_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

Schema = dict[str, Any]

REF_PREFIX = "#/components/schemas/"
UPDATE_SUFFIX = "-Update"
_WELL_KNOWN = "google.protobuf."
_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
_UNSIGNED64 = frozenset({FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64})
_INT32 = frozenset(
    {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
)
_UINT32 = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32})
_DURATION_PATTERN = r"^-?[0-9]+(\.[0-9]{1,9})?s$"

# Well-known types written as something other than an object of their fields.
_SPECIAL: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, e.g. 2026-01-02T03:04:05.678Z.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": _DURATION_PATTERN,
        "description": 'Seconds with up to nine fractional digits and an "s", e.g. "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated field paths, e.g. "name,labels".',
    },
    "google.protobuf.Struct": {"type": "object", "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "description": "Any JSON array."},
    "google.protobuf.Empty": {"type": "object", "properties": {}, "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "description": "A message of the type its @type URL names, with that type's fields.",
    },
}
_WRAPPERS: dict[str, Schema] = {
    "google.protobuf.DoubleValue": {"type": ["number", "null"], "format": "double"},
    "google.protobuf.FloatValue": {"type": ["number", "null"], "format": "float"},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "uint32"},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}


def ref(name: str) -> Schema:
    return {"$ref": REF_PREFIX + name}


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def behaviors(field: FieldDescriptor) -> set[int]:
    options: Any = field.GetOptions()
    return set(options.Extensions[field_behavior_pb2.field_behavior])  # repeated: no HasExtension


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in behaviors(field)


class SchemaSet:
    """The components of one document: each message and enum used, written once."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.components: dict[str, Schema] = {}

    def message(self, descriptor: Descriptor) -> Schema:
        """A schema for a value of this message type: a `$ref`, or inline for special types."""
        full_name = descriptor.full_name
        if full_name in _SPECIAL:
            return dict(_SPECIAL[full_name])
        if full_name in _WRAPPERS:
            return dict(_WRAPPERS[full_name])
        if full_name not in self.components:
            self.components[full_name] = {}  # placeholder first: recursion meets a $ref
            self.components[full_name] = self._object(descriptor)
        return ref(full_name)

    def update(self, descriptor: Descriptor) -> Schema:
        """The message as an update's body: its schema with no field required, since an update
        mask may name only some (JSON Schema cannot take `required` off a `$ref`). Its component
        is `<full name>-Update`; "-" is in no proto name, so it never meets a message's own."""
        whole = self.message(descriptor)
        if "$ref" not in whole or "required" not in self.components[descriptor.full_name]:
            return whole  # a well-known type, written inline, or one that requires nothing
        name = descriptor.full_name + UPDATE_SUFFIX
        if name not in self.components:
            schema = copy.deepcopy(self.components[descriptor.full_name])
            schema.pop("required", None)
            note = "As an update's body: no field is required (the operation says which it writes)."
            schema["description"] = "\n\n".join(filter(None, [schema.get("description"), note]))
            self.components[name] = schema
        return ref(name)

    def enum(self, descriptor: EnumDescriptor) -> Schema:
        full_name = descriptor.full_name
        if full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if full_name not in self.components:
            names = [value.name for value in descriptor.values]
            schema: Schema = {"type": "string", "enum": names}
            described = [
                f"- `{value.name}`: {self.comments[f'{full_name}.{value.name}']}"
                for value in descriptor.values
                if f"{full_name}.{value.name}" in self.comments
            ]
            text = "\n".join(filter(None, [self.comments.get(full_name, ""), *described]))
            if text:
                schema["description"] = text
            self.components[full_name] = schema
        return ref(full_name)

    def field(self, field: FieldDescriptor) -> Schema:
        """The JSON value of a field: its list, map or single value, with its behaviours."""
        if is_map(field):
            entry = field.message_type
            assert entry is not None
            schema: Schema = {
                "type": "object",
                "additionalProperties": self.single(entry.fields_by_name["value"]),
            }
            key = entry.fields_by_name["key"]
            if key.type == FieldDescriptor.TYPE_BOOL:
                schema["propertyNames"] = {"enum": ["true", "false"]}
            elif key.cpp_type != FieldDescriptor.CPPTYPE_STRING:
                schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.single(field)}
        else:
            schema = self.single(field)
        marks = behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in marks:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in marks:
            schema["writeOnly"] = True
        if field_behavior_pb2.IMMUTABLE in marks:
            schema["x-immutable"] = True
        text = self.comments.get(field.full_name)
        if text:
            schema = _described(schema, text)
        return schema

    def single(self, field: FieldDescriptor) -> Schema:
        """One value of the field's type (an element, for a repeated field)."""
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return scalar(field)

    def _object(self, descriptor: Descriptor) -> Schema:
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in descriptor.fields:
            properties[field.name] = self.field(field)
            if is_required(field):
                required.append(field.name)
        schema: Schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        text = self.comments.get(descriptor.full_name, "")
        oneofs = [
            f"At most one of {', '.join(f'`{f.name}`' for f in oneof.fields)} is set "
            f"(oneof `{oneof.name}`)."
            for oneof in descriptor.oneofs
            if len(oneof.fields) > 1
        ]
        text = "\n\n".join(filter(None, [text, *oneofs]))
        if text:
            schema["description"] = text
        return schema


def scalar(field: FieldDescriptor) -> Schema:
    kind = field.type
    if kind in _INT64:
        unsigned = kind in _UNSIGNED64
        return {
            "type": "string",
            "format": "uint64" if unsigned else "int64",
            "pattern": "^[0-9]+$" if unsigned else "^-?[0-9]+$",
        }
    if kind in _INT32:
        return {"type": "integer", "format": "int32"}
    if kind in _UINT32:
        return {"type": "integer", "format": "uint32", "minimum": 0}
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if kind == FieldDescriptor.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


def _described(schema: Schema, text: str) -> Schema:
    # Beside a $ref, 3.1 allows description; it overrides the referenced schema's own.
    return {**schema, "description": text}
