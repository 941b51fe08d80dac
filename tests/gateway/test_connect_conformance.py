"""Connect's conformance suite, the server cases that apply, reproduced against our Connect app.

The official runner (connectrpc/conformance) is a Go program and cannot run here, so each test
below replays one of its server test cases (YAML under internal/app/connectconformance/testsuites/
data/) on the wire, with the test-only EchoService standing in for ConformanceService: a servicer
that answers as a case's response definition says (headers, trailers, error, messages). Each
docstring names the suite and the case. Cases for clients only, TLS and other protocols are left
out; so are codecs and compressions we do not serve (the suite lets a server declare them).
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from gateway.chain import InterceptorChain
from gateway.connect import ConnectApp
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import RunningServer, running

LIMIT = 16 * 1024
SERVICE = "/testing.echo.v1.EchoService"
HEADERS = [("x-custom-header", "foo"), ("x-custom-header", "bar"), ("x-custom-header", "baz")]
TRAILERS = [("x-custom-trailer", "bing"), ("x-custom-trailer", "quux")]
UNICODE = "\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\n"


class ResponseDefinition(EchoServicer):
    """Answers as a conformance response definition would, spelled in EchoRequest's fields:
    tags "headers"/"trailers" send the suite's custom headers/trailers, `code` (with `message`)
    is the error, after `count` responses on streams."""

    @staticmethod
    async def _metadata(request: Any, context: Any) -> None:
        if "headers" in request.tags:
            await context.send_initial_metadata(HEADERS)
        if "trailers" in request.tags:
            context.set_trailing_metadata(TRAILERS)

    async def Echo(self, request: Any, context: Any) -> Any:
        await self._metadata(request, context)
        if request.code:
            await context.abort(grpc.StatusCode(_CODES[request.code]), request.message)
        return await super().Echo(request, context)

    async def Expand(self, request: Any, context: Any) -> Any:
        await self._metadata(request, context)
        async for response in super().Expand(request, context):
            yield response

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        requests = [request async for request in request_iterator]
        first = requests[0] if requests else echo_pb2.EchoRequest()
        await self._metadata(first, context)
        if first.code:
            await context.abort(grpc.StatusCode(_CODES[first.code]), first.message)
        return echo_pb2.EchoResponse(
            echoed=echo_pb2.EchoRequest(message=f"{len(requests)} requests"),
            metadata=self._seen(context),
        )


_CODES = {code.value[0]: code.value for code in grpc.StatusCode}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(ResponseDefinition(), registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
            connect_app=ConnectApp(registry, max_message_bytes=LIMIT),
        )

    with running(build) as running_server:
        yield running_server


def _post(
    server: RunningServer,
    method: str,
    content: bytes,
    content_type: str = "application/proto",
    **headers: str,
) -> httpx.Response:
    return httpx.post(
        f"{server.url}{SERVICE}/{method}",
        content=content,
        headers={"content-type": content_type, "connect-protocol-version": "1", **headers},
        timeout=10,
    )


def _stream(
    server: RunningServer, method: str, *messages: bytes, flags: int = 0, **headers: str
) -> tuple[httpx.Response, list[tuple[int, bytes]], dict[str, Any]]:
    """A streaming call in proto; the response, its messages and its end-of-stream document."""
    body = b"".join(struct.pack(">BI", flags, len(m)) + m for m in messages)
    response = _post(server, method, body, "application/connect+proto", **headers)
    envelopes = []
    data = response.content
    while data:
        flag, length = struct.unpack(">BI", data[:5])
        envelopes.append((flag, data[5 : 5 + length]))
        data = data[5 + length :]
    *rest, (end_flags, end) = envelopes
    assert end_flags & 0x02
    return response, rest, json.loads(end)


def _request(**fields: Any) -> bytes:
    return bytes(echo_pb2.EchoRequest(**fields).SerializeToString())


def _values(response: httpx.Response, name: str) -> list[str]:
    return [value for key, value in response.headers.multi_items() if key == name]


# -- Basic -----------------------------------------------------------------------------------


def test_basic_unary_success(server: RunningServer) -> None:
    """Basic / unary/success (also Server Empty Requests / unary/empty-request)."""
    for request in (_request(message="test response"), b""):
        response = _post(server, "Echo", request)
        assert response.status_code == 200
        reply = echo_pb2.EchoResponse.FromString(response.content)
        assert reply.echoed == echo_pb2.EchoRequest.FromString(request)


def test_basic_server_stream_success_and_no_responses(server: RunningServer) -> None:
    """Basic / server-stream/success, server-stream/no-responses; Server Empty Requests /
    server-stream/empty-request."""
    _, messages, end = _stream(server, "Expand", _request(count=3))
    assert [echo_pb2.EchoResponse.FromString(m).index for _, m in messages] == [0, 1, 2]
    assert end == {}
    _, messages, end = _stream(server, "Expand", b"")
    assert (messages, end) == ([], {})


def test_basic_client_stream_success_and_empty_request(server: RunningServer) -> None:
    """Basic / client-stream/success; Server Empty Requests / client-stream/empty-request."""
    _, (message,), end = _stream(server, "Collect", _request(message="a"), b"", b"")
    assert echo_pb2.EchoResponse.FromString(message[1]).echoed.message == "3 requests"
    assert end == {}


def test_basic_bidi_half_duplex_success_and_empty_request(server: RunningServer) -> None:
    """Basic / bidi-stream/half-duplex/success, half-duplex/no-responses; Server Empty Requests
    / bidi-stream/half-duplex/empty-request. (Bidi needs HTTP/2: httpx speaks HTTP/1.1 here,
    so the half-duplex exchange is checked at the protocol level: 505, as connect-go answers.
    The full-duplex exchange over HTTP/2 is tests/gateway/test_connect.py's bidi test.)"""
    response = _post(server, "Chat", b"", "application/connect+proto")
    assert response.status_code == 505


def test_basic_unimplemented(server: RunningServer) -> None:
    """Basic / unimplemented: a method the service does not implement."""
    response = _post(server, "Unimplemented", b"")
    assert response.status_code == 404
    assert response.json()["code"] == "unimplemented"


# -- Errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
def test_errors_unary_and_server_stream_each_code(
    server: RunningServer, code: grpc.StatusCode
) -> None:
    """Errors / unary/<code> and server-stream/<code>: every code round-trips by name."""
    name = "canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()
    response = _post(server, "Echo", _request(code=code.value[0], message=name))
    assert response.json() == {"code": name, "message": name}
    _, messages, end = _stream(server, "Expand", _request(code=code.value[0]))
    assert messages == []
    assert end["error"]["code"] == name


def test_errors_unary_error_with_metadata(server: RunningServer) -> None:
    """Errors / unary/error-with-metadata; Duplicate Metadata / unary/error."""
    response = _post(
        server,
        "Echo",
        _request(code=16, message="unauthenticated", tags=["headers", "trailers"]),
    )
    assert response.status_code == 401
    assert response.json() == {"code": "unauthenticated", "message": "unauthenticated"}
    assert _values(response, "x-custom-header") == ["foo", "bar", "baz"]
    assert _values(response, "trailer-x-custom-trailer") == ["bing", "quux"]


def test_errors_unary_unicode_error_message(server: RunningServer) -> None:
    """Errors / unary/unicode-error-message."""
    response = _post(server, "Echo", _request(code=13, message=UNICODE))
    assert response.json() == {"code": "internal", "message": UNICODE}
    _, _, end = _stream(server, "Expand", _request(code=13, message=UNICODE))
    assert end["error"]["code"] == "internal"


# -- Duplicate Metadata ----------------------------------------------------------------------


def test_duplicate_metadata_unary_success(server: RunningServer) -> None:
    """Duplicate Metadata / unary/success: repeated request headers reach the handler, repeated
    response headers and trailers reach the client."""
    response = httpx.post(
        f"{server.url}{SERVICE}/Echo",
        content=_request(tags=["headers", "trailers"]),
        headers=[
            ("content-type", "application/proto"),
            ("x-conformance-test", "Value1"),
            ("x-conformance-test", "Value2"),
        ],
        timeout=10,
    )
    seen = echo_pb2.EchoResponse.FromString(response.content).metadata
    assert [m for m in seen if m.startswith("x-conformance-test")] == [
        "x-conformance-test=Value1",
        "x-conformance-test=Value2",
    ]
    assert _values(response, "x-custom-header") == ["foo", "bar", "baz"]
    assert _values(response, "trailer-x-custom-trailer") == ["bing", "quux"]


def test_duplicate_metadata_server_stream(server: RunningServer) -> None:
    """Duplicate Metadata / server-stream/success, error-with-responses,
    error-with-no-responses, no-response."""
    response, messages, end = _stream(server, "Expand", _request(count=2, tags=["headers"]))
    assert _values(response, "x-custom-header") == ["foo", "bar", "baz"]
    assert (len(messages), end) == (2, {})

    tags = ["headers", "trailers"]
    for count in (2, 0):
        response, messages, end = _stream(
            server, "Expand", _request(count=count, code=13, tags=tags)
        )
        assert response.status_code == 200
        assert _values(response, "x-custom-header") == ["foo", "bar", "baz"]
        assert len(messages) == count
        assert end["error"] == {"code": "internal", "message": "stream failed"}
        assert end["metadata"] == {"x-custom-trailer": ["bing", "quux"]}


def test_duplicate_metadata_client_stream(server: RunningServer) -> None:
    """Duplicate Metadata / client-stream/success and client-stream/error."""
    first = _request(tags=["headers", "trailers"])
    response, (message,), end = _stream(server, "Collect", first, b"")
    assert echo_pb2.EchoResponse.FromString(message[1]).echoed.message == "2 requests"
    assert _values(response, "x-custom-header") == ["foo", "bar", "baz"]
    assert end == {"metadata": {"x-custom-trailer": ["bing", "quux"]}}

    failing = _request(code=13, message="client stream failed", tags=["trailers"])
    _, messages, end = _stream(server, "Collect", failing)
    assert messages == []
    assert end["error"] == {"code": "internal", "message": "client stream failed"}
    assert end["metadata"] == {"x-custom-trailer": ["bing", "quux"]}


# -- Connect with GET ------------------------------------------------------------------------


def test_connect_with_get_success(server: RunningServer) -> None:
    """Connect with GET / success: an idempotent unary call by GET, proto and JSON, with and
    without compression."""
    request = _request(message="idempotent")
    encoded = base64.urlsafe_b64encode(request).decode().rstrip("=")
    response = httpx.get(
        f"{server.url}{SERVICE}/Echo",
        params={"connect": "v1", "encoding": "proto", "base64": "1", "message": encoded},
        timeout=10,
    )
    assert echo_pb2.EchoResponse.FromString(response.content).echoed.message == "idempotent"
    packed = base64.urlsafe_b64encode(gzip.compress(b'{"message":"idempotent"}')).decode()
    response = httpx.get(
        f"{server.url}{SERVICE}/Echo",
        params={
            "connect": "v1",
            "encoding": "json",
            "base64": "1",
            "compression": "gzip",
            "message": packed,
        },
        timeout=10,
    )
    assert response.json()["echoed"]["message"] == "idempotent"


# -- Timeouts --------------------------------------------------------------------------------


def test_timeouts_unary(server: RunningServer) -> None:
    """Timeouts / unary: deadline_exceeded with HTTP 504."""
    slow = bytes(echo_pb2.EchoRequest(delay={"seconds": 5}).SerializeToString())
    response = _post(server, "Sleep", slow, **{"connect-timeout-ms": "100"})
    assert (response.status_code, response.json()["code"]) == (504, "deadline_exceeded")


def test_timeouts_client_stream(server: RunningServer) -> None:
    """Timeouts / client-stream: an expired deadline ends the call with deadline_exceeded."""
    _, _, end = _stream(server, "Collect", _request(message="x"), **{"connect-timeout-ms": "0"})
    assert end["error"]["code"] == "deadline_exceeded"


# -- Server Message Size ---------------------------------------------------------------------


def test_server_message_size_unary(server: RunningServer) -> None:
    """Server Message Size / unary/request-equal-to-server-limit and
    unary/request-exceeds-server-limit."""
    at_limit = _sized(LIMIT)
    assert len(at_limit) == LIMIT
    assert _post(server, "Echo", at_limit).status_code == 200
    response = _post(server, "Echo", _sized(LIMIT + 10))
    assert (response.status_code, response.json()["code"]) == (429, "resource_exhausted")


def test_server_message_size_streams(server: RunningServer) -> None:
    """Server Message Size / server-stream/request-equal-to-server-limit, request-exceeds,
    client-stream/all-requests-equal-to-server-limit, first- and subsequent-request-exceeds."""
    _, _, end = _stream(server, "Expand", _sized(LIMIT))
    assert "error" not in end
    _, _, end = _stream(server, "Expand", _sized(LIMIT + 10))
    assert end["error"]["code"] == "resource_exhausted"
    _, _, end = _stream(server, "Collect", _sized(LIMIT), _sized(LIMIT))
    assert "error" not in end
    for sizes in ((LIMIT + 10, LIMIT), (LIMIT, LIMIT + 10)):
        _, _, end = _stream(server, "Collect", *(_sized(size) for size in sizes))
        assert end["error"]["code"] == "resource_exhausted"


def _sized(size: int) -> bytes:
    """An EchoRequest of exactly `size` bytes."""
    for padding in range(size, 0, -1):
        encoded = _request(message="x" * padding)
        if len(encoded) == size:
            return encoded
        if len(encoded) < size:
            break
    raise AssertionError(f"no EchoRequest of {size} bytes")


# -- Connect Unexpected Requests / Unexpected Requests ---------------------------------------


def test_unexpected_server_stream_no_request_and_multiple_requests(server: RunningServer) -> None:
    """Connect Unexpected Requests / server-stream/no-request, server-stream/multiple-requests."""
    _, _, end = _stream(server, "Expand")
    assert end["error"]["code"] == "unimplemented"
    _, _, end = _stream(server, "Expand", _request(count=1), _request(count=1))
    assert end["error"]["code"] == "unimplemented"


def test_unexpected_verb(server: RunningServer) -> None:
    """Connect Unexpected Requests / unexpected-verb: 405."""
    response = httpx.delete(f"{server.url}{SERVICE}/Echo", timeout=10)
    assert response.status_code == 405


def test_unexpected_uri(server: RunningServer) -> None:
    """Connect Unexpected Requests / unexpected-uri: 404 and unimplemented."""
    response = httpx.post(
        f"{server.url}/connectrpc.conformance.v1.UnknownService/UnknownMethod",
        content=b"",
        headers={"content-type": "application/proto", "connect-protocol-version": "1"},
        timeout=10,
    )
    assert (response.status_code, response.json()["code"]) == (404, "unimplemented")


@pytest.mark.parametrize("content_type", ["application/foo", "image/jpeg"])
def test_unexpected_codec_and_content_type(server: RunningServer, content_type: str) -> None:
    """Connect Unexpected Requests / unexpected-codec; Unexpected Requests /
    unexpected-content-type: 415."""
    response = _post(server, "Echo", b"12345678", content_type)
    assert response.status_code == 415


def test_unexpected_compression(server: RunningServer) -> None:
    """Connect Unexpected Requests / unexpected-compression: unimplemented."""
    response = _post(server, "Echo", _request(), **{"content-encoding": "foo"})
    assert response.json()["code"] == "unimplemented"


def test_unexpected_compressed_message(server: RunningServer) -> None:
    """Connect Unexpected Requests / unexpected-compressed-message: a compressed envelope under
    connect-content-encoding identity is internal."""
    _, _, end = _stream(
        server, "Expand", _request(), flags=0x01, **{"connect-content-encoding": "identity"}
    )
    assert end["error"]["code"] == "internal"
