"""Health over REST and gRPC reflects whether the database really answers."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import AsyncConnection, sql

from tests.e2e.conftest import Roz, RozFactory

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def eventually(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.1)


async def cut_off_request_role(roz: Roz, allowed: bool) -> None:
    """What a lost database looks like to the server: its request role cannot connect."""
    role = roz.app.database.app_role
    async with await AsyncConnection.connect(roz.app.database.owner_dsn, autocommit=True) as conn:
        login = sql.SQL("LOGIN" if allowed else "NOLOGIN")
        await conn.execute(sql.SQL("ALTER ROLE {} ").format(sql.Identifier(role)) + login)
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )


@pytest.fixture
def fragile(roz_factory: RozFactory) -> Roz:
    return roz_factory(health_check_interval_seconds=0.2)


def check(roz: Roz, service: str = "") -> int:
    with roz.channel() as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(response.status)


def test_health_and_readiness_follow_the_database(fragile: Roz) -> None:
    with fragile.rest() as client:
        assert client.get("/ready").json() == {"status": "ok", "checks": {"database": "ok"}}
        assert check(fragile) == SERVING
        assert check(fragile, "roz.v1.EnvironmentService") == SERVING

        fragile.listener.call(cut_off_request_role(fragile, allowed=False))
        try:
            not_ready = client.get("/ready")
            assert not_ready.status_code == 503
            assert not_ready.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "database" in not_ready.json()["message"]
            eventually(lambda: check(fragile) == NOT_SERVING)
            assert check(fragile, "roz.v1.EnvironmentService") == NOT_SERVING
            assert client.get("/health").status_code == 200  # liveness: the process is fine
        finally:
            fragile.listener.call(cut_off_request_role(fragile, allowed=True))

        eventually(lambda: check(fragile) == SERVING)
        assert client.get("/ready").status_code == 200


def test_unknown_service_is_not_found(roz: Roz) -> None:
    with pytest.raises(grpc.RpcError) as error:
        check(roz, "no.such.Service")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
