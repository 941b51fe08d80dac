"""gRPC's wire, once for both adapters: what the bytes mean, and that both adapters agree."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import grpc
import httpx
import pytest

from gateway import wire
from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2
from tests.gateway.echo_service import echo_pb2_grpc as echo_grpc
from tests.support import grpc_web
from tests.support.h2client import H2Client
from tests.support.server import RunningServer, running

ECHO = "/testing.echo.v1.EchoService/Echo"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5S", 5.0), ("100m", 0.1), ("1H", 3600.0), ("2M", 120.0), ("7u", 7e-6), ("99999999n", 0.1)],
)
def test_timeouts_as_the_spec_spells_them(value: str, seconds: float) -> None:
    assert wire.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["1.5S", "-1S", "+5S", "123456789S", "5", "S", "5s", ""])
def test_timeouts_the_spec_does_not_allow(value: str) -> None:
    with pytest.raises(ValueError, match="malformed grpc-timeout"):
        wire.parse_timeout(value)


def test_frames_round_trip() -> None:
    framed = wire.frame(b"abc", flags=wire.TRAILER_FLAG)
    assert framed == b"\x80\x00\x00\x00\x03abc"
    assert wire.frame_header(b"xx" + framed, 2) == (wire.TRAILER_FLAG, 3)


def test_percent_encoding() -> None:
    assert wire.percent_encode("plain text") == "plain text"
    assert wire.percent_encode("100% sure: ünïcode\n") == "100%25 sure: %C3%BCn%C3%AFcode%0A"


@pytest.mark.parametrize("value", [b"aGk=", b"aGk", b" aGk= "])
def test_binary_values_padded_or_not(value: bytes) -> None:
    assert wire.decode_binary_value(value) == b"hi"


def test_binary_values_that_are_not_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        wire.decode_binary_value(b"@@@")


def test_response_metadata_drops_what_would_break_the_header_block() -> None:
    items = [
        ("x-fine", "yes"),
        ("X-Upper", "becomes lower"),
        ("content-type", "reserved"),
        ("grpc-custom", "the runtime's"),
        ("grpc-status-details-bin", b"\x01"),
        ("bad key!", "invalid"),
        ("x-text", "not ascii: é"),
        ("x-raw-bin", b"\xff\xfe"),
    ]
    common = {"reserved": {"content-type"}, "allow_status_details": False}
    assert wire.encode_metadata(items, pad_binary=False, **common) == [
        (b"x-fine", b"yes"),
        (b"x-upper", b"becomes lower"),
        (b"x-raw-bin", b"//4"),
    ]
    padded = wire.encode_metadata(items, pad_binary=True, reserved=set(), allow_status_details=True)
    assert (b"grpc-status-details-bin", b"AQ==") in padded
    assert (b"x-raw-bin", b"//4=") in padded


# -- both adapters read the same headers the same way ---------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_grpc.add_EchoServiceServicer_to_server(EchoServicer(), registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
        )

    with running(build) as running_server:
        yield running_server


@pytest.mark.parametrize(
    ("name", "value"), [("grpc-timeout", "+5S"), ("grpc-timeout", "1.5S"), ("x-id-bin", "@@@")]
)
def test_a_malformed_header_is_internal_on_both_adapters(
    server: RunningServer, name: str, value: str
) -> None:
    request = echo_pb2.EchoRequest(message="hi")
    payload = request.SerializeToString()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        native = H2Client(sock)  # raw h2: grpcio writes these headers itself, correctly
        native.conn.send_headers(
            1,
            [
                (b":method", b"POST"),
                (b":path", ECHO.encode()),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (name.encode(), value.encode()),
            ],
        )
        native.send_data(1, struct.pack(">BI", 0, len(payload)) + payload, end=True)
        native_status = native.trailers(1)[b"grpc-status"]
    web = httpx.post(
        server.url + ECHO,
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={"content-type": "application/grpc-web+proto", name: value},
        timeout=10,
    )
    status = web.headers.get("grpc-status") or grpc_web.trailers(web.content)["grpc-status"]
    assert int(native_status) == grpc.StatusCode.INTERNAL.value[0]
    assert int(status) == grpc.StatusCode.INTERNAL.value[0]
