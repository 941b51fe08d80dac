"""Conversions every servicer shares: ids, timestamps and JSON objects between proto and domain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from server.domain.errors import FieldViolation, InvalidArgument


def parse_id(value: str, field: str = "id") -> UUID:
    """A resource id from the wire; a malformed one is the client's mistake, not a lookup miss."""
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a UUID", [FieldViolation(field, f"{value[:64]!r} is not a UUID")]
        ) from None


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def datetime_of(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def struct_of(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(value, struct)
    return struct


def dict_of(struct: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A Struct as a plain dict; `field` names it in violations (e.g. "environment.config")."""
    return {key: plain_value(value, f"{field}.{key}") for key, value in struct.fields.items()}


def plain_value(value: struct_pb2.Value, field: str) -> Any:
    """A Struct value as plain Python, NaN and infinities kept for the domain to refuse by name.

    (json_format refuses to convert a NaN at all, which would make it a server error.)
    """
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: plain_value(v, f"{field}.{k}") for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [plain_value(v, f"{field}[{i}]") for i, v in enumerate(value.list_value.values)]
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    raise InvalidArgument("a value is not set", [FieldViolation(field, "a value must be set")])
