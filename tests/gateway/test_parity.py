"""One chain, four protocols: the same call fails the same way over REST, gRPC-web, gRPC and
Connect.

A router over a registry of the EchoService with a test interceptor; each case is called over
the four protocols and the (code, message, details) they report must be identical.
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
import pytest
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.chain import Call, InterceptorChain
from gateway.connect import ConnectApp
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2
from tests.gateway.echo_service import echo_pb2_grpc as echo_grpc
from tests.support.server import RunningServer, running

PROTOCOLS = ("rest", "grpc-web", "grpc", "connect")
ECHO = "/testing.echo.v1.EchoService/Echo"
SLEEP = "/testing.echo.v1.EchoService/Sleep"
FAIL = "/testing.echo.v1.EchoService/Fail"


class Refused(Exception):
    """What the test interceptor raises; the translator below turns it into a rich status."""


class RefuseOnHeader:
    async def intercept(self, call: Call) -> None:
        if call.metadata.get_text("x-refuse"):
            raise Refused(call.metadata.get_text("x-refuse"))


def translate(exc: Exception) -> status_pb2.Status | None:
    if not isinstance(exc, Refused):
        return None
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason="REFUSED", domain="test", metadata={"why": str(exc)})
    )
    return status_pb2.Status(
        code=code_pb2.PERMISSION_DENIED, message=f"refused: {exc}", details=[detail]
    )


class Exploding(EchoServicer):
    async def Echo(self, request: Any, context: Any) -> Any:
        if request.message == "boom":
            raise RuntimeError("secret database text")
        return await super().Echo(request, context)


def build() -> GatewayRouter:
    registry = MethodRegistry(InterceptorChain([RefuseOnHeader()], translate_error=translate))
    echo_grpc.add_EchoServiceServicer_to_server(Exploding(), registry)
    return GatewayRouter(
        grpc_app=NativeGrpcApp(registry),
        grpc_web_app=GrpcWebApp(registry),
        rest_app=RestApp(registry),
        connect_app=ConnectApp(registry),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running(build) as running_server:
        yield running_server


Outcome = tuple[int, str, list[str]]


def details_of(status: status_pb2.Status) -> list[str]:
    return [json_format.MessageToJson(d, indent=None) for d in status.details]


def over_grpc(
    server: RunningServer, path: str, request: Any, headers: dict[str, str], timeout: float | None
) -> Outcome:
    with grpc.insecure_channel(server.target) as channel:
        method = channel.unary_unary(
            path, type(request).SerializeToString, echo_pb2.EchoResponse.FromString
        )
        try:
            method(request, metadata=list(headers.items()), timeout=timeout)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            return error.code().value[0], error.details(), details_of(status) if status else []
    return 0, "", []


def over_grpc_web(
    server: RunningServer, path: str, request: Any, headers: dict[str, str], timeout: float | None
) -> Outcome:
    payload = request.SerializeToString()
    sent = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **headers}
    if timeout is not None:
        sent["grpc-timeout"] = f"{int(timeout * 1000)}m"
    response = httpx.post(
        server.url + path,
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers=sent,
        timeout=30,
    )
    trailers = dict(response.headers)
    body = response.content
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            for line in frame.decode().split("\r\n"):
                if line:
                    name, value = line.split(":", 1)
                    trailers[name.strip()] = value.strip()
    code = int(trailers["grpc-status"])
    if not code:
        return 0, "", []
    raw = trailers.get("grpc-status-details-bin", "")
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    return code, unquote(trailers.get("grpc-message", "")), details_of(status)


def over_rest(
    server: RunningServer,
    rest: tuple[str, str, Any],
    headers: dict[str, str],
    timeout: float | None,
) -> Outcome:
    method, path, body = rest
    sent = {f"grpc-metadata-{k}": v for k, v in headers.items()}
    if timeout is not None:
        sent["grpc-timeout"] = f"{int(timeout * 1000)}m"
    response = httpx.request(method, server.url + path, json=body, headers=sent, timeout=30)
    if response.status_code < 300:
        return 0, "", []
    status = json_format.ParseDict(response.json(), status_pb2.Status())
    return status.code, status.message, details_of(status)


def over_connect(
    server: RunningServer, path: str, request: Any, headers: dict[str, str], timeout: float | None
) -> Outcome:
    sent = {"content-type": "application/proto", "connect-protocol-version": "1", **headers}
    if timeout is not None:
        sent["connect-timeout-ms"] = str(int(timeout * 1000))
    response = httpx.post(
        server.url + path, content=request.SerializeToString(), headers=sent, timeout=30
    )
    if response.status_code == 200:
        return 0, "", []
    error = response.json()
    name = "CANCELLED" if error["code"] == "canceled" else error["code"].upper()
    status = status_pb2.Status()
    for detail in error.get("details", []):
        value = detail["value"]
        status.details.add(
            type_url="type.googleapis.com/" + detail["type"],
            value=base64.b64decode(value + "=" * (-len(value) % 4)),
        )
    return grpc.StatusCode[name].value[0], error.get("message", ""), details_of(status)


def call(
    protocol: str,
    server: RunningServer,
    path: str,
    request: Any,
    rest: tuple[str, str, Any],
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Outcome:
    headers = headers or {}
    if protocol == "grpc":
        return over_grpc(server, path, request, headers, timeout)
    if protocol == "grpc-web":
        return over_grpc_web(server, path, request, headers, timeout)
    if protocol == "connect":
        return over_connect(server, path, request, headers, timeout)
    return over_rest(server, rest, headers, timeout)


def same_everywhere(server: RunningServer, *args: Any, **kwargs: Any) -> Outcome:
    outcomes = {protocol: call(protocol, server, *args, **kwargs) for protocol in PROTOCOLS}
    assert outcomes["rest"] == outcomes["grpc-web"] == outcomes["grpc"] == outcomes["connect"], (
        outcomes
    )
    return outcomes["grpc"]


def test_interceptor_refusal_is_identical(server: RunningServer) -> None:
    code, message, details = same_everywhere(
        server,
        ECHO,
        echo_pb2.EchoRequest(message="hi"),
        ("POST", "/v1/echo", {"message": "hi"}),
        headers={"x-refuse": "no entry"},
    )
    assert code == code_pb2.PERMISSION_DENIED
    assert message == "refused: no entry"
    assert '"reason": "REFUSED"' in details[0]


def test_servicer_status_with_details_is_identical(server: RunningServer) -> None:
    code, message, details = same_everywhere(
        server,
        FAIL,
        echo_pb2.EchoRequest(code=3, message="bad ✓ 100%"),
        ("GET", "/v1/fail/3?message=bad ✓ 100%", None),
    )
    assert (code, message) == (code_pb2.INVALID_ARGUMENT, "bad ✓ 100%")
    assert "BadRequest" in details[0]


def test_deadline_is_identical(server: RunningServer) -> None:
    delay = duration_pb2.Duration(seconds=5)
    outcomes = {
        protocol: call(
            protocol,
            server,
            SLEEP,
            echo_pb2.EchoRequest(delay=delay),
            ("GET", "/v1/sleep?delay=5s", None),
            timeout=0.3,
        )
        for protocol in PROTOCOLS
    }
    assert {code for code, _, _ in outcomes.values()} == {code_pb2.DEADLINE_EXCEEDED}
    # grpcio's client gives up at the same deadline and words the status itself.
    assert (
        outcomes["rest"][1:]
        == outcomes["grpc-web"][1:]
        == outcomes["connect"][1:]
        == ("deadline exceeded", [])
    )


def test_bug_is_internal_without_leaking(server: RunningServer) -> None:
    code, message, details = same_everywhere(
        server,
        ECHO,
        echo_pb2.EchoRequest(message="boom"),
        ("POST", "/v1/echo", {"message": "boom"}),
    )
    assert (code, message, details) == (code_pb2.INTERNAL, "internal error", [])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_access_log_names_request_rpc_and_code(
    server: RunningServer, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = f"parity-{protocol}"
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        call(
            protocol,
            server,
            FAIL,
            echo_pb2.EchoRequest(code=5),
            ("GET", "/v1/fail/5", None),
            headers={"x-request-id": request_id} if protocol != "rest" else {},
        )
        if protocol == "rest":
            httpx.get(server.url + "/v1/fail/5", headers={"x-request-id": request_id})
    records = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert records, [vars(r) for r in caplog.records]
    assert records[-1].rpc == FAIL  # type: ignore[attr-defined]
    assert records[-1].code == "NOT_FOUND"  # type: ignore[attr-defined]
