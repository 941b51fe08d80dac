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


def dict_of(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)
