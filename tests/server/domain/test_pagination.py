"""Page sizes and page tokens: round trips, and garbage refused as INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from server.domain import pagination
from server.domain.errors import InvalidArgument
from server.domain.pagination import PagePosition, decode_page_token, encode_page_token

QUERY = pagination.fingerprint("environments")
POSITION = PagePosition(datetime(2025, 5, 4, 3, 2, 1, 123456, tzinfo=UTC), uuid.uuid4())


def _refused(token: str, query: str = QUERY) -> str:
    with pytest.raises(InvalidArgument) as raised:
        decode_page_token(token, query)
    assert [v.field for v in raised.value.violations] == ["page_token"]
    return raised.value.message


def test_round_trip_keeps_microseconds() -> None:
    token = encode_page_token(POSITION, QUERY)
    assert decode_page_token(token, QUERY) == POSITION
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_empty_token_is_the_first_page() -> None:
    assert decode_page_token("", QUERY) is None


def test_garbage_and_tampering_are_refused() -> None:
    token = encode_page_token(POSITION, QUERY)
    for bad in (
        "x",
        "!!!!",
        token[:-2],
        token[:10],
        "A" * 40,
        token.replace(token[12], "Z" if token[12] != "Z" else "Y", 1),
    ):
        _refused(bad)


def test_a_token_of_another_query_is_refused() -> None:
    token = encode_page_token(POSITION, pagination.fingerprint("api_keys", "not_revoked"))
    assert "different query" in _refused(token)


def test_a_token_of_another_version_is_refused() -> None:
    body = json.dumps([2, QUERY, POSITION.create_time.isoformat(), str(POSITION.id)]).encode()
    check = pagination._check(body)
    token = base64.urlsafe_b64encode(check + body).rstrip(b"=").decode()
    assert "version" in _refused(token)


def test_page_sizes() -> None:
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE == 50
    assert pagination.page_size(7) == 7
    assert pagination.page_size(1000) == 1000
    assert pagination.page_size(5000) == pagination.MAX_PAGE_SIZE == 1000
    with pytest.raises(InvalidArgument) as raised:
        pagination.page_size(-1)
    assert [v.field for v in raised.value.violations] == ["page_size"]


def test_page_of_emits_a_token_only_when_more_rows_exist() -> None:
    rows = [PagePosition(POSITION.create_time, uuid.uuid4()) for _ in range(4)]
    full = pagination.page_of(rows, 3, lambda row: row, QUERY)
    assert full.items == tuple(rows[:3])
    assert decode_page_token(full.next_page_token, QUERY) == rows[2]
    last = pagination.page_of(rows[:3], 3, lambda row: row, QUERY)
    assert last.next_page_token == ""
