"""A connection stays usable after any early refusal, or the server says it closes it.

Over HTTP/1.1 a response sent before the request body was read to its end must carry
`Connection: close` (the unread rest would be taken for the next request); one that does not
say so must leave the connection able to carry the next request. Over h2 the next stream on the
connection must be answered whatever happened to the refused one, including its DATA arriving
after the answer. Raw sockets and the h2 state machine, so that nothing in a client library
retries or reconnects behind the test's back.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Roz, RozFactory
from tests.support.h2client import H2Client

LIMIT = 16 * 1024  # the server's body limit in this module
JSON = b"application/json"
FORM = b"application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Refusal:
    """A request the server refuses; `body` is what the client means to send in all."""

    method: bytes
    path: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    status: int
    chunked: bool = False  # HTTP/1.1 only: no Content-Length, the body in chunks


def _refusals(key: str) -> dict[str, Refusal]:
    auth = ((b"authorization", f"Bearer {key}".encode()),)
    create = b"/api/v1/environments"
    return {
        "413-declared": Refusal(
            b"POST", create, ((b"content-type", JSON), *auth), b"x" * (LIMIT * 8), 413
        ),
        "413-chunked": Refusal(
            b"POST", create, ((b"content-type", JSON), *auth), b"x" * (LIMIT * 8), 413, True
        ),
        "415": Refusal(b"POST", create, ((b"content-type", b"text/plain"), *auth), b"x" * 64, 415),
        "400-malformed": Refusal(b"POST", create, ((b"content-type", JSON), *auth), b'{"na', 400),
        "401-no-key": Refusal(b"POST", create, ((b"content-type", JSON),), b'{"name": "x"}', 401),
        "404-with-body": Refusal(
            b"POST", b"/api/v1/nothing", ((b"content-type", JSON),), b"{}" * 2000, 404
        ),
        "405-with-body": Refusal(
            b"PATCH", create, ((b"content-type", JSON), *auth), b"{}" * 2000, 405
        ),
        "page-413": Refusal(
            b"POST", b"/device/session", ((b"content-type", FORM),), b"a=" + b"x" * 80_000, 413
        ),
        "page-415": Refusal(
            b"POST", b"/device/session", ((b"content-type", JSON),), b"{}" * 3000, 415
        ),
        "page-403-origin": Refusal(
            b"POST",
            b"/device/session",
            ((b"content-type", FORM), (b"origin", b"https://elsewhere.example")),
            b"a=" + b"x" * 30_000,
            403,
        ),
    }


CASES = list(_refusals("k"))


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory) -> Roz:
    return roz_factory(max_body_bytes=LIMIT, rate_limit_rps=100_000.0, rate_limit_burst=100_000)


@pytest.fixture
def connection(server: Roz) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.listener.port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


# -- HTTP/1.1 ------------------------------------------------------------------------------------


class Http1Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response; got {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True once the server has closed its end (EOF or reset), within the socket timeout."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def _send_http1(sock: socket.socket, refusal: Refusal, *, at_most: int) -> None:
    """Sends the request head and as much of its body as fits in `at_most` bytes: a client that
    sends a large body waits to see an early answer, as curl does with Expect."""
    head = [b"%s %s HTTP/1.1" % (refusal.method, refusal.path), b"host: 127.0.0.1"]
    head += [b"%s: %s" % pair for pair in refusal.headers]
    body = refusal.body[:at_most]
    if refusal.chunked:
        head.append(b"transfer-encoding: chunked")
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096])
            for i in range(0, len(body), 4096)
        )
        if len(body) == len(refusal.body):
            payload += b"0\r\n\r\n"
    else:
        head.append(b"content-length: %d" % len(refusal.body))
        payload = body
    sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + payload)


@pytest.mark.parametrize("case", CASES)
def test_http1_connection_is_reusable_or_closed_as_announced(
    server: Roz, connection: socket.socket, case: str
) -> None:
    refusal = _refusals(server.admin_key)[case]
    _send_http1(connection, refusal, at_most=LIMIT * 2)
    reader = Http1Reader(connection)
    status, headers, _ = reader.response()
    assert status == refusal.status

    if headers.get(b"connection", b"").lower() == b"close":
        assert reader.closed(), "announced Connection: close but kept the connection open"
        return
    # Not announced: the connection must carry the next request.
    if len(refusal.body) > LIMIT * 2:  # the client sends the rest first, as it must
        _send_http1_rest(connection, refusal, LIMIT * 2)
    connection.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    status, _, body = reader.response()
    assert (status, body) == (200, b'{"status":"ok"}')


def _send_http1_rest(sock: socket.socket, refusal: Refusal, sent: int) -> None:
    assert not refusal.chunked, "a chunked refusal is always announced as closing"
    sock.sendall(refusal.body[sent:])


def test_http1_announces_close_when_the_body_is_left_unread(
    server: Roz, connection: socket.socket
) -> None:
    """The very case a browser or proxy would trip on: an oversized form, then a reused
    connection."""
    refusal = _refusals(server.admin_key)["page-413"]
    _send_http1(connection, refusal, at_most=LIMIT)
    status, headers, _ = Http1Reader(connection).response()
    assert status == 413
    assert headers[b"connection"].lower() == b"close"


# -- h2 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c != "413-chunked"])
def test_h2_connection_carries_the_next_stream_after_a_refusal(
    server: Roz, connection: socket.socket, case: str
) -> None:
    refusal = _refusals(server.admin_key)[case]
    client = H2Client(connection)
    headers = [
        (b":method", refusal.method),
        (b":path", refusal.path),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1"),
        *refusal.headers,
        (b"content-length", str(len(refusal.body)).encode()),
    ]
    client.conn.send_headers(1, headers)
    first = refusal.body[: LIMIT * 2]
    client.send_data(1, first, end=len(first) == len(refusal.body))
    status, _ = client.wait(1)
    assert status == refusal.status
    # A client that had not noticed the answer yet sends the rest of its body.
    client.send_data(1, refusal.body[len(first) :], end=True)

    client.conn.send_headers(
        3,
        [
            (b":method", b"GET"),
            (b":path", b"/health"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
        ],
        end_stream=True,
    )
    client.flush()
    assert client.wait(3) == (200, b'{"status":"ok"}')
