"""Enum values by name, by number and, when lenient, case-insensitively and without type prefix.

AIP style prefixes every value with its type (`STATE_RUNNING` in `enum State`), which REST users
find noisy; lenient matching also takes `running` or `Running`. Exact names always win, so a
lenient spelling can never change what an exact spelling means. The JSON side rewrites lenient
spellings to exact names before json_format sees the document, guided by a per-message plan
computed once that says where enums can occur at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WELL_KNOWN_PACKAGE = "google.protobuf."


@dataclass(frozen=True)
class EnumTable:
    full_name: str
    names: dict[str, int]
    lenient: dict[str, str]  # lower-case spelling -> exact name
    by_number: dict[int, str]
    closed: bool

    def number(self, text: str, lenient: bool) -> int | None:
        """The value's number for a name or a decimal number, None if it is not a value."""
        number = self.names.get(text)
        if number is not None:
            return number
        if lenient:
            name = self.lenient.get(text.lower())
            if name is not None:
                return self.names[name]
        try:
            number = int(text)
        except ValueError:
            return None
        # Open (proto3) enums keep unknown numbers, as the binary format does.
        return number if number in self.by_number or not self.closed else None

    def exact_name(self, text: str) -> str | None:
        """The exact name a lenient spelling stands for."""
        if text in self.names:
            return text
        return self.lenient.get(text.lower())

    def describe_values(self) -> str:
        return ", ".join(self.names)


@cache
def enum_table(descriptor: EnumDescriptor) -> EnumTable:
    names = {value.name: value.number for value in descriptor.values}
    prefix = _CAMEL_BOUNDARY.sub("_", descriptor.name).upper() + "_"
    lenient: dict[str, str] = {name.lower(): name for name in names}
    for name in names:
        if name.startswith(prefix) and len(name) > len(prefix):
            lenient.setdefault(name[len(prefix) :].lower(), name)
    return EnumTable(
        full_name=descriptor.full_name,
        names=names,
        lenient=lenient,
        by_number={value.number: value.name for value in reversed(descriptor.values)},
        closed=descriptor.is_closed,
    )


def invalid_enum_message(table: EnumTable, value: object) -> str:
    expected = table.describe_values()
    shown = json.dumps(value) if isinstance(value, str | int | float) else repr(value)
    return f"invalid value {shown} for enum {table.full_name}; expected one of {expected}"


# -- JSON ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FieldPlan:
    field: FieldDescriptor
    enum: EnumTable | None  # the field (or its map value / list items) is this enum
    message: Descriptor | None  # ... or a message that may hold enums


def normalize_enums(document: Any, descriptor: Descriptor) -> None:
    """Rewrites lenient enum spellings in a parsed JSON object to exact names, in place."""
    plan = _plan(descriptor)
    if plan and isinstance(document, dict):
        _normalize(document, plan)


def _normalize(document: dict[str, Any], plan: dict[str, _FieldPlan]) -> None:
    for key, value in document.items():
        entry = plan.get(key)
        if entry is None or value is None:
            continue
        field = entry.field
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if isinstance(value, dict):
                for map_key, item in value.items():
                    value[map_key] = _one(item, entry)
        elif field.is_repeated:
            if isinstance(value, list):
                value[:] = [_one(item, entry) for item in value]
        else:
            document[key] = _one(value, entry)


def _one(value: Any, entry: _FieldPlan) -> Any:
    if entry.enum is not None:
        if isinstance(value, str):
            return entry.enum.exact_name(value) or value
        return value
    if entry.message is not None and isinstance(value, dict):
        _normalize(value, _plan(entry.message))
    return value


@cache
def _plan(descriptor: Descriptor) -> dict[str, _FieldPlan]:
    """JSON key (proto and json name) -> how to find enums under it; empty if there are none."""
    plan: dict[str, _FieldPlan] = {}
    for field in descriptor.fields:
        target = field
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = field.message_type.fields_by_name["value"]
        entry: _FieldPlan | None = None
        if target.enum_type is not None and not _well_known(target.enum_type.full_name):
            entry = _FieldPlan(field, enum_table(target.enum_type), None)
        elif target.message_type is not None and _holds_enums(target.message_type):
            entry = _FieldPlan(field, None, target.message_type)
        if entry is not None:
            plan[field.name] = plan[field.json_name] = entry
    return plan


def _holds_enums(descriptor: Descriptor) -> bool:
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in seen or _well_known(current.full_name):
            continue
        seen.add(current.full_name)
        for field in current.fields:
            if field.enum_type is not None and not _well_known(field.enum_type.full_name):
                return True
            if field.message_type is not None:
                pending.append(field.message_type)
    return False


def _well_known(full_name: str) -> bool:
    # Struct's NullValue and the like have their own JSON forms; Any's contents are opaque here.
    return full_name.startswith(_WELL_KNOWN_PACKAGE)
