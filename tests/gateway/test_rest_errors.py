"""REST errors: THE gRPC→HTTP table, google.rpc.Status bodies with details, 401/retry headers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    message_factory,
)
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.registry import MethodRegistry
from gateway.rest import http_status_for
from gateway.rest.status import status_body, status_headers
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    rest_server,
    rule,
    violations,
)

# The standard table (google/rpc/code.proto, grpc-gateway, Envoy), written out independently.
EXPECTED = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


async def retry_later(request: Any, context: Any) -> Any:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=200))
    )
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="busy", details=[detail])
    await context.abort_with_status(rpc_status.to_status(status))


async def unknown_detail(request: Any, context: Any) -> Any:
    known = any_pb2.Any()
    known.Pack(error_details_pb2.ErrorInfo(reason="QUOTA", domain="roz.dev"))
    unknown = any_pb2.Any(type_url="type.googleapis.com/nowhere.Unknown", value=b"\x08\x01")
    status = status_pb2.Status(code=code_pb2.ABORTED, message="mixed", details=[unknown, known])
    await context.abort_with_status(rpc_status.to_status(status))


async def crash(request: Any, context: Any) -> Any:
    raise RuntimeError("database password is hunter2")


async def set_code_only(request: Any, context: Any) -> Any:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("not here")
    return None


async def opaque(request: Any, context: Any) -> Any:
    response = OPAQUE[0]()
    response.payload.type_url = "type.googleapis.com/nowhere.Unknown"
    return response


OPAQUE: list[Any] = []


def add_extra(registry: MethodRegistry) -> None:
    holder = descriptor_pb2.DescriptorProto(
        name="Opaque",
        field=[
            descriptor_pb2.FieldDescriptorProto(
                name="payload",
                number=1,
                type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                type_name=".google.protobuf.Any",
            )
        ],
    )
    service = add_service(
        registry,
        [FakeMethod("Opaque", rule(get="/v1/opaque"), opaque, output_type="Opaque")],
        [holder],
    )
    OPAQUE.append(
        message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(service.rsplit(".", 1)[0] + ".Opaque")
        )
    )
    add_service(
        registry,
        [
            FakeMethod("Retry", rule(get="/v1/retry"), retry_later),
            FakeMethod("Unknown", rule(get="/v1/unknown-detail"), unknown_detail),
            FakeMethod("Crash", rule(get="/v1/crash"), crash),
            FakeMethod("SetCode", rule(get="/v1/set-code"), set_code_only),
        ],
    )


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(extra=add_extra) as server:
        yield server


def test_the_table_in_code() -> None:
    assert {code.name: http_status_for(code) for code in grpc.StatusCode} == EXPECTED


@pytest.mark.parametrize(
    "code", [code for code in grpc.StatusCode if code != grpc.StatusCode.OK], ids=lambda c: c.name
)
def test_every_code_over_the_wire(rest: RestServer, code: grpc.StatusCode) -> None:
    response = rest.client.get(
        f"/v1/fail/{code.value[0]}", params={"message": f"because {code.name}"}
    )
    assert response.status_code == EXPECTED[code.name]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code.value[0]
    assert body["message"] == f"because {code.name}"
    assert isinstance(body["details"], list)


def test_status_body_keeps_the_servicers_details(rest: RestServer) -> None:
    body = rest.client.get("/v1/fail/3").json()
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [{"field": "message", "description": "is wrong", "reason": ""}],
        }
    ]


def test_unauthenticated_asks_for_a_bearer_token(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/16")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in rest.client.get("/v1/fail/7").headers


def test_retry_info_becomes_retry_after_rounded_up(rest: RestServer) -> None:
    response = rest.client.get("/v1/retry")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    (detail,) = response.json()["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    assert detail["retry_delay"] == "1.000000200s"


def test_an_undecodable_detail_is_dropped_not_a_500(rest: RestServer) -> None:
    response = rest.client.get("/v1/unknown-detail")
    assert response.status_code == 409
    body = response.json()
    assert body["message"] == "mixed"
    assert [detail["@type"] for detail in body["details"]] == [
        "type.googleapis.com/google.rpc.ErrorInfo"
    ]


def test_a_crash_is_500_without_leaking_the_exception(rest: RestServer) -> None:
    response = rest.client.get("/v1/crash")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == 13
    assert "hunter2" not in response.text


def test_a_response_that_cannot_be_written_is_a_500_status(rest: RestServer) -> None:
    response = rest.client.get("/v1/opaque")
    assert response.status_code == 500
    assert response.json()["code"] == 13


def test_a_code_set_without_abort_is_honoured(rest: RestServer) -> None:
    response = rest.client.get("/v1/set-code")
    assert response.status_code == 404
    assert response.json() == {"code": 5, "message": "not here", "details": []}


def test_gateway_errors_have_the_same_shape(rest: RestServer) -> None:
    for response in (
        rest.client.get("/nowhere"),
        rest.client.put("/v1/echo/x"),
        rest.client.get("/v1/echo/x", params={"count": "x"}),
    ):
        body = response.json()
        assert set(body) == {"code", "message", "details"}
    bad = rest.client.get("/v1/echo/x", params={"count": "x"}).json()
    assert violations(bad)[0]["field"] == "count"


def test_status_helpers_never_fail() -> None:
    status = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message="who?")
    status.details.add(type_url="type.googleapis.com/x.Y", value=b"\xff")
    assert status_body(status) == b'{"code":16,"message":"who?","details":[]}'
    assert status_headers(status) == [(b"www-authenticate", b"Bearer")]
