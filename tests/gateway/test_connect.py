"""The Connect protocol through the router on a real Hypercorn listener, at the wire: httpx for
HTTP/1.1 and a bare h2 client for a bidirectional stream over HTTP/2."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.chain import InterceptorChain
from gateway.connect import ConnectApp
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import RunningServer, running

LIMIT = 64 * 1024
ORIGIN = "https://console.example"
SERVICE = "/testing.echo.v1.EchoService"
JSON = {"content-type": "application/json"}
PROTO = {"content-type": "application/proto"}


class MetadataEcho(EchoServicer):
    """Echo that also sends initial and trailing metadata when asked (tags headers, trailers)."""

    async def Echo(self, request: Any, context: Any) -> Any:
        if "headers" in request.tags:
            await context.send_initial_metadata(
                [("x-initial", "first"), ("x-raw-bin", b"\x00\x01")]
            )
        if "trailers" in request.tags:
            context.set_trailing_metadata([("x-trailing", "last"), ("x-sum-bin", b"\xff")])
        return await super().Echo(request, context)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(MetadataEcho(), registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry, max_message_bytes=LIMIT),
            rest_app=RestApp(registry),
            connect_app=ConnectApp(registry, max_message_bytes=LIMIT),
            allowed_origins=[ORIGIN],
        )

    with running(build) as running_server:
        yield running_server


def _post(
    server: RunningServer, method: str, content: Any = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{server.url}{SERVICE}/{method}", content=content, headers=headers or JSON, timeout=10
    )


def _get(server: RunningServer, method: str, query: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{server.url}{SERVICE}/{method}?{query}", headers=headers, timeout=10)


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _envelopes(body: bytes) -> list[tuple[int, bytes]]:
    found = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        found.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return found


def _unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


# -- unary POST ------------------------------------------------------------------------------


def test_unary_json_uses_proto_field_names_out_and_takes_both_spellings_in(
    server: RunningServer,
) -> None:
    response = _post(
        server,
        "Echo",
        b'{"message": "hi", "pageToken": "camel", "big": "12345678901234", "color": "COLOR_RED"}',
        {**JSON, "connect-protocol-version": "1"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    echoed = response.json()["echoed"]
    assert echoed["page_token"] == "camel"
    assert echoed["big"] == "12345678901234"  # int64 as a string
    assert echoed["color"] == "COLOR_RED"


def test_unary_proto_round_trips_the_binary_message(server: RunningServer) -> None:
    request = echo_pb2.EchoRequest(message="bytes", blob=b"\x00\xff", big=-5)
    response = _post(server, "Echo", request.SerializeToString(), PROTO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    assert echo_pb2.EchoResponse.FromString(response.content).echoed == request


def test_an_empty_body_is_the_empty_message(server: RunningServer) -> None:
    assert _post(server, "Echo", b"", PROTO).status_code == 200
    assert _post(server, "Echo", b"", JSON).json()["echoed"]["message"] == ""


def test_json_with_a_charset_parameter_is_accepted(server: RunningServer) -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    assert _post(server, "Echo", b'{"message": "ok"}', headers).status_code == 200


def test_metadata_comes_from_headers_minus_transport_and_connect_headers(
    server: RunningServer,
) -> None:
    headers = {
        **JSON,
        "connect-protocol-version": "1",
        "connect-timeout-ms": "5000",
        "x-custom": "value",
        "x-token-bin": _unpadded_b64(b"\x01\x02"),
    }
    seen = _post(server, "Echo", b"{}", headers).json()["metadata"]
    assert "x-custom=value" in seen
    assert "x-token-bin=b'\\x01\\x02'" in seen
    assert not [entry for entry in seen if entry.startswith(("connect-", "content-type"))]


def test_initial_metadata_is_headers_and_trailing_metadata_is_trailer_headers(
    server: RunningServer,
) -> None:
    response = _post(server, "Echo", b'{"tags": ["headers", "trailers"]}')
    assert response.status_code == 200
    assert response.headers["x-initial"] == "first"
    assert base64.b64decode(response.headers["x-raw-bin"] + "==") == b"\x00\x01"
    assert response.headers["trailer-x-trailing"] == "last"
    assert base64.b64decode(response.headers["trailer-x-sum-bin"] + "==") == b"\xff"


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name", "http_status"),
    [
        (grpc.StatusCode.CANCELLED, "canceled", 499),
        (grpc.StatusCode.UNKNOWN, "unknown", 500),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", 400),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", 504),
        (grpc.StatusCode.NOT_FOUND, "not_found", 404),
        (grpc.StatusCode.ALREADY_EXISTS, "already_exists", 409),
        (grpc.StatusCode.PERMISSION_DENIED, "permission_denied", 403),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", 429),
        (grpc.StatusCode.FAILED_PRECONDITION, "failed_precondition", 400),
        (grpc.StatusCode.ABORTED, "aborted", 409),
        (grpc.StatusCode.OUT_OF_RANGE, "out_of_range", 400),
        (grpc.StatusCode.UNIMPLEMENTED, "unimplemented", 501),
        (grpc.StatusCode.INTERNAL, "internal", 500),
        (grpc.StatusCode.UNAVAILABLE, "unavailable", 503),
        (grpc.StatusCode.DATA_LOSS, "data_loss", 500),
        (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", 401),
    ],
)
def test_every_code_has_its_name_and_connects_http_status(
    server: RunningServer, code: grpc.StatusCode, name: str, http_status: int
) -> None:
    """Conformance: connect_unary / "errors" — each code with the spec's HTTP status."""
    body = json.dumps({"code": code.value[0], "message": "boom ✓"}).encode()
    response = _post(server, "Fail", body)
    assert response.status_code == http_status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == name
    assert response.json()["message"] == "boom ✓"


def test_error_details_are_the_status_native_clients_get(server: RunningServer) -> None:
    response = _post(server, "Fail", b'{"code": 3, "message": "bad"}')
    assert response.status_code == 400
    body = response.json()
    (detail,) = body["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    assert "=" not in detail["value"]
    bad = error_details_pb2.BadRequest.FromString(base64.b64decode(detail["value"] + "=="))
    assert (bad.field_violations[0].field, bad.field_violations[0].description) == (
        "message",
        "is wrong",
    )
    assert detail["debug"]["field_violations"][0]["field"] == "message"

    # The same detail over native gRPC, in grpc-status-details-bin.
    with grpc.insecure_channel(server.target) as channel:
        fail = channel.unary_unary(
            f"{SERVICE}/Fail",
            echo_pb2.EchoRequest.SerializeToString,
            echo_pb2.EchoResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            fail(echo_pb2.EchoRequest(code=3, message="bad"))
    trailing = dict(raised.value.trailing_metadata())  # type: ignore[attr-defined]
    native = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert native.details[0].value == base64.b64decode(detail["value"] + "==")


def test_an_unknown_field_is_invalid_argument_naming_it(server: RunningServer) -> None:
    response = _post(server, "Echo", b'{"mesage": "typo"}')
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert body["details"][0]["debug"]["field_violations"][0]["field"] == "mesage"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"message": ', JSON),
        (b"[1, 2]", JSON),
        (b'{"count": "many"}', JSON),
        (b"\xff\xfe", JSON),
        (b"\x0a\xff\xff\xff\xff\x0f", PROTO),  # a length that runs past the end
    ],
)
def test_a_malformed_message_is_invalid_argument_never_a_500(
    server: RunningServer, body: bytes, headers: dict[str, str]
) -> None:
    response = _post(server, "Echo", body, headers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"


def test_an_unknown_procedure_is_404_unimplemented(server: RunningServer) -> None:
    """Conformance: connect_unary / unimplemented — an unknown method."""
    response = _post(server, "NoSuchMethod", b"{}")
    assert response.status_code == 404
    assert response.json()["code"] == "unimplemented"
    response = httpx.post(f"{server.url}/no.such.Service/Method", json={}, timeout=10)
    assert (response.status_code, response.json()["code"]) == (404, "unimplemented")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/connect+json", ""]
)
def test_a_unary_call_with_another_content_type_is_415_with_accept_post(
    server: RunningServer, content_type: str
) -> None:
    """Conformance: connect_unexpected_requests — unexpected content types."""
    response = _post(server, "Echo", b"{}", {"content-type": content_type})
    assert response.status_code == 415
    assert response.headers["accept-post"] == "application/json, application/proto"


def test_a_streaming_method_refuses_unary_content_types_with_415(server: RunningServer) -> None:
    response = _post(server, "Expand", b"{}")
    assert response.status_code == 415
    assert "application/connect+json" in response.headers["accept-post"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_http_methods_are_405_with_allow(server: RunningServer, method: str) -> None:
    response = httpx.request(method, f"{server.url}{SERVICE}/Echo", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    response = httpx.request(method, f"{server.url}{SERVICE}/Create", timeout=10)
    assert response.headers["allow"] == "POST"


def test_an_unsupported_protocol_version_is_invalid_argument(server: RunningServer) -> None:
    """Conformance: connect_unexpected_requests — bad connect-protocol-version."""
    response = _post(server, "Echo", b"{}", {**JSON, "connect-protocol-version": "2"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert "connect-protocol-version" in response.json()["message"]


def test_the_protocol_version_header_is_not_required(server: RunningServer) -> None:
    assert _post(server, "Echo", b"{}").status_code == 200


@pytest.mark.parametrize("timeout", ["soon", "-1", "12345678901", "1.5", ""])
def test_a_malformed_timeout_is_invalid_argument(server: RunningServer, timeout: str) -> None:
    """Conformance: connect_unexpected_requests — bad connect-timeout-ms."""
    response = _post(server, "Echo", b"{}", {**JSON, "connect-timeout-ms": timeout})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"


def test_a_timeout_ends_the_call_with_deadline_exceeded(server: RunningServer) -> None:
    """Conformance: connect_timeouts — unary deadline exceeded."""
    started = time.monotonic()
    response = _post(server, "Sleep", b'{"delay": "5s"}', {**JSON, "connect-timeout-ms": "200"})
    assert response.status_code == 504
    assert response.json()["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 4


def test_a_message_over_the_limit_is_resource_exhausted(server: RunningServer) -> None:
    body = json.dumps({"message": "x" * (LIMIT + 1)}).encode()
    response = _post(server, "Echo", body)
    assert response.status_code == 429
    assert response.json()["code"] == "resource_exhausted"

    def chunks() -> Iterator[bytes]:  # no content-length: the server counts as it reads
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = _post(server, "Echo", chunks())
    assert response.json()["code"] == "resource_exhausted"


# -- compression -----------------------------------------------------------------------------


def test_a_gzip_request_is_inflated(server: RunningServer) -> None:
    """Conformance: connect_compression — gzip request."""
    body = gzip.compress(b'{"message": "squeezed"}')
    response = _post(server, "Echo", body, {**JSON, "content-encoding": "gzip"})
    assert response.json()["echoed"]["message"] == "squeezed"


def test_a_large_response_is_gzipped_when_accepted_and_a_small_one_is_not(
    server: RunningServer,
) -> None:
    """Conformance: connect_compression — gzip response."""
    big = json.dumps({"message": "y" * 2000}).encode()
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{server.url}{SERVICE}/Echo",
            content=big,
            headers={**JSON, "accept-encoding": "gzip"},
        )
        assert response.headers["content-encoding"] == "gzip"
        assert response.json()["echoed"]["message"] == "y" * 2000  # httpx inflated it
        small = client.post(
            f"{server.url}{SERVICE}/Echo",
            content=b"{}",
            headers={**JSON, "accept-encoding": "gzip"},
        )
        assert "content-encoding" not in small.headers
        identity = client.post(
            f"{server.url}{SERVICE}/Echo",
            content=big,
            headers={**JSON, "accept-encoding": "identity"},
        )
        assert "content-encoding" not in identity.headers
        # Past 16 KiB the answer is compressed off the event loop: the same bytes come back.
        huge = json.dumps({"message": "z" * 40_000}).encode()
        compressed = client.post(
            f"{server.url}{SERVICE}/Echo",
            content=huge,
            headers={**JSON, "accept-encoding": "gzip"},
        )
        assert compressed.headers["content-encoding"] == "gzip"
        assert int(compressed.headers["content-length"]) < 2_000
        assert compressed.json()["echoed"]["message"] == "z" * 40_000


def test_an_unknown_compression_is_unimplemented_naming_what_is_accepted(
    server: RunningServer,
) -> None:
    """Conformance: connect_compression — unsupported request compression."""
    response = _post(server, "Echo", b"{}", {**JSON, "content-encoding": "snappy"})
    assert response.status_code == 501
    assert response.json()["code"] == "unimplemented"
    assert "gzip" in response.json()["message"]
    assert response.headers["accept-encoding"] == "gzip"


def test_a_corrupt_gzip_body_is_invalid_argument(server: RunningServer) -> None:
    response = _post(server, "Echo", b"not gzip", {**JSON, "content-encoding": "gzip"})
    assert (response.status_code, response.json()["code"]) == (400, "invalid_argument")


def test_a_gzip_bomb_is_resource_exhausted(server: RunningServer) -> None:
    bomb = gzip.compress(b'{"message": "' + b"z" * (LIMIT * 4) + b'"}')
    assert len(bomb) < LIMIT
    response = _post(server, "Echo", bomb, {**JSON, "content-encoding": "gzip"})
    assert response.json()["code"] == "resource_exhausted"


# -- GET -------------------------------------------------------------------------------------


def test_get_with_a_percent_encoded_json_message(server: RunningServer) -> None:
    """Conformance: connect_get — JSON message, percent-encoded."""
    message = quote('{"message": "gotten & kept", "pageToken": "p"}', safe="")
    response = _get(server, "Echo", f"connect=v1&encoding=json&message={message}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["echoed"]["message"] == "gotten & kept"
    assert response.json()["echoed"]["page_token"] == "p"


def test_get_with_a_base64url_proto_message(server: RunningServer) -> None:
    """Conformance: connect_get — binary message, base64url with and without padding."""
    request = echo_pb2.EchoRequest(message="binary?>", blob=b"\xfb\xff")
    encoded = base64.urlsafe_b64encode(request.SerializeToString()).decode()
    for message in (encoded, encoded.rstrip("=")):
        response = _get(server, "Echo", f"connect=v1&encoding=proto&base64=1&message={message}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/proto"
        assert echo_pb2.EchoResponse.FromString(response.content).echoed == request


def test_get_with_a_gzip_compressed_message(server: RunningServer) -> None:
    """Conformance: connect_get — compression= on the query."""
    packed = base64.urlsafe_b64encode(gzip.compress(b'{"message": "zipped"}')).decode()
    query = f"connect=v1&encoding=json&base64=1&compression=gzip&message={packed}"
    assert _get(server, "Echo", query).json()["echoed"]["message"] == "zipped"


def test_get_errors_are_connect_errors(server: RunningServer) -> None:
    message = quote('{"code": 5, "message": "nothing here"}')
    response = _get(server, "Fail", f"connect=v1&encoding=json&message={message}")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "nothing here"}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("connect=v1&message=%7B%7D", "invalid_argument"),  # no encoding
        ("connect=v1&encoding=json", "invalid_argument"),  # no message
        ("connect=v1&encoding=xml&message=%7B%7D", "invalid_argument"),
        ("connect=v2&encoding=json&message=%7B%7D", "invalid_argument"),
        ("connect=v1&encoding=proto&base64=1&message=%%%", "invalid_argument"),
        ("connect=v1&encoding=json&compression=br&message=%7B%7D", "unimplemented"),
    ],
)
def test_bad_get_queries_are_refused_clearly(server: RunningServer, query: str, code: str) -> None:
    """Conformance: connect_get / connect_unexpected_requests — malformed GET queries."""
    response = _get(server, "Echo", query)
    assert response.json()["code"] == code
    assert response.status_code in (400, 501)


def test_get_on_a_method_with_side_effects_is_405_allow_post(server: RunningServer) -> None:
    """Conformance: connect_get — GET is only for NO_SIDE_EFFECTS methods."""
    response = _get(server, "Create", "connect=v1&encoding=json&message=%7B%7D")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    response = _get(server, "Expand", "connect=v1&encoding=json&message=%7B%7D")
    assert response.status_code == 405


# -- server streaming ------------------------------------------------------------------------


def test_server_stream_in_json_ends_with_an_end_stream_message(server: RunningServer) -> None:
    """Conformance: connect_server_stream — messages then end-of-stream."""
    response = _post(
        server,
        "Expand",
        _envelope(b'{"count": 3, "pageToken": "t"}'),
        {"content-type": "application/connect+json"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/connect+json"
    *messages, end = _envelopes(response.content)
    assert [json.loads(payload)["index"] for _, payload in messages] == [0, 1, 2]
    assert json.loads(messages[0][1])["echoed"]["page_token"] == "t"
    assert end[0] == 0x02
    assert json.loads(end[1]) == {}


def test_server_stream_in_proto(server: RunningServer) -> None:
    request = echo_pb2.EchoRequest(count=2)
    response = _post(
        server,
        "Expand",
        _envelope(request.SerializeToString()),
        {"content-type": "application/connect+proto", "connect-protocol-version": "1"},
    )
    *messages, (end_flags, _) = _envelopes(response.content)
    assert [echo_pb2.EchoResponse.FromString(m).index for _, m in messages] == [0, 1]
    assert end_flags == 0x02


def test_a_stream_error_after_messages_is_in_the_end_stream_message(
    server: RunningServer,
) -> None:
    """Conformance: connect_server_stream — error after responses."""
    response = _post(
        server,
        "Expand",
        _envelope(b'{"count": 1, "code": 8}'),
        {"content-type": "application/connect+json"},
    )
    assert response.status_code == 200  # streaming errors never change the HTTP status
    first, (flags, end) = _envelopes(response.content)
    assert json.loads(first[1])["index"] == 0
    assert flags == 0x02
    assert json.loads(end)["error"] == {"code": "resource_exhausted", "message": "stream failed"}


def test_a_stream_refused_before_any_message_answers_200_with_the_error(
    server: RunningServer,
) -> None:
    """Conformance: connect_unexpected_requests — streaming request errors."""
    response = _post(
        server,
        "Expand",
        _envelope(b'{"nope": 1}'),
        {"content-type": "application/connect+json"},
    )
    assert response.status_code == 200
    ((flags, end),) = _envelopes(response.content)
    assert flags == 0x02
    assert json.loads(end)["error"]["code"] == "invalid_argument"


def test_stream_compression_both_ways(server: RunningServer) -> None:
    """Conformance: connect_compression — streaming gzip."""
    payload = gzip.compress(json.dumps({"count": 2, "message": "m" * 1500}).encode())
    response = _post(
        server,
        "Expand",
        _envelope(payload, flags=0x01),
        {
            "content-type": "application/connect+json",
            "connect-content-encoding": "gzip",
            "connect-accept-encoding": "gzip",
        },
    )
    assert response.headers["connect-content-encoding"] == "gzip"
    *messages, (end_flags, _) = _envelopes(response.content)
    assert [flags for flags, _ in messages] == [0x01, 0x01]
    assert json.loads(gzip.decompress(messages[1][1]))["index"] == 1
    assert end_flags & 0x02


def test_a_compressed_envelope_without_an_encoding_is_an_error(server: RunningServer) -> None:
    response = _post(
        server,
        "Expand",
        _envelope(gzip.compress(b"{}"), flags=0x01),
        {"content-type": "application/connect+json"},
    )
    (_, end) = _envelopes(response.content)[-1]
    assert json.loads(end)["error"]["code"] == "internal"


def test_a_streamed_message_over_the_limit_is_resource_exhausted(server: RunningServer) -> None:
    body = struct.pack(">BI", 0, LIMIT + 1) + b"{}"
    response = _post(server, "Expand", body, {"content-type": "application/connect+json"})
    (_, end) = _envelopes(response.content)[-1]
    assert json.loads(end)["error"]["code"] == "resource_exhausted"


def test_a_stream_deadline_is_deadline_exceeded_in_the_end_stream(server: RunningServer) -> None:
    """Conformance: connect_timeouts — streaming deadline exceeded."""
    response = _post(
        server,
        "Collect",
        _envelope(b'{"message": "a"}'),
        {"content-type": "application/connect+json", "connect-timeout-ms": "1"},
    )
    (_, end) = _envelopes(response.content)[-1]
    # Either the deadline passed before the servicer finished, or it finished first.
    document = json.loads(end)
    assert document == {} or document["error"]["code"] == "deadline_exceeded"


# -- client and bidirectional streaming ------------------------------------------------------


def test_client_stream_over_http1(server: RunningServer) -> None:
    body = b"".join(_envelope(json.dumps({"message": part}).encode()) for part in "abc")
    response = _post(server, "Collect", body, {"content-type": "application/connect+json"})
    message, (end_flags, end) = _envelopes(response.content)
    assert json.loads(message[1])["echoed"]["message"] == "abc"
    assert (end_flags, json.loads(end)) == (0x02, {})


def test_bidi_over_http1_is_505(server: RunningServer) -> None:
    response = _post(server, "Chat", b"", {"content-type": "application/connect+json"})
    assert response.status_code == 505


def test_bidi_stream_over_http2_answers_each_message_as_it_arrives(server: RunningServer) -> None:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"{SERVICE}/Chat"),
            (":authority", "localhost"),
            ("content-type", "application/connect+json"),
        ],
    )
    received = bytearray()
    ended = False

    def read_until(predicate: Any) -> None:
        nonlocal ended
        while not predicate():
            data = sock.recv(65536)
            assert data, "connection closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received.extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())

    try:
        conn.send_data(stream, _envelope(b'{"message": "one"}'))
        sock.sendall(conn.data_to_send())
        read_until(lambda: len(_complete(received)) >= 1)  # answered before the stream ends
        conn.send_data(stream, _envelope(b'{"message": "two"}'), end_stream=True)
        sock.sendall(conn.data_to_send())
        read_until(lambda: ended)
    finally:
        sock.close()
    *messages, (end_flags, end) = _envelopes(bytes(received))
    assert [json.loads(m)["echoed"]["message"] for _, m in messages] == ["one", "two"]
    assert (end_flags, json.loads(end)) == (0x02, {})


def _complete(buffer: bytearray) -> list[tuple[int, bytes]]:
    found, offset = [], 0
    while len(buffer) - offset >= 5:
        flags, length = struct.unpack(">BI", buffer[offset : offset + 5])
        if len(buffer) - offset - 5 < length:
            break
        found.append((flags, bytes(buffer[offset + 5 : offset + 5 + length])))
        offset += 5 + length
    return found


# -- routing and CORS ------------------------------------------------------------------------


def test_rest_paths_stay_rest(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/v1/echo", json={"message": "rest"}, timeout=10)
    assert response.json()["echoed"]["message"] == "rest"
    missing = httpx.post(f"{server.url}/v1/nothing", json={}, timeout=10)
    assert missing.json()["code"] == 5  # REST's google.rpc.Status, not Connect's error


def test_cors_preflight_and_exposed_headers_for_connect(server: RunningServer) -> None:
    preflight = httpx.options(
        f"{server.url}{SERVICE}/Echo",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "GET",
            "access-control-request-headers": "connect-protocol-version, content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "connect-protocol-version" in preflight.headers["access-control-allow-headers"]

    response = _post(server, "Echo", b'{"tags": ["trailers"]}', {**JSON, "origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"]
    assert "trailer-x-trailing" in exposed
    assert "grpc-status-details-bin" in exposed
