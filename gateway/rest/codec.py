"""JSON in and out: bodies parsed by json_format with BadRequest violations that name the field.

Output follows the architecture's Decision 2: proto field names, int64 as strings, enums by
name, unpopulated fields emitted (printer.py builds the document), compact unless asked. Input
takes proto and lowerCamel names and rejects unknown fields. json_format reports failures as
prose; on that (rare) path faults.py walks the document to find which field is at fault and
what it takes, so the happy path pays nothing for good error messages.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.rest import faults
from gateway.rest.enums import normalize_enums
from gateway.rest.fields import descriptor_of
from gateway.rest.status import RestError, bad_request

BODY = faults.BODY  # the violation field for faults of the document as a whole
MAX_DEPTH = faults.MAX_DEPTH


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


def load_json(body: bytes) -> Any:
    """Parses a request body; malformed JSON is a 400 that says where."""
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise _malformed(exc) from None
    except _DuplicateKey as exc:
        raise bad_request(BODY, f'duplicate key "{exc}" in the JSON body') from None
    except RecursionError:
        raise bad_request(BODY, "JSON nesting is too deep") from None
    except UnicodeDecodeError:
        raise bad_request(BODY, "the body is not valid UTF-8") from None


def load_json_sequence(body: bytes) -> list[Any]:
    """A client stream: newline-delimited (or concatenated) JSON objects, or one JSON array."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(BODY, "the body is not valid UTF-8") from None
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    items: list[Any] = []
    position, end = 0, len(text)
    try:
        while True:
            while position < end and text[position] in " \t\r\n":
                position += 1
            if position == end:
                break
            item, position = decoder.raw_decode(text, position)
            items.append(item)
    except json.JSONDecodeError as exc:
        raise _malformed(exc) from None
    except _DuplicateKey as exc:
        raise bad_request(BODY, f'duplicate key "{exc}" in the JSON body') from None
    except RecursionError:
        raise bad_request(BODY, "JSON nesting is too deep") from None
    if len(items) == 1 and isinstance(items[0], list):
        return items[0]
    return items


def _malformed(exc: json.JSONDecodeError) -> RestError:
    return bad_request(
        BODY, f"malformed JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
    )


def parse_into(
    document: Any, message: Message, field: FieldDescriptor | None, lenient_enums: bool
) -> None:
    """Merges a JSON body into `message`, or into its top-level `field` when the body is one."""
    if field is None:
        if not isinstance(document, dict):
            raise bad_request(BODY, "the body must be a JSON object")
        wrapped = document
    else:
        wrapped = {field.name: document}
    descriptor = descriptor_of(message)
    if lenient_enums:
        normalize_enums(wrapped, descriptor)
    try:
        json_format.ParseDict(wrapped, message, max_recursion_depth=MAX_DEPTH)
    except json_format.ParseError as exc:
        if "too deep" in str(exc):
            raise bad_request(
                BODY, f"JSON nesting is too deep (more than {MAX_DEPTH} levels)"
            ) from None
        where, why = faults.locate(wrapped, descriptor, "", exc)
        raise bad_request(where, why) from None


# -- output ----------------------------------------------------------------------------------


# Built once: json.dumps() with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_PRETTY = json.JSONEncoder(ensure_ascii=False, indent=2)


def dumps(value: Any, pretty: bool = False) -> bytes:
    """UTF-8 JSON; compact unless asked (compact output never contains a raw newline)."""
    return (_PRETTY if pretty else _COMPACT).encode(value).encode()


# What line readers other than "split at \n" also take for line breaks (Python's splitlines,
# and so httpx's iter_lines; JavaScript's old line terminators), which JSON leaves raw in
# strings. Control characters below 0x20 are escaped by the encoder already.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def dumps_line(value: Any) -> bytes:
    """Compact UTF-8 JSON that every line reader reads as one line: `dumps`, with U+0085,
    U+2028 and U+2029 escaped (the same string to any JSON parser)."""
    text = _COMPACT.encode(value)
    if not text.isascii():
        text = text.translate(_LINE_BREAKS)
    return text.encode()
