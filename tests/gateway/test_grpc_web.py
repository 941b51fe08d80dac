"""gRPC-web through the router on a real Hypercorn listener: sonora's client, httpx, raw sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sonora.client import insecure_web_channel
from sonora.protocol import WebRpcError

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.health import add_health_to
from gateway.reflection import add_reflection_to
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import RunningServer, running

LIMIT = 64 * 1024
ORIGIN = "https://console.example"
SERVICE = "/testing.echo.v1.EchoService"


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RunningServer, EchoServicer]]:
    servicers: list[EchoServicer] = []

    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        servicers.append(EchoServicer())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(servicers[0], registry)
        add_reflection_to(registry)
        add_health_to(registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry, max_message_bytes=LIMIT),
            rest_app=RestApp(registry),
            allowed_origins=[ORIGIN],
        )

    with running(build) as server:
        yield server, servicers[0]


@pytest.fixture(scope="module")
def server(stack: tuple[RunningServer, EchoServicer]) -> RunningServer:
    return stack[0]


def _unary(channel: Any, name: str) -> Any:
    return channel.unary_unary(
        f"{SERVICE}/{name}",
        echo_pb2.EchoRequest.SerializeToString,
        echo_pb2.EchoResponse.FromString,
    )


def _frame(message: Any, flags: int = 0) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">BI", flags, len(payload)) + payload


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frames.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


def _trailers(payload: bytes) -> dict[str, str]:
    lines = payload.decode("ascii").split("\r\n")
    return dict(line.split(": ", 1) for line in lines if line)


def _post(server: RunningServer, method: str, body: Any, **headers: str) -> httpx.Response:
    headers.setdefault("content-type", "application/grpc-web+proto")
    return httpx.post(f"{server.url}{SERVICE}/{method}", content=body, headers=headers, timeout=10)


# -- sonora's client -------------------------------------------------------------------------


def test_unary_call_with_sonora_client_reaches_the_servicer_with_web_metadata(
    server: RunningServer,
) -> None:
    with insecure_web_channel(server.url) as channel:
        response, call = _unary(channel, "Echo").with_call(
            echo_pb2.EchoRequest(message="hello", big=12345678901234),
            metadata=[("x-grpc-web", "1"), ("trace-bin", b"\x00\xff")],
        )
    assert response.echoed.message == "hello"
    assert response.echoed.big == 12345678901234
    seen = set(response.metadata)
    # Browser headers arrive as ordinary metadata, -bin values decoded to bytes ...
    assert {"x-grpc-web=1", "x-user-agent=grpc-web-python/0.1", "trace-bin=b'\\x00\\xff'"} <= seen
    # ... while HTTP transport headers do not.
    assert not {k.split("=")[0] for k in seen} & {"host", "content-type", "content-length"}
    assert dict(call.initial_metadata())["content-type"] == "application/grpc-web+proto"


def test_server_streaming_with_sonora_client(server: RunningServer) -> None:
    with insecure_web_channel(server.url) as channel:
        expand = channel.unary_stream(
            f"{SERVICE}/Expand",
            echo_pb2.EchoRequest.SerializeToString,
            echo_pb2.EchoResponse.FromString,
        )
        responses = list(expand(echo_pb2.EchoRequest(message="x", count=3)))
    assert [r.index for r in responses] == [0, 1, 2]
    assert all(r.echoed.message == "x" for r in responses)


def test_an_error_after_streamed_messages_arrives_as_the_trailer_frame(
    server: RunningServer,
) -> None:
    received: list[int] = []

    def consume(responses: Iterator[Any]) -> None:
        received.extend(response.index for response in responses)

    with insecure_web_channel(server.url) as channel:
        expand = channel.unary_stream(
            f"{SERVICE}/Expand",
            echo_pb2.EchoRequest.SerializeToString,
            echo_pb2.EchoResponse.FromString,
        )
        request = echo_pb2.EchoRequest(count=2, code=code_pb2.FAILED_PRECONDITION)
        with pytest.raises(WebRpcError) as failure:
            consume(expand(request))
    assert received == [0, 1]
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.value.details() == "stream failed"


def test_an_aborted_call_keeps_its_status_details(server: RunningServer) -> None:
    with (
        insecure_web_channel(server.url) as channel,
        pytest.raises(WebRpcError) as failure,
    ):
        _unary(channel, "Fail")(echo_pb2.EchoRequest(code=code_pb2.INVALID_ARGUMENT))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == "it failed"

    # sonora's client does not surface details-bin; the header itself is what a JS client reads.
    response = _post(server, "Fail", _frame(echo_pb2.EchoRequest(code=3)))
    assert response.status_code == 200
    assert response.content == b""  # trailers-only: the status sits in the headers
    assert response.headers["grpc-status"] == "3"
    assert response.headers["grpc-message"] == "it failed"
    status = status_pb2.Status.FromString(
        base64.b64decode(response.headers["grpc-status-details-bin"])
    )
    assert status.code == 3
    assert status.message == "it failed"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "message"


def test_error_details_are_the_same_over_grpc_web_and_native_grpc(server: RunningServer) -> None:
    web = _post(server, "Fail", _frame(echo_pb2.EchoRequest(code=3, message="nope")))
    web_status = status_pb2.Status.FromString(
        base64.b64decode(web.headers["grpc-status-details-bin"])
    )
    with (
        grpc.insecure_channel(server.target) as channel,
        pytest.raises(grpc.RpcError) as failure,
    ):
        echo_pb2_grpc.EchoServiceStub(channel).Fail(
            echo_pb2.EchoRequest(code=3, message="nope"), timeout=10
        )
    native_status = rpc_status.from_call(failure.value)
    assert native_status is not None
    assert web.headers["grpc-status"] == str(failure.value.code().value[0])
    assert web.headers["grpc-message"] == failure.value.details() == "nope"
    assert web_status == native_status


# -- content types, text mode ----------------------------------------------------------------


@pytest.mark.parametrize("accept", ["*/*", None, "application/json"])
def test_response_content_type_is_grpc_web_whatever_accept_says(
    server: RunningServer, accept: str | None
) -> None:
    headers = {"content-type": "application/grpc-web+proto"}
    if accept is not None:
        headers["accept"] = accept
    with httpx.Client(timeout=10) as client:
        request = client.build_request(
            "POST",
            f"{server.url}{SERVICE}/Echo",
            content=_frame(echo_pb2.EchoRequest()),
            headers=headers,
        )
        if accept is None:
            del request.headers["accept"]  # httpx adds "*/*" by default
        response = client.send(request)
    assert response.headers["content-type"] == "application/grpc-web+proto"
    flags = [flags for flags, _ in _frames(response.content)]
    assert flags == [0x00, 0x80]


@pytest.mark.parametrize(
    "content_type", ["application/grpc-web-text", "application/grpc-web-text+proto"]
)
def test_text_mode_request_gets_a_base64_response(server: RunningServer, content_type: str) -> None:
    body = base64.b64encode(_frame(echo_pb2.EchoRequest(message="in text")))
    headers = {"content-type": content_type, "accept": "application/grpc-web-text"}
    response = _post(server, "Echo", body, **headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web-text+proto"
    frames = _frames(base64.b64decode(response.content, validate=True))
    assert [flags for flags, _ in frames] == [0x00, 0x80]
    assert echo_pb2.EchoResponse.FromString(frames[0][1]).echoed.message == "in text"
    assert _trailers(frames[1][1])["grpc-status"] == "0"


def test_text_body_padded_mid_stream_is_decoded(server: RunningServer) -> None:
    # PROTOCOL-WEB lets a client pad at any flush boundary; decoding it whole would stop at "=".
    frame = _frame(echo_pb2.EchoRequest(message="split"))
    body = base64.b64encode(frame[:4]) + base64.b64encode(frame[4:])
    assert b"=" in body[:-4]
    response = _post(server, "Echo", body, **{"content-type": "application/grpc-web-text"})
    frames = _frames(base64.b64decode(response.content))
    assert echo_pb2.EchoResponse.FromString(frames[0][1]).echoed.message == "split"


def test_text_mode_streaming_is_one_base64_chunk_per_flush(server: RunningServer) -> None:
    body = base64.b64encode(_frame(echo_pb2.EchoRequest(count=2)))
    with httpx.stream(
        "POST",
        f"{server.url}{SERVICE}/Expand",
        content=body,
        headers={"content-type": "application/grpc-web-text"},
        timeout=10,
    ) as response:
        raw = response.read()
    # Each flush is padded on its own, so a client decodes segment by segment.
    decoded = b"".join(base64.b64decode(part) for part in re.split(rb"(?<==)(?=[^=])", raw))
    assert [flags for flags, _ in _frames(decoded)] == [0x00, 0x00, 0x80]


def _json_frame(document: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(document)) + document


def test_json_messages_are_proto3_json_with_proto_field_names_out(server: RunningServer) -> None:
    body = _json_frame(b'{"message": "hi", "pageToken": "t", "big": "12345678901234"}')
    response = _post(server, "Echo", body, **{"content-type": "application/grpc-web+json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web+json"
    (flags, message), (trailer_flags, trailer) = _frames(response.content)
    assert (flags, trailer_flags) == (0x00, 0x80)
    echoed = json.loads(message)["echoed"]
    assert (echoed["message"], echoed["page_token"], echoed["big"]) == ("hi", "t", "12345678901234")
    assert _trailers(trailer)["grpc-status"] == "0"


def test_json_text_mode_streams_each_message_as_json(server: RunningServer) -> None:
    body = base64.b64encode(_json_frame(b'{"count": 2}'))
    response = _post(server, "Expand", body, **{"content-type": "application/grpc-web-text+json"})
    assert response.headers["content-type"] == "application/grpc-web-text+json"
    decoded = b"".join(
        base64.b64decode(part) for part in re.split(rb"(?<==)(?=[^=])", response.content)
    )
    frames = _frames(decoded)
    assert [json.loads(payload)["index"] for _, payload in frames[:2]] == [0, 1]
    assert frames[2][0] == 0x80


def test_a_json_message_with_an_unknown_field_is_invalid_argument_naming_it(
    server: RunningServer,
) -> None:
    body = _json_frame(b'{"mesage": "typo"}')
    response = _post(server, "Echo", body, **{"content-type": "application/grpc-web+json"})
    assert response.headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    details = status_pb2.Status.FromString(
        base64.b64decode(response.headers["grpc-status-details-bin"])
    )
    bad = error_details_pb2.BadRequest()
    assert details.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "mesage"


def test_a_codec_other_than_proto_and_json_is_refused_with_415(server: RunningServer) -> None:
    response = _post(server, "Echo", b"{}", **{"content-type": "application/grpc-web+thrift"})
    assert response.status_code == 415
    assert "application/grpc-web+json" in response.headers["accept-post"]


# -- limits, deadlines, unknown methods, odd requests ----------------------------------------


def test_body_over_the_limit_by_content_length_is_resource_exhausted(
    server: RunningServer,
) -> None:
    response = _post(server, "Echo", _frame(echo_pb2.EchoRequest(message="x" * (LIMIT + 1))))
    assert response.headers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert str(LIMIT) in response.headers["grpc-message"]


def test_streamed_body_over_the_limit_is_resource_exhausted(server: RunningServer) -> None:
    frame = _frame(echo_pb2.EchoRequest(message="x" * (LIMIT * 2)))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for start in range(0, len(frame), 8192):
            yield frame[start : start + 8192]

    response = _post(server, "Echo", chunks())
    assert "content-length" not in response.request.headers
    assert response.headers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])


@pytest.mark.parametrize("length", [LIMIT + 1, 0xFFFFFFFF])
@pytest.mark.parametrize("text", [False, True])
def test_a_declared_message_length_over_the_limit_is_resource_exhausted(
    server: RunningServer, length: int, text: bool
) -> None:
    # A short body claiming a 4 GB message: native gRPC answers RESOURCE_EXHAUSTED on the
    # prefix; gRPC-web used to wait for the body and answer INTERNAL "truncated message frame".
    body = struct.pack(">BI", 0, length) + b"short"
    headers = {"content-type": "application/grpc-web-text"} if text else {}
    response = _post(server, "Echo", base64.b64encode(body) if text else body, **headers)
    assert response.headers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert f"({length} vs. {LIMIT})" in response.headers["grpc-message"]


def test_an_oversized_prefix_is_refused_before_the_rest_is_read() -> None:
    registry = MethodRegistry(InterceptorChain())
    echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), registry)
    app = GrpcWebApp(registry, max_message_bytes=LIMIT)
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"{SERVICE}/Echo",
        "headers": [(b"content-type", b"application/grpc-web+proto")],
    }
    receives = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal receives
        receives += 1
        if receives > 1:
            await asyncio.Event().wait()  # the rest of a 4 GB body: never comes
        return {"type": "http.request", "body": struct.pack(">BI", 0, 2**32 - 1), "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    assert receives == 1
    headers = dict(sent[0]["headers"])
    assert headers[b"grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()


def test_message_just_under_the_limit_is_served(server: RunningServer) -> None:
    message = echo_pb2.EchoRequest(message="x" * (LIMIT - 16))
    assert message.ByteSize() <= LIMIT
    response = _post(server, "Echo", _frame(message))
    frames = _frames(response.content)
    assert _trailers(frames[-1][1])["grpc-status"] == "0"


def test_grpc_timeout_sets_the_deadline(server: RunningServer) -> None:
    request = echo_pb2.EchoRequest()
    request.delay.FromSeconds(5)
    response = _post(server, "Sleep", _frame(request), **{"grpc-timeout": "200m"})
    assert response.headers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert response.elapsed.total_seconds() < 3


def test_unknown_method_is_unimplemented(server: RunningServer) -> None:
    response = _post(server, "NoSuchMethod", _frame(echo_pb2.EchoRequest()))
    assert response.status_code == 200
    assert response.headers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])


class _H2Client:
    """A bare HTTP/2 client (h2 over a socket), for what httpx will not do: reset a stream while
    the connection stays up."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(self, path: str, body: bytes) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc-web+proto"),
        ]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)
        self._flush()
        return stream_id

    def response(self, stream_id: int) -> tuple[dict[bytes, bytes], bytes]:
        headers: dict[bytes, bytes] = {}
        body = b""
        while True:
            data = self.sock.recv(65536)
            assert data, "connection closed before the response ended"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    self._flush()
                    return headers, body
            self._flush()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self._flush()

    def close(self) -> None:
        self.sock.close()


def test_request_without_host_header_is_served(server: RunningServer) -> None:
    # sonora raised ValueError without a Host header. HTTP/1.0 may leave it out (Hypercorn's
    # HTTP/2 refuses a request without :authority itself, so this is how one reaches the app).
    frame = _frame(echo_pb2.EchoRequest(message="hostless"))
    head = (
        f"POST {SERVICE}/Echo HTTP/1.0\r\n"
        "Content-Type: application/grpc-web+proto\r\n"
        f"Content-Length: {len(frame)}\r\n\r\n"
    ).encode()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head + frame)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    assert b" 200 " in status_line
    frames = _frames(rest.split(b"\r\n\r\n", 1)[1])
    assert echo_pb2.EchoResponse.FromString(frames[0][1]).echoed.message == "hostless"
    assert _trailers(frames[1][1])["grpc-status"] == "0"


def test_client_resetting_the_stream_cancels_the_call(
    stack: tuple[RunningServer, EchoServicer],
) -> None:
    # An HTTP/2 reset leaves the connection up, so only the app noticing it ends the call.
    server, servicer = stack
    server.call(_forget_earlier_calls(servicer))
    request = echo_pb2.EchoRequest()
    request.delay.FromSeconds(30)
    client = _H2Client(server)
    try:
        stream = client.request(f"{SERVICE}/Sleep", _frame(request))
        server.call(asyncio.wait_for(servicer.sleeping.wait(), 10))
        client.reset(stream)
        server.call(asyncio.wait_for(servicer.cancelled.wait(), 10))
        # The connection still serves other calls.
        again = client.request(f"{SERVICE}/Echo", _frame(echo_pb2.EchoRequest(message="next")))
        _, body = client.response(again)
    finally:
        client.close()
    assert echo_pb2.EchoResponse.FromString(_frames(body)[0][1]).echoed.message == "next"


async def _forget_earlier_calls(servicer: EchoServicer) -> None:
    # The events are sticky, and the deadline test above cancels a Sleep too.
    servicer.sleeping.clear()
    servicer.cancelled.clear()
