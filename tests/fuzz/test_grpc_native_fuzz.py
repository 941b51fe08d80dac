"""Every registered method over native gRPC: grpcio with payloads that are not the message, and
a bare HTTP/2 client (the h2 package) with frames grpcio would never send.

As for gRPC-web: a grpc-status always, never UNKNOWN, INTERNAL only for faults of the wire
(gRPC prescribes it for a frame or message that cannot be read), never the chain's "internal
error"; the connection and the server's health survive each batch.
"""

from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from gateway.registry import Method
from tests.e2e.conftest import Roz
from tests.fuzz import strategies
from tests.fuzz.conftest import assert_healthy, fuzz_settings

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

EXAMPLES = 8
PROTOCOL_FAULTS = re.compile(
    r"could not parse the request|invalid message flag|request ended inside a message"
    r"|could not decompress|truncated compressed|unary call sent"
    r"|compressed message without a grpc-encoding|malformed"
)


def methods(roz: Roz) -> list[Method]:
    return sorted(roz.app.registry.methods(), key=lambda method: method.path)


def check(code: grpc.StatusCode, message: str) -> None:
    assert code != grpc.StatusCode.UNKNOWN, message
    if code == grpc.StatusCode.INTERNAL:
        assert PROTOCOL_FAULTS.match(message), message


# -- grpcio, with bytes that may not be the message ----------------------------------------------


def _call(channel: grpc.Channel, method: Method, payload: bytes, key: str) -> None:
    metadata = [("authorization", f"Bearer {key}")]
    path, kind = method.path, method.kind
    try:
        if not kind.request_streaming and not kind.response_streaming:
            channel.unary_unary(path)(payload, metadata=metadata, timeout=10)
        elif not kind.request_streaming:
            for _ in channel.unary_stream(path)(payload, metadata=metadata, timeout=0.3):
                pass
        elif not kind.response_streaming:
            channel.stream_unary(path)(iter([payload]), metadata=metadata, timeout=10)
        else:
            for _ in channel.stream_stream(path)(iter([payload]), metadata=metadata, timeout=0.3):
                pass
    except grpc.RpcError as error:
        check(error.code(), error.details() or "")


def fuzz_with_grpcio(channel: grpc.Channel, key: str, method: Method) -> None:
    descriptor = method.request_class.DESCRIPTOR
    payloads = st.one_of(
        strategies.message(descriptor).map(lambda built: built.SerializeToString()),
        st.binary(max_size=40),
    )

    @fuzz_settings(EXAMPLES)
    @given(payload=payloads)
    def fuzz(payload: bytes) -> None:
        note(f"{method.path} {payload!r}")
        _call(channel, method, payload, key)

    fuzz()


def test_no_method_breaks_on_bad_payloads_from_grpcio(fuzzed: Roz) -> None:
    found = methods(fuzzed)
    assert len(found) > 30
    with fuzzed.channel() as channel:
        for method in found:
            fuzz_with_grpcio(channel, fuzzed.new_tenant("fuzz-grpc"), method)
            assert_healthy(fuzzed)


# -- a bare HTTP/2 client, with frames grpcio would never send ------------------------------------


class H2Client:
    """One HTTP/2 connection; each call is a stream with its whole body and END_STREAM."""

    def __init__(self, roz: Roz) -> None:
        self.sock = socket.create_connection((roz.listener.host, roz.listener.port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def call(self, path: str, body: bytes, headers: list[tuple[str, str]]) -> dict[str, str]:
        """The response's headers and trailers, merged."""
        stream_id: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *headers,
            ],
        )
        # Within the peer's window and frame size: the fuzzed bodies are small.
        self.conn.send_data(stream_id, body, end_stream=True)
        self._flush()
        fields: dict[str, str] = {}
        while True:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    if event.stream_id == stream_id:
                        fields.update(_text(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif (
                    isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
                    and event.stream_id == stream_id
                ):
                    self._flush()
                    return fields
            self._flush()

    def close(self) -> None:
        self.sock.close()


def _text(headers: Any) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in headers
    }


def fuzz_with_h2(client: H2Client, key: str, method: Method) -> None:
    descriptor = method.request_class.DESCRIPTOR
    extra = st.sampled_from(
        [
            [],
            [("grpc-encoding", "gzip")],
            [("grpc-encoding", "br")],
            [("grpc-timeout", "nonsense")],
            [("x-thing-bin", "!!not base64")],
        ]
    )

    @fuzz_settings(EXAMPLES)
    @given(body=strategies.framed_body(descriptor), headers=extra)
    def fuzz(body: bytes, headers: list[tuple[str, str]]) -> None:
        timeout = "300m" if method.kind.response_streaming else "10S"
        sent = [("authorization", f"Bearer {key}"), ("grpc-timeout", timeout), *headers]
        note(f"{method.path} {sent} {body!r}")
        fields = client.call(method.path, body, sent)
        assert fields.get(":status") == "200", fields
        code = grpc.StatusCode(_CODES[int(fields["grpc-status"])])
        check(code, unquote(fields.get("grpc-message", "")))

    fuzz()


_CODES = {code.value[0]: code.value for code in grpc.StatusCode}


def test_no_method_breaks_on_malformed_frames_over_raw_h2(fuzzed: Roz) -> None:
    found = methods(fuzzed)
    client = H2Client(fuzzed)
    try:
        for method in found:
            fuzz_with_h2(client, fuzzed.new_tenant("fuzz-h2"), method)
            assert_healthy(fuzzed)
    finally:
        client.close()
