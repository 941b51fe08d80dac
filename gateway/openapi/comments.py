"""Proto comments by full name, read from a descriptor set that kept its source info.

protoc's Python generator drops SourceCodeInfo from the descriptors it embeds, so the comments
of `.proto` files reach run time only through a descriptor set built with source info (buf
build keeps it). The result maps "pkg.Message", "pkg.Message.field", "pkg.Enum.VALUE",
"pkg.Service" and "pkg.Service.Method" to their leading comment, trimmed.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2

# FileDescriptorProto / DescriptorProto / ... field numbers that SourceCodeInfo paths walk.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def read_comments(descriptor_set: bytes, *, packages: Iterable[str] = ()) -> dict[str, str]:
    """Leading comments of the files in `descriptor_set` (only `packages`, if named)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
    wanted = tuple(packages)
    found: dict[str, str] = {}
    for file in files:
        if wanted and file.package not in wanted:
            continue
        for location in file.source_code_info.location:
            text = _clean(location.leading_comments)
            if not text:
                continue
            name = _name_at(file, list(location.path))
            if name is not None:
                found[name] = text
    return found


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def _name_at(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str | None:
    prefix = f"{file.package}." if file.package else ""
    if len(path) < 2:
        return None
    kind, index, rest = path[0], path[1], path[2:]
    if kind == _FILE_MESSAGE and index < len(file.message_type):
        return _in_message(file.message_type[index], prefix, rest)
    if kind == _FILE_ENUM and index < len(file.enum_type):
        return _in_enum(file.enum_type[index], prefix, rest)
    if kind == _FILE_SERVICE and index < len(file.service):
        service = file.service[index]
        name = prefix + service.name
        if not rest:
            return name
        if len(rest) == 2 and rest[0] == _SERVICE_METHOD and rest[1] < len(service.method):
            return f"{name}.{service.method[rest[1]].name}"
    return None


def _in_message(
    message: descriptor_pb2.DescriptorProto, prefix: str, path: list[int]
) -> str | None:
    name = prefix + message.name
    if not path:
        return name
    if len(path) < 2:
        return None
    kind, index, rest = path[0], path[1], path[2:]
    if kind == _MESSAGE_FIELD and index < len(message.field) and not rest:
        return f"{name}.{message.field[index].name}"
    if kind == _MESSAGE_ONEOF and index < len(message.oneof_decl) and not rest:
        return f"{name}.{message.oneof_decl[index].name}"
    if kind == _MESSAGE_NESTED and index < len(message.nested_type):
        return _in_message(message.nested_type[index], name + ".", rest)
    if kind == _MESSAGE_ENUM and index < len(message.enum_type):
        return _in_enum(message.enum_type[index], name + ".", rest)
    return None


def _in_enum(enum: descriptor_pb2.EnumDescriptorProto, prefix: str, path: list[int]) -> str | None:
    name = prefix + enum.name
    if not path:
        return name
    if len(path) == 2 and path[0] == _ENUM_VALUE and path[1] < len(enum.value):
        # Keyed under their enum ("pkg.Enum.VALUE"), though proto scopes them beside it.
        return f"{name}.{enum.value[path[1]].name}"
    return None
