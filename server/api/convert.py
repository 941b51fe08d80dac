"""Conversions every servicer shares: ids, timestamps and JSON objects between proto and domain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

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


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    """A timedelta on the wire; None stays unset."""
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def datetime_of(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as an aware datetime; one outside Timestamp's own range (nanos outside
    0..999,999,999, or beyond years 1..9999), which only a binary client can send, is a field
    violation naming `field`."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid timestamp",
            [
                FieldViolation(
                    field,
                    f"seconds {stamp.seconds} and nanos {stamp.nanos} are outside the range of "
                    "a timestamp (nanos 0 to 999999999, years 1 to 9999)",
                )
            ],
        ) from None


_MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's own range: ±10,000 years


def timedelta_of(duration: duration_pb2.Duration, field: str) -> timedelta:
    """A Duration as a timedelta; one outside Duration's own range (or with nanos of the other
    sign than its seconds), which only a binary client can send, is a field violation."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        abs(seconds) > _MAX_DURATION_SECONDS
        or abs(nanos) >= 1_000_000_000
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgument(
            f"{field} is not a valid duration",
            [FieldViolation(field, f"{field.rsplit('.', 1)[-1]} is not a valid Duration")],
        )
    try:
        return duration.ToTimedelta()
    except OverflowError:  # beyond what a timedelta holds (±999,999,999 days)
        raise InvalidArgument(
            f"{field} is too long", [FieldViolation(field, "the duration is too long")]
        ) from None


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
