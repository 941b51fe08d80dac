"""Page sizes and opaque keyset page tokens shared by every List RPC.

A token names the last row of the previous page by (create_time, id), the order every list uses,
so pages stay stable while rows are inserted. It is base64url of a checksum, a version, the
query's fingerprint and that position. The checksum is not a signature: a forged token can only
move the window within rows the caller may already read (the database scopes every query to its
tenant), so its job is to turn garbage, truncation and tokens of another query into a clean
INVALID_ARGUMENT instead of a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

from server.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
TOKEN_VERSION = 1
_CHECK_BYTES = 8

T = TypeVar("T")


@dataclass(frozen=True)
class PagePosition:
    """The last row of a page, in the (create_time DESC, id DESC) order of every list."""

    create_time: datetime
    id: UUID


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    # Empty on the last page.
    next_page_token: str


def page_size(requested: int) -> int:
    """0 means the default; larger than the maximum is clamped, as AIP-158 suggests."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            [FieldViolation("page_size", "page_size must be 0 (the default) or positive")],
        )
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(query: str, *filters: str) -> str:
    """Names one query (resource and filters) so a token is refused by any other."""
    material = json.dumps([query, *filters], separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(material).hexdigest()[:16]


def encode_page_token(position: PagePosition, query_fingerprint: str) -> str:
    body = json.dumps(
        [TOKEN_VERSION, query_fingerprint, position.create_time.isoformat(), str(position.id)],
        separators=(",", ":"),
    ).encode("utf-8")
    return base64.urlsafe_b64encode(_check(body) + body).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, query_fingerprint: str) -> PagePosition | None:
    """The position a token names; an empty token is the first page (None)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("page_token is not a token this server issued") from None
    check, body = raw[:_CHECK_BYTES], raw[_CHECK_BYTES:]
    if len(check) != _CHECK_BYTES or check != _check(body):
        raise _invalid("page_token is not a token this server issued")
    try:
        version, token_fingerprint, create_time, row_id = json.loads(body)
    except (ValueError, TypeError):
        raise _invalid("page_token is not a token this server issued") from None
    if version != TOKEN_VERSION:
        raise _invalid("page_token comes from another version of this server; list again")
    if token_fingerprint != query_fingerprint:
        raise _invalid("page_token belongs to a different query")
    try:
        position = PagePosition(datetime.fromisoformat(create_time), UUID(row_id))
    except (ValueError, TypeError, AttributeError):
        raise _invalid("page_token is not a token this server issued") from None
    if position.create_time.tzinfo is None:
        raise _invalid("page_token is not a token this server issued")
    return position


def encode_sequence_token(sequence: int, query_fingerprint: str) -> str:
    """A token for a list ordered by a sequence number instead (the audit trail): the last
    sequence of the page."""
    body = json.dumps(
        [TOKEN_VERSION, query_fingerprint, "sequence", sequence], separators=(",", ":")
    ).encode("utf-8")
    return base64.urlsafe_b64encode(_check(body) + body).rstrip(b"=").decode("ascii")


def decode_sequence_token(token: str, query_fingerprint: str) -> int | None:
    """The sequence a token of `encode_sequence_token` names; an empty token is the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("page_token is not a token this server issued") from None
    check, body = raw[:_CHECK_BYTES], raw[_CHECK_BYTES:]
    if len(check) != _CHECK_BYTES or check != _check(body):
        raise _invalid("page_token is not a token this server issued")
    try:
        version, token_fingerprint, marker, sequence = json.loads(body)
    except (ValueError, TypeError):
        raise _invalid("page_token is not a token this server issued") from None
    if version != TOKEN_VERSION:
        raise _invalid("page_token comes from another version of this server; list again")
    if token_fingerprint != query_fingerprint:
        raise _invalid("page_token belongs to a different query")
    if marker != "sequence" or type(sequence) is not int or sequence < 0:
        raise _invalid("page_token is not a token this server issued")
    return sequence


def page_of(
    rows: Sequence[T], size: int, position_of: Callable[[T], PagePosition], query_fingerprint: str
) -> Page[T]:
    """A page from up to size + 1 rows: the extra row only says that another page exists."""
    if len(rows) <= size:
        return Page(items=tuple(rows), next_page_token="")
    items = tuple(rows[:size])
    return Page(
        items=items, next_page_token=encode_page_token(position_of(items[-1]), query_fingerprint)
    )


def _check(body: bytes) -> bytes:
    return hashlib.sha256(b"roz.page_token\x00" + body).digest()[:_CHECK_BYTES]


def _invalid(description: str) -> InvalidArgument:
    return InvalidArgument(description, [FieldViolation("page_token", description)])
