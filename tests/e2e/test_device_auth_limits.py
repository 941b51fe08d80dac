"""The device endpoints' RFC 6749 errors for requests the gateway refuses before the call."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import Roz, RozFactory

LIMIT = 2048


@pytest.fixture(scope="module")
def small(roz_factory: RozFactory) -> Roz:
    return roz_factory(max_body_bytes=LIMIT, rate_limit_rps=100_000.0, rate_limit_burst=100_000)


@pytest.fixture
def http(small: Roz) -> Iterator[httpx.Client]:
    with small.rest() as client:
        yield client


@pytest.mark.parametrize("path", ["/api/v1/device/code", "/api/v1/device/token"])
def test_an_oversized_body_is_invalid_request_not_slow_down(http: httpx.Client, path: str) -> None:
    response = http.post(path, json={"client_name": "x" * LIMIT})
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"
    assert str(LIMIT) in response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"


def test_a_gzip_bomb_is_invalid_request_413(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (LIMIT * 100))
    assert len(bomb) < LIMIT
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = http.post("/api/v1/device/code", content=bomb, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"


def test_an_unsupported_content_encoding_is_invalid_request_415(http: httpx.Client) -> None:
    headers = {"content-type": "application/json", "content-encoding": "br"}
    response = http.post("/api/v1/device/code", content=b"\x0b\x01\x80{}\x03", headers=headers)
    assert response.status_code == 415
    assert response.json()["error"] == "invalid_request"
    assert response.headers["accept-encoding"] == "gzip, identity"
