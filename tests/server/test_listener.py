"""Hypercorn as roz configures it: a long-lived HTTP/2 connection outlives its streams."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import DataFrame

from gateway.chain import InterceptorChain
from gateway.grpc_native import REFUSAL_GRACE_SECONDS, NativeGrpcApp
from gateway.registry import MethodRegistry
from server.listener import hypercorn_config
from server.settings import Settings
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import ASGIApp, running, with_lifespan


class AnswersEarly(EchoServicer):
    """Answers a client stream after its first message, while the client is still sending."""

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        first = await anext(aiter(request_iterator))
        return echo_pb2.EchoResponse(echoed=first)


def app() -> ASGIApp:
    registry = MethodRegistry(InterceptorChain())
    echo_pb2_grpc.add_EchoServiceServicer_to_server(AnswersEarly(), registry)
    return with_lifespan(NativeGrpcApp(registry))


def framed(message: Any) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def request_headers(port: int, method: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{port}"),
        (":path", f"/testing.echo.v1.EchoService/{method}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def events_until(
    sock: socket.socket, conn: h2.connection.H2Connection, stream_id: int
) -> list[Any]:
    """Reads until `stream_id` ends; [] if the server closed the connection first."""
    seen: list[Any] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return []
        for event in conn.receive_data(data):
            seen.append(event)
            if isinstance(event, h2.events.ConnectionTerminated):
                return []
            if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                sock.sendall(conn.data_to_send())
                return seen
        sock.sendall(conn.data_to_send())


def test_data_after_the_answer_does_not_kill_the_connection() -> None:
    with running(app, config=hypercorn_config(Settings())) as server:
        sock = socket.create_connection((server.host, server.port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())

        conn.send_headers(1, request_headers(server.port, "Collect"))
        conn.send_data(1, framed(echo_pb2.EchoRequest(message="first")))
        sock.sendall(conn.data_to_send())
        assert events_until(sock, conn, 1), "the server answered the client stream"

        # The client is still streaming: more DATA for a stream the server has finished
        # (after the adapter has stopped waiting for the rest of the request). Written as raw
        # frames, as a client sends them when they cross the server's RST_STREAM in flight.
        time.sleep(REFUSAL_GRACE_SECONDS + 0.5)
        late = framed(echo_pb2.EchoRequest(message="late"))
        ending = DataFrame(1, late, flags=["END_STREAM"])
        sock.sendall(DataFrame(1, late).serialize() + ending.serialize())
        conn.send_headers(3, request_headers(server.port, "Echo"))
        conn.send_data(3, framed(echo_pb2.EchoRequest(message="still here")), end_stream=True)
        sock.sendall(conn.data_to_send())
        events = events_until(sock, conn, 3)
        sock.close()
    assert events, "the connection was closed under the client"
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert echo_pb2.EchoResponse.FromString(body[5:]).echoed.message == "still here"


def sockets_in_close_wait(port: int) -> int:
    """Server-side sockets on `port` whose peer has closed and that we have not (CLOSE-WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                if state == "08" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def wait_for_no_close_wait(port: int, seconds: float = 5) -> int:
    deadline = time.monotonic() + seconds
    while (left := sockets_in_close_wait(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_peer_that_closes_releases_its_socket_at_once() -> None:
    """HTTP/1.1 keep-alive and h2 connections the client closed are closed by the server too,
    not held until the keep-alive timeout (300 s by default) while the descriptors run out."""
    settings = Settings()
    assert settings.keep_alive_timeout_seconds >= 60
    with running(app, config=hypercorn_config(settings)) as server:
        for _ in range(20):
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        for _ in range(20):
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                conn.send_headers(1, request_headers(server.port, "Echo"))
                conn.send_data(1, framed(echo_pb2.EchoRequest(message="hi")), end_stream=True)
                sock.sendall(conn.data_to_send())
                assert events_until(sock, conn, 1)
        assert wait_for_no_close_wait(server.port) == 0
