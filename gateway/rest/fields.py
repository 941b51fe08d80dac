"""Dotted field paths (`book.name`): resolving them against descriptors and assigning through them.

Names resolve by proto name or lowerCamel JSON name, as proto3 JSON parsers do. Resolution is
done at start-up for path variables and once per distinct query key (then cached), so a request
only walks `getattr` chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.rest.values import Converter, converter_for

_WELL_KNOWN = "google.protobuf."


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    # The stubs also admit upb's own Descriptor type; at run time both behave the same.
    return cast(Descriptor, message.DESCRIPTOR)


@cache
def fields_by_any_name(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        names[field.json_name] = field
    for field in descriptor.fields:
        names[field.name] = field  # a proto name wins over a coinciding json name
    return names


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@dataclass(frozen=True)
class FieldPath:
    """A resolved path; `names` are proto names, `text` is how it was written."""

    text: str
    names: tuple[str, ...]
    fields: tuple[FieldDescriptor, ...]

    @property
    def leaf(self) -> FieldDescriptor:
        return self.fields[-1]

    def container(self, message: Message) -> Any:
        """The message holding the leaf; intermediate messages come into being when written."""
        for name in self.names[:-1]:
            message = getattr(message, name)
        return message

    def get(self, message: Message) -> Any:
        holder: Any = message
        for field in self.fields[:-1]:
            if not holder.HasField(field.name):
                return None
            holder = getattr(holder, field.name)
        leaf = self.leaf
        if leaf.has_presence and not holder.HasField(leaf.name):
            return None
        value = getattr(holder, leaf.name)
        if not leaf.has_presence and value == leaf.default_value:
            return None  # implicit presence: the default means "not given"
        return value


def resolve(descriptor: Descriptor, text: str) -> FieldPath | None:
    """Resolves `a.b.c`; every step but the last must be a singular, non-map message."""
    names: list[str] = []
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in text.split("."):
        if current is None:
            return None
        field = fields_by_any_name(current).get(part)
        if field is None:
            return None
        names.append(field.name)
        fields.append(field)
        nested = field.message_type
        plain_message = nested is not None and not is_map(field)
        # Well-known types are set whole, from their text form (`when=2024-…Z`): through their
        # parts (`when.nanos=-1`) a client could build a Timestamp no converter accepts.
        well_known = nested is not None and nested.full_name.startswith(_WELL_KNOWN)
        steps_in = plain_message and not field.is_repeated and not well_known
        current = nested if steps_in else None
    return FieldPath(text, tuple(names), tuple(fields))


@dataclass(frozen=True)
class ScalarSetter:
    """Assigns text to a singular field: a scalar, an enum, or a well-known type read from text."""

    path: FieldPath
    convert: Converter

    def value(self, text: str) -> Any:
        return self.convert(text)

    def assign(self, message: Message, value: Any) -> None:
        container = self.path.container(message)
        leaf = self.path.leaf
        if isinstance(value, Message):
            getattr(container, leaf.name).CopyFrom(value)
        else:
            setattr(container, leaf.name, value)


def singular_setter(path: FieldPath, lenient_enums: bool) -> ScalarSetter | None:
    leaf = path.leaf
    if leaf.is_repeated:
        return None
    convert = converter_for(leaf, lenient_enums)
    return None if convert is None else ScalarSetter(path, convert)
