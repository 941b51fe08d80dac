"""The fuzz tier: one real roz server, fuzzed over REST, gRPC-web and native gRPC.

Bounded for CI: each batch (a route, a method) runs a few deterministic examples. Set
ROZ_FUZZ_EXAMPLES to run more of them locally (e.g. ROZ_FUZZ_EXAMPLES=500); the examples are
then still derandomized, so a failure found there reproduces with the same number.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings

from tests.e2e.conftest import Roz, postgres, roz_servers

__all__ = ["postgres"]  # the e2e tier's PostgreSQL, on which this tier's one server runs

_OVERRIDE = os.environ.get("ROZ_FUZZ_EXAMPLES")


def examples(default: int) -> int:
    """How many examples a batch runs: `default`, or ROZ_FUZZ_EXAMPLES when it is set."""
    return int(_OVERRIDE) if _OVERRIDE else default


def fuzz_settings(default: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="session")
def fuzzed(postgres: Callable[[], str]) -> Iterator[Roz]:
    """The tier's server; rate limits out of the way so every request reaches the code."""
    with roz_servers(postgres) as start:
        yield start(rate_limit_rps=1_000_000.0, rate_limit_burst=1_000_000)


def assert_healthy(roz: Roz) -> None:
    """The server still answers health checks on all three protocols."""
    assert httpx.get(roz.url + "/health", timeout=10).status_code == 200
    with roz.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    payload = health_pb2.HealthCheckRequest().SerializeToString()
    response = httpx.post(
        roz.url + "/grpc.health.v1.Health/Check",
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={"content-type": "application/grpc-web+proto"},
        timeout=10,
    )
    assert response.status_code == 200
    assert b"grpc-status:0" in response.content.replace(b" ", b"")
