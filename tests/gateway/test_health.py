"""grpc.health.v1 through the router: Check, Watch and List with grpcio, and over gRPC-web."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sonora.client import insecure_web_channel
from sonora.protocol import WebRpcError

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.health import LIST_LIMIT, NOT_SERVING, SERVING, HealthServicer, add_health_to
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2_grpc
from tests.support.server import RunningServer, running

Status = health_pb2.HealthCheckResponse
CHECK = "/grpc.health.v1.Health/Check"


def _serve() -> Any:
    """A running router and its health servicer (built on the server's loop)."""
    servicers: list[HealthServicer] = []

    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), registry)
        servicers.append(add_health_to(registry))
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
        )

    return running(build), servicers


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RunningServer, HealthServicer]]:
    context, servicers = _serve()
    with context as server:
        yield server, servicers[0]


@pytest.fixture
def fresh() -> Iterator[tuple[RunningServer, HealthServicer]]:
    """For tests that leave the servicer in a state others must not see."""
    context, servicers = _serve()
    with context as server:
        yield server, servicers[0]


@pytest.fixture
def stub(stack: tuple[RunningServer, HealthServicer]) -> Iterator[Any]:
    with grpc.insecure_channel(stack[0].target) as channel:
        yield health_pb2_grpc.HealthStub(channel)


def _set(stack: tuple[RunningServer, HealthServicer], service: str, status: Any) -> None:
    server, servicer = stack
    server.call(servicer.set(service, status))


# -- native gRPC -----------------------------------------------------------------------------


def test_check_reports_the_server_serving_and_unknown_services_not_found(stub: Any) -> None:
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == Status.SERVING
    with pytest.raises(grpc.RpcError) as failure:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_check_follows_set(stack: tuple[RunningServer, HealthServicer], stub: Any) -> None:
    _set(stack, "checked.Service", NOT_SERVING)
    request = health_pb2.HealthCheckRequest(service="checked.Service")
    assert stub.Check(request, timeout=10).status == Status.NOT_SERVING
    _set(stack, "checked.Service", SERVING)
    assert stub.Check(request, timeout=10).status == Status.SERVING


def test_watch_sends_the_current_status_then_each_change(
    stack: tuple[RunningServer, HealthServicer], stub: Any
) -> None:
    _set(stack, "watched.Service", SERVING)
    updates = stub.Watch(health_pb2.HealthCheckRequest(service="watched.Service"), timeout=20)
    try:
        assert next(updates).status == Status.SERVING
        _set(stack, "watched.Service", NOT_SERVING)
        assert next(updates).status == Status.NOT_SERVING
    finally:
        updates.cancel()


def test_watch_of_an_unknown_service_stays_open_until_it_appears(
    stack: tuple[RunningServer, HealthServicer], stub: Any
) -> None:
    updates = stub.Watch(health_pb2.HealthCheckRequest(service="later.Service"), timeout=20)
    try:
        assert next(updates).status == Status.SERVICE_UNKNOWN
        _set(stack, "later.Service", SERVING)
        assert next(updates).status == Status.SERVING
    finally:
        updates.cancel()


def test_list_reports_every_known_service(
    stack: tuple[RunningServer, HealthServicer], stub: Any
) -> None:
    _set(stack, "listed.Service", NOT_SERVING)
    statuses = stub.List(health_pb2.HealthListRequest(), timeout=10).statuses
    assert statuses[""].status == Status.SERVING
    assert statuses["listed.Service"].status == Status.NOT_SERVING


def test_list_refuses_more_than_the_limit(fresh: tuple[RunningServer, HealthServicer]) -> None:
    server, servicer = fresh

    async def many() -> None:
        for index in range(LIST_LIMIT + 1):
            await servicer.set(f"svc{index}", SERVING)

    server.call(many())
    with (
        grpc.insecure_channel(server.target) as channel,
        pytest.raises(grpc.RpcError) as failure,
    ):
        health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_graceful_shutdown_turns_everything_not_serving(
    fresh: tuple[RunningServer, HealthServicer],
) -> None:
    server, servicer = fresh
    server.call(servicer.set("drained.Service", SERVING))
    server.call(servicer.enter_graceful_shutdown())
    server.call(servicer.set("drained.Service", SERVING))  # ignored from now on
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "drained.Service"):
            request = health_pb2.HealthCheckRequest(service=service)
            assert stub.Check(request, timeout=10).status == Status.NOT_SERVING


# -- gRPC-web --------------------------------------------------------------------------------


def test_check_over_grpc_web(stack: tuple[RunningServer, HealthServicer]) -> None:
    with insecure_web_channel(stack[0].url) as channel:
        check = channel.unary_unary(
            CHECK,
            health_pb2.HealthCheckRequest.SerializeToString,
            health_pb2.HealthCheckResponse.FromString,
        )
        assert check(health_pb2.HealthCheckRequest()).status == Status.SERVING
        # Check aborts with a code and no details, which sonora's own context could not take.
        with pytest.raises(WebRpcError) as failure:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_over_grpc_web_streams_before_the_call_ends(
    stack: tuple[RunningServer, HealthServicer],
) -> None:
    server = stack[0]
    payload = health_pb2.HealthCheckRequest().SerializeToString()
    with httpx.stream(
        "POST",
        f"{server.url}/grpc.health.v1.Health/Watch",
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={"content-type": "application/grpc-web+proto"},
        timeout=10,
    ) as response:
        received = b""
        chunks = response.iter_raw()
        while len(received) < 5 or len(received) < 5 + struct.unpack(">I", received[1:5])[0]:
            received += next(chunks)
    # Watch never ends on its own: this first message can only have come by streaming.
    flags, length = struct.unpack(">BI", received[:5])
    assert flags == 0
    assert health_pb2.HealthCheckResponse.FromString(received[5 : 5 + length]).status == (
        Status.SERVING
    )
