"""Query string → request fields, for every field neither the path nor the body binds.

Form bodies (see form.py) are read by the same decoder, so a name means the same in both. Names
are dotted field paths by proto or lowerCamel name (`sub.page_size`, `sub.pageSize`); a
repeated field repeats its key; maps use grpc-gateway's `labels[key]=value`. Unknown names are
ignored (grpc-gateway's behaviour), or refused with a 400 in strict mode. Every bad parameter
is reported in one BadRequest, each under the name the client wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from gateway.rest.fields import FieldPath, is_map, resolve
from gateway.rest.status import RestError, bad_request
from gateway.rest.values import Converter, converter_for

MAX_QUERY_PARAMETERS = 256  # also bounds the pairs of a form body

# Bounded by the schema (each field has at most two spellings per level), never by the client:
# names that do not resolve are not cached.
_CACHE_LIMIT = 4096

_SINGULAR, _REPEATED, _MAP = "singular", "repeated", "map"


@dataclass(frozen=True)
class _Param:
    path: FieldPath
    kind: str
    convert: Converter | None
    key_convert: Converter | None = None
    # Bound by the path or the body: the query may not set it.
    bound: bool = False
    # A field the query cannot set (a plain message, a repeated message, a map without a key).
    refusal: str | None = None


def parse_pairs(data: bytes, *, field: str, what: str) -> list[tuple[str, str]]:
    """The name=value pairs of a query string or a form body ("query", "form" in errors)."""
    try:
        return parse_qsl(
            data.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_QUERY_PARAMETERS,
        )
    except UnicodeDecodeError:
        raise bad_request(field, f"the {what} parameters are not valid UTF-8") from None
    except ValueError:
        raise bad_request(field, f"more than {MAX_QUERY_PARAMETERS} {what} parameters") from None


class QueryDecoder:
    def __init__(
        self,
        descriptor: Descriptor,
        *,
        bound: Iterable[tuple[str, ...]],
        lenient_enums: bool,
        strict: bool,
    ) -> None:
        self._descriptor = descriptor
        self._bound = frozenset(bound)
        self._lenient = lenient_enums
        self._strict = strict
        self._cache: dict[str, _Param | None] = {}

    def apply(self, message: Message, pairs: Sequence[tuple[str, str]]) -> None:
        violations: list[tuple[str, str]] = []
        seen: set[tuple[str, ...]] = set()
        oneofs: dict[tuple[tuple[str, ...], str], str] = {}
        for name, text in pairs:
            param, map_key = self._param(name)
            if param is None:
                if self._strict:
                    violations.append((name, f'unknown query parameter "{name}"'))
                continue
            if param.bound:
                if self._strict:
                    violations.append((name, f'"{name}" is already bound by the path or body'))
                continue
            if param.refusal is not None:
                violations.append((name, param.refusal))
                continue
            try:
                problem = self._assign(message, param, map_key, text, seen, oneofs)
            except (ValueError, TypeError) as exc:
                problem = str(exc)
            if problem is not None:
                violations.append((name, problem))
        if violations:
            summary = violations[0][1] if len(violations) == 1 else "invalid query parameters"
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, summary, violations=violations)

    def _assign(
        self,
        message: Message,
        param: _Param,
        map_key: str | None,
        text: str,
        seen: set[tuple[str, ...]],
        oneofs: dict[tuple[tuple[str, ...], str], str],
    ) -> str | None:
        assert param.convert is not None
        value = param.convert(text)
        path = param.path
        leaf = path.leaf
        container: Any = path.container(message)
        if param.kind == _SINGULAR:
            if path.names in seen:
                return "given more than once"
            seen.add(path.names)
            if leaf.containing_oneof is not None:
                slot = (path.names[:-1], leaf.containing_oneof.name)
                other = oneofs.setdefault(slot, leaf.name)
                if other != leaf.name:
                    return f"sets {leaf.name} and {other} of oneof {slot[1]} together"
            if isinstance(value, Message):
                getattr(container, leaf.name).CopyFrom(value)
            else:
                setattr(container, leaf.name, value)
        elif param.kind == _REPEATED:
            items = getattr(container, leaf.name)
            if isinstance(value, Message):
                items.add().CopyFrom(value)
            else:
                items.append(value)
        else:
            assert param.key_convert is not None
            assert map_key is not None
            entries = getattr(container, leaf.name)
            key = param.key_convert(map_key)
            if isinstance(value, Message):
                entries[key].CopyFrom(value)
            else:
                entries[key] = value
        return None

    def _param(self, name: str) -> tuple[_Param | None, str | None]:
        base, map_key = name, None
        if name.endswith("]"):
            opening = name.find("[")
            if opening > 0:
                base, map_key = name[:opening], name[opening + 1 : -1]
        try:
            param = self._cache[base]
        except KeyError:
            param = self._resolve(base)
            if param is not None and len(self._cache) < _CACHE_LIMIT:
                self._cache[base] = param
        if param is None:
            return None, None
        if param.kind == _MAP:
            if map_key is None and param.refusal is None:
                return _refused(param, f'"{base}" is a map; set entries as {base}[key]=value'), None
            return param, map_key
        if map_key is not None:
            return None, None  # brackets on a field that is not a map: not a name we know
        return param, None

    def _resolve(self, base: str) -> _Param | None:
        path = resolve(self._descriptor, base)
        if path is None:
            return None
        bound = any(path.names[:depth] in self._bound for depth in range(1, len(path.names) + 1))
        leaf = path.leaf
        if is_map(leaf):
            entry = leaf.message_type
            assert entry is not None
            convert = converter_for(entry.fields_by_name["value"], self._lenient)
            key_convert = converter_for(entry.fields_by_name["key"], self._lenient)
            refusal = None if convert else f'"{base}" holds messages, which the query cannot set'
            return _Param(path, _MAP, convert, key_convert, bound, refusal)
        convert = converter_for(leaf, self._lenient)
        kind = _REPEATED if leaf.is_repeated else _SINGULAR
        refusal = None
        if convert is None:
            refusal = (
                f'"{base}" is a list of messages, which the query cannot set'
                if leaf.is_repeated
                else f'"{base}" is a message; set its fields, e.g. {base}.<field>=value'
            )
        return _Param(path, kind, convert, None, bound, refusal)


def _refused(param: _Param, why: str) -> _Param:
    return _Param(param.path, param.kind, param.convert, param.key_convert, param.bound, why)
