"""Clients that do not read, flood, reset in a loop or open too many streams cannot pin the server.

Raw HTTP/2 against a real roz server, unauthenticated where the attack needs no key (server
reflection), with the server's memory read from this process (it runs in a thread here).
"""

from __future__ import annotations

import gc
import socket
import struct
import time
from collections.abc import Iterator

import grpc
import h2.errors
import h2.events
import h2.settings
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from roz.v1 import environments_pb2, environments_pb2_grpc

from gateway.serving import MAX_RESETS
from tests.e2e.conftest import Roz, RozFactory
from tests.support.h2client import H2Client

REFLECTION = b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory) -> Roz:
    return roz_factory(
        max_buffered_bytes_per_call=4 * MIB + 1024,
        max_concurrent_streams=10,
        rate_limit_rps=100_000.0,
        rate_limit_burst=100_000,
    )


@pytest.fixture
def connection(server: Roz) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.listener.port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def rss_bytes() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def grpc_headers(path: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":path", path),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


def framed(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def reflection_request() -> bytes:
    return framed(
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="roz.v1.EnvironmentService"
        ).SerializeToString()
    )


def still_serves(server: Roz) -> None:
    with server.channel() as channel:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        reply = stub.ListEnvironments(
            environments_pb2.ListEnvironmentsRequest(),
            metadata=[("authorization", f"Bearer {server.admin_key}")],
            timeout=10,
        )
    assert reply.next_page_token == ""


def test_a_client_that_never_reads_cannot_make_the_server_buffer_its_answers(
    server: Roz, connection: socket.socket
) -> None:
    """The issue's repro: reflection over h2c with a one-byte window, 20,000 requests, never
    read. Each answer is ~19 KB, so buffering them all is ~400 MB."""
    client = H2Client(connection, window=1)
    client.conn.send_headers(1, grpc_headers(REFLECTION))
    client.flush()
    before = rss_bytes()
    request = reflection_request()
    batch = request * 500
    for _ in range(40):
        client.send_data(1, batch, end=False)
    time.sleep(0.5)  # let the server do whatever it would do with them
    grown = rss_bytes() - before
    assert grown < 64 * MIB, (
        f"the server grew by {grown // MIB} MiB for a client that reads nothing"
    )
    connection.close()
    still_serves(server)


def test_a_client_that_floods_a_stream_is_cut_off_with_resource_exhausted(
    server: Roz, connection: socket.socket
) -> None:
    client = H2Client(connection, window=1)
    client.conn.send_headers(1, grpc_headers(REFLECTION))
    request = reflection_request()
    # Far more than 4 MiB of requests while the servicer is held by the unread answers.
    for _ in range(40):
        if not client.send_data(1, request * 2000, end=False):
            break
    client.conn.increment_flow_control_window(2**30)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    client.flush()
    trailers = client.trailers(1)
    assert trailers[b"grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()
    assert b"faster than the server reads" in trailers[b"grpc-message"]
    still_serves(server)


def test_rapid_reset_gets_goaway_enhance_your_calm_and_spares_other_connections(
    server: Roz, connection: socket.socket
) -> None:
    client = H2Client(connection)
    for stream_id in range(1, 2 * (MAX_RESETS + 50), 2):
        client.conn.send_headers(stream_id, grpc_headers(REFLECTION))
        client.conn.reset_stream(stream_id)
    client.flush()
    with pytest.raises(ConnectionError, match="GOAWAY"):
        client.wait_closed()
    assert client.terminated is not None
    assert client.terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    still_serves(server)


def test_streams_over_the_advertised_limit_are_refused_one_by_one(
    server: Roz, connection: socket.socket
) -> None:
    client = H2Client(connection, window=1)  # the first ten stay open, held by unread answers
    client.conn.remote_settings.max_concurrent_streams = 1000  # a client that ignores the limit
    ids = [1 + 2 * i for i in range(12)]
    for stream_id in ids:
        client.conn.send_headers(stream_id, grpc_headers(REFLECTION))
        client.conn.send_data(stream_id, reflection_request())
    client.flush()
    while not client.was_reset(ids[-1]):
        client.pump()
    refused = [i for i in ids if client.reset_code(i) == h2.errors.ErrorCodes.REFUSED_STREAM]
    assert refused == ids[10:]
    assert client.terminated is None
    # The ten within the limit still work once the client reads.
    client.conn.increment_flow_control_window(2**30)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    for stream_id in ids[:10]:
        client.conn.end_stream(stream_id)
    client.flush()
    for stream_id in ids[:10]:
        assert client.trailers(stream_id)[b"grpc-status"] == b"0"


def test_abandoned_streams_give_their_memory_back(server: Roz) -> None:
    """1,000 streams whose clients stopped reading and then went away."""
    before = rss_bytes()
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", server.listener.port), timeout=10) as sock:
            client = H2Client(sock, window=1)
            for stream_id in range(1, 20, 2):
                client.conn.send_headers(stream_id, grpc_headers(REFLECTION))
                client.conn.send_data(stream_id, reflection_request() * 20)
            client.flush()
    still_serves(server)
    deadline = time.monotonic() + 10
    while server.app.grpc.active_calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app.grpc.active_calls() == 0
    grown = rss_bytes() - before
    assert grown < 64 * MIB, f"{grown // MIB} MiB kept after the clients left"
