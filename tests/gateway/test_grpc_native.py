"""Native gRPC on a real Hypercorn listener: grpcio clients, and raw h2 for wire details."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import queue
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.registry import MethodRegistry
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import RunningServer, running, with_lifespan

SERVICE = "/testing.echo.v1.EchoService"
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
WAIT = 10  # seconds; a bound for things that should happen at once, never a pause


class MetadataEchoServicer(EchoServicer):
    """EchoService, plus metadata sent back and a record of what a cancelled Sleep saw."""

    def __init__(self) -> None:
        super().__init__()
        self.context_cancelled = False

    async def Create(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(
            [("x-initial", "hello"), ("x-initial-bin", b"\x00\x01")]
        )
        context.set_trailing_metadata([("x-trailing", "bye"), ("x-trailing-bin", b"\xff\xfe\xfd")])
        return echo_pb2.EchoResponse(echoed=request)

    async def Sleep(self, request: Any, context: Any) -> Any:
        try:
            return await super().Sleep(request, context)
        except asyncio.CancelledError:
            self.context_cancelled = context.cancelled()
            raise

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        # Headers go out before any request is read, so a client sees them with no message.
        await context.send_initial_metadata([("x-chat", "open")])
        async for response in super().Chat(request_iterator, context):
            yield response


@dataclass
class Harness:
    server: RunningServer
    app: NativeGrpcApp
    servicer: MetadataEchoServicer
    # Request headers per path and the client address of every request, as the app saw them.
    seen_headers: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    seen_clients: list[Any] = field(default_factory=list)

    def reset(self) -> None:
        async def clear() -> None:
            self.servicer.sleeping.clear()
            self.servicer.cancelled.clear()
            self.servicer.context_cancelled = False

        self.server.call(clear())

    def wait_for(self, event: asyncio.Event) -> None:
        self.server.call(asyncio.wait_for(event.wait(), WAIT))

    def active_calls(self) -> int:
        async def count() -> int:
            return self.app.active_calls()

        return int(self.server.call(count()))

    def wait_until_idle(self) -> None:
        """Polls the app until no call is in flight (a call ends a few loop steps after its
        servicer); fails after WAIT seconds."""

        async def idle() -> None:
            # The app has no idle event (nothing but tests would wait for one): poll it.
            while self.app.active_calls():  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        self.server.call(asyncio.wait_for(idle(), WAIT))


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    built: dict[str, Any] = {}
    seen: dict[str, dict[bytes, bytes]] = {}
    clients: list[Any] = []

    def factory() -> Any:
        servicer = MetadataEchoServicer()
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(servicer, registry)
        app = NativeGrpcApp(registry, max_message_bytes=MAX_MESSAGE_BYTES)
        built.update(app=app, servicer=servicer)

        async def recorder(scope: Any, receive: Any, send: Any) -> None:
            seen[scope["path"]] = dict(scope["headers"])
            clients.append(tuple(scope["client"]))
            await app(scope, receive, send)

        return with_lifespan(recorder)

    with running(factory) as server:
        yield Harness(server, built["app"], built["servicer"], seen, clients)


@pytest.fixture
def stub(harness: Harness) -> Iterator[Any]:
    harness.reset()
    with grpc.insecure_channel(harness.server.target) as channel:
        yield echo_pb2_grpc.EchoServiceStub(channel)


# -- a raw HTTP/2 client, for what grpcio will not do on purpose ------------------------------


def frame(message: Any, *, compressed: bool = False) -> bytes:
    payload: bytes = message.SerializeToString()
    if compressed:
        payload = gzip.compress(payload)
    return bytes([int(compressed)]) + len(payload).to_bytes(4, "big") + payload


def deframe(data: bytes) -> list[bytes]:
    messages = []
    while data:
        length = int.from_bytes(data[1:5], "big")
        messages.append(data[5 : 5 + length])
        data = data[5 + length :]
    return messages


@dataclass
class RawResponse:
    headers: dict[str, str]
    data: bytes
    trailers: dict[str, str]
    data_frames: int

    @property
    def status(self) -> str | None:
        """grpc-status from trailers, or from headers in a status-in-headers answer."""
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))

    def responses(self) -> list[Any]:
        return [echo_pb2.EchoResponse.FromString(m) for m in deframe(self.data)]


def raw_call(
    target: str,
    path: str,
    chunks: Sequence[bytes],
    headers: Sequence[tuple[str, str]] = (),
    *,
    content_type: str = "application/grpc",
    method: str = "POST",
    te_trailers: bool = True,
) -> RawResponse:
    """One call; each chunk goes out as one DATA frame (split only to fit frame size and flow
    control), the last one with END_STREAM."""
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        request_headers = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", target),
            ("content-type", content_type),
            *([("te", "trailers")] if te_trailers else []),
            *headers,
        ]
        conn.send_headers(1, request_headers, end_stream=not chunks)
        sock.sendall(conn.data_to_send())
        return _exchange(sock, conn, list(chunks))


def _exchange(
    sock: socket.socket, conn: h2.connection.H2Connection, pending: list[bytes]
) -> RawResponse:
    response = RawResponse({}, b"", {}, 0)
    while True:
        pending = _send_what_fits(conn, pending)
        sock.sendall(conn.data_to_send())
        received = sock.recv(65536)
        assert received, "the server closed the connection without ending the stream"
        for event in conn.receive_data(received):
            if isinstance(event, h2.events.ResponseReceived):
                response.headers = _text_headers(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                response.data += event.data
                response.data_frames += 1
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                response.trailers = _text_headers(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream reset with {event.error_code!r}")
            if isinstance(event, h2.events.StreamEnded):
                return response


def _send_what_fits(conn: h2.connection.H2Connection, pending: list[bytes]) -> list[bytes]:
    while pending:
        room = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
        if room <= 0:
            break
        chunk, rest = pending[0][:room], pending[0][room:]
        pending = ([rest] if rest else []) + pending[1:]
        conn.send_data(1, chunk, end_stream=not pending)
    return pending


def _text_headers(headers: Any) -> dict[str, str]:
    return {bytes(k).decode(): bytes(v).decode() for k, v in headers}


def request(**fields: Any) -> Any:
    return echo_pb2.EchoRequest(**fields)


# -- the four call kinds -------------------------------------------------------------------


def test_unary_call_returns_the_servicers_response(stub: Any) -> None:
    sent = request(message="hello", count=7, tags=["a", "b"], labels={"k": "v"})

    response = stub.Echo(sent, timeout=WAIT)

    assert response.echoed == sent


def test_server_streaming_delivers_every_message_in_order(stub: Any) -> None:
    responses = list(stub.Expand(request(message="x", count=5), timeout=WAIT))

    assert [r.index for r in responses] == [0, 1, 2, 3, 4]
    assert {r.echoed.message for r in responses} == {"x"}


def test_server_streaming_error_arrives_after_the_messages(stub: Any) -> None:
    call = stub.Expand(request(count=3, code=grpc.StatusCode.FAILED_PRECONDITION.value[0]))
    received: list[int] = []

    with pytest.raises(grpc.RpcError) as error:
        received.extend(response.index for response in call)

    assert received == [0, 1, 2]
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == "stream failed"


def test_client_streaming_reads_the_whole_request_stream(stub: Any) -> None:
    parts = ["al", "pha", "bet"]

    response = stub.Collect(iter(request(message=p) for p in parts), timeout=WAIT)

    assert response.echoed.message == "alphabet"


def test_bidi_answers_each_request_before_the_next_is_sent(stub: Any) -> None:
    outgoing: queue.Queue[Any] = queue.Queue()
    responses = stub.Chat(iter(outgoing.get, None), timeout=WAIT)

    for index in range(3):
        outgoing.put(request(message=f"m{index}"))
        # Blocks until the server answers this very request: a half-duplex server would
        # wait for the end of the request stream and fail the call with DEADLINE_EXCEEDED.
        response = next(responses)
        assert (response.index, response.echoed.message) == (index, f"m{index}")
    outgoing.put(None)

    assert list(responses) == []
    assert responses.code() == grpc.StatusCode.OK


# -- connection and framing ------------------------------------------------------------------


def test_more_than_a_thousand_calls_share_one_connection(harness: Harness, stub: Any) -> None:
    first = len(harness.seen_clients)
    codes = set()
    for index in range(1100):
        response, call = stub.Echo.with_call(request(count=index), timeout=WAIT)
        assert response.echoed.count == index
        codes.add(call.code())

    assert codes == {grpc.StatusCode.OK}
    # One client address: the channel never had to reconnect (no GOAWAY after 1000 requests).
    assert len(set(harness.seen_clients[first:])) == 1


def test_large_message_spanning_many_data_frames(harness: Harness, stub: Any) -> None:
    blob = os.urandom(1024 * 1024)

    response = stub.Echo(request(blob=blob), timeout=WAIT)

    assert response.echoed.blob == blob
    # The same size on the raw wire: the reply cannot fit in fewer than 64 frames of 16 KiB.
    raw = raw_call(harness.server.target, f"{SERVICE}/Echo", [frame(request(blob=blob))])
    assert raw.status == "0"
    assert raw.data_frames >= 64
    assert raw.responses()[0].echoed.blob == blob


def test_several_messages_packed_into_one_data_frame(harness: Harness) -> None:
    packed = b"".join(frame(request(message=part)) for part in ["one-", "two-", "three"])

    response = raw_call(harness.server.target, f"{SERVICE}/Collect", [packed])

    assert response.status == "0"
    assert [r.echoed.message for r in response.responses()] == ["one-two-three"]


def test_message_split_across_data_frames(harness: Harness) -> None:
    whole = frame(request(message="split me", count=3))
    # Cut inside the length prefix and inside the payload.
    chunks = [whole[:2], whole[2:9], whole[9:]]

    response = raw_call(harness.server.target, f"{SERVICE}/Echo", chunks)

    assert response.status == "0"
    assert response.responses()[0].echoed == request(message="split me", count=3)


def test_message_over_the_maximum_is_refused_and_the_channel_survives(stub: Any) -> None:
    # Refused while the client is still uploading: answered too early, Hypercorn would drop the
    # connection (UNAVAILABLE) on the DATA still in flight, in a few percent of the calls.
    too_big = request(blob=os.urandom(MAX_MESSAGE_BYTES + 1))
    codes = []
    for _ in range(30):
        with pytest.raises(grpc.RpcError) as error:
            stub.Echo(too_big, timeout=WAIT)
        codes.append(error.value.code())

    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert stub.Echo(request(message="still here"), timeout=WAIT).echoed.message == "still here"


# -- deadlines and cancellation --------------------------------------------------------------


def test_deadline_exceeded_stops_the_servicer(harness: Harness, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.Sleep(request(delay=duration_pb2.Duration(seconds=30)), timeout=0.5)

    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    harness.wait_for(harness.servicer.cancelled)


def test_server_enforces_grpc_timeout_itself(harness: Harness) -> None:
    # A raw client never gives up on its own, so the status must come from the server.
    response = raw_call(
        harness.server.target,
        f"{SERVICE}/Sleep",
        [frame(request(delay=duration_pb2.Duration(seconds=30)))],
        [("grpc-timeout", "200m")],
    )

    assert response.status == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])


@pytest.mark.parametrize("timeout", ["soon", "5", "123456789S", "-1S", "1X"])
def test_malformed_grpc_timeout_is_internal(harness: Harness, timeout: str) -> None:
    response = raw_call(
        harness.server.target, f"{SERVICE}/Echo", [frame(request())], [("grpc-timeout", timeout)]
    )

    assert response.status == str(grpc.StatusCode.INTERNAL.value[0])
    assert "grpc-timeout" in response.trailers["grpc-message"]


def test_client_cancellation_reaches_the_servicer(harness: Harness, stub: Any) -> None:
    future = stub.Sleep.future(request(delay=duration_pb2.Duration(seconds=30)))
    harness.wait_for(harness.servicer.sleeping)

    assert future.cancel()

    harness.wait_for(harness.servicer.cancelled)
    assert harness.servicer.context_cancelled
    harness.wait_until_idle()


def test_cancelling_a_bidi_stream_ends_the_call_on_the_server(harness: Harness, stub: Any) -> None:
    outgoing: queue.Queue[Any] = queue.Queue()
    responses = stub.Chat(iter(outgoing.get, None), timeout=WAIT)
    outgoing.put(request(message="only"))
    assert next(responses).echoed.message == "only"
    assert harness.active_calls() == 1

    responses.cancel()

    harness.wait_until_idle()
    outgoing.put(None)


# -- metadata and status ---------------------------------------------------------------------


def test_request_metadata_reaches_the_servicer(stub: Any) -> None:
    response = stub.Echo(
        request(),
        metadata=[("x-token", "abc"), ("x-raw-bin", b"\x00\xff\x10")],
        timeout=WAIT,
    )

    seen = set(response.metadata)
    assert {"x-token=abc", "x-raw-bin=b'\\x00\\xff\\x10'"} <= seen
    keys = {entry.split("=", 1)[0] for entry in seen}
    assert keys.isdisjoint({"content-type", "te", "grpc-timeout", "grpc-accept-encoding"})


def test_binary_metadata_padded_unpadded_and_joined(harness: Harness) -> None:
    response = raw_call(
        harness.server.target,
        f"{SERVICE}/Echo",
        [frame(request())],
        [("a-bin", "AQI="), ("b-bin", "AQI"), ("c-bin", "AQI,AwQ")],
    )

    seen = response.responses()[0].metadata
    assert "a-bin=b'\\x01\\x02'" in seen
    assert "b-bin=b'\\x01\\x02'" in seen
    assert [m for m in seen if m.startswith("c-bin=")] == [
        "c-bin=b'\\x01\\x02'",
        "c-bin=b'\\x03\\x04'",
    ]


def test_initial_and_trailing_metadata_reach_the_client(stub: Any) -> None:
    _, call = stub.Create.with_call(request(message="m"), timeout=WAIT)

    assert ("x-initial", "hello") in call.initial_metadata()
    assert ("x-initial-bin", b"\x00\x01") in call.initial_metadata()
    assert ("x-trailing", "bye") in call.trailing_metadata()
    assert ("x-trailing-bin", b"\xff\xfe\xfd") in call.trailing_metadata()


def test_initial_metadata_is_sent_before_the_first_message(stub: Any) -> None:
    outgoing: queue.Queue[Any] = queue.Queue()
    responses = stub.Chat(iter(outgoing.get, None), timeout=WAIT)

    # Nothing has been sent either way yet; the headers still arrive.
    assert ("x-chat", "open") in responses.initial_metadata()

    outgoing.put(None)
    assert list(responses) == []


def test_error_status_with_non_ascii_message_and_details(harness: Harness, stub: Any) -> None:
    message = "bad 100% ünïcödé ✓\nsecond line"

    with pytest.raises(grpc.RpcError) as error:
        stub.Fail(request(code=3, message=message), timeout=WAIT)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == message
    status = rpc_status.from_call(error.value)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "message"
    # On the wire: percent-encoded UTF-8, in trailers, after a HEADERS frame with no message.
    raw = raw_call(
        harness.server.target, f"{SERVICE}/Fail", [frame(request(code=3, message="50% ✓"))]
    )
    assert raw.headers[":status"] == "200"
    assert raw.trailers["grpc-message"] == "50%25 %E2%9C%93"
    assert "grpc-status-details-bin" in raw.trailers
    assert raw.data == b""


def test_unknown_method_answers_unimplemented_in_trailers(harness: Harness, stub: Any) -> None:
    with grpc.insecure_channel(harness.server.target) as channel:
        missing = channel.unary_unary(f"{SERVICE}/Missing", None, None)
        with pytest.raises(grpc.RpcError) as error:
            missing(b"", timeout=WAIT)

    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    raw = raw_call(harness.server.target, f"{SERVICE}/Missing", [b""])
    assert raw.headers[":status"] == "200"
    assert raw.trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert raw.data == b""


@pytest.mark.parametrize(
    ("method", "content_type", "http_status"),
    [("POST", "application/json", "415"), ("GET", "application/grpc", "405")],
)
def test_requests_that_are_not_grpc_get_an_http_error(
    harness: Harness, method: str, content_type: str, http_status: str
) -> None:
    response = raw_call(
        harness.server.target,
        f"{SERVICE}/Echo",
        [],
        content_type=content_type,
        method=method,
    )

    assert response.headers[":status"] == http_status


def test_client_without_te_trailers_gets_the_status_in_headers(harness: Harness) -> None:
    # Hypercorn would drop trailers for this client, so the call is refused where it can see it.
    response = raw_call(
        harness.server.target, f"{SERVICE}/Echo", [frame(request())], te_trailers=False
    )

    assert response.headers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert "te: trailers" in response.headers["grpc-message"]
    assert response.data == b""


# -- compression -----------------------------------------------------------------------------


def test_gzip_compressed_requests_are_understood(harness: Harness) -> None:
    sent = request(message="squeeze " * 200)
    with grpc.insecure_channel(harness.server.target, compression=grpc.Compression.Gzip) as chan:
        response = echo_pb2_grpc.EchoServiceStub(chan).Echo(sent, timeout=WAIT)

    assert response.echoed == sent
    assert harness.seen_headers[f"{SERVICE}/Echo"][b"grpc-encoding"] == b"gzip"


def test_gzip_message_flag_on_the_raw_wire(harness: Harness) -> None:
    sent = request(message="compressed", count=2)

    response = raw_call(
        harness.server.target,
        f"{SERVICE}/Echo",
        [frame(sent, compressed=True)],
        [("grpc-encoding", "gzip")],
    )

    assert response.status == "0"
    assert response.responses()[0].echoed == sent


def test_decompressed_size_is_limited_too(harness: Harness) -> None:
    # Zeros compress about a thousandfold: a small request that would inflate past the limit.
    bomb = request(blob=bytes(MAX_MESSAGE_BYTES + 1))
    with (
        grpc.insecure_channel(harness.server.target, compression=grpc.Compression.Gzip) as chan,
        pytest.raises(grpc.RpcError) as error,
    ):
        echo_pb2_grpc.EchoServiceStub(chan).Echo(bomb, timeout=WAIT)

    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unsupported_encoding_is_unimplemented(harness: Harness) -> None:
    response = raw_call(
        harness.server.target,
        f"{SERVICE}/Echo",
        [frame(request())],
        [("grpc-encoding", "snappy")],
    )

    assert response.status == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert response.headers["grpc-accept-encoding"] == "gzip, identity"


# -- shutdown --------------------------------------------------------------------------------


def test_close_streams_ends_an_open_bidi_stream_with_unavailable(
    harness: Harness, stub: Any
) -> None:
    outgoing: queue.Queue[Any] = queue.Queue()
    responses = stub.Chat(iter(outgoing.get, None), timeout=WAIT)
    outgoing.put(request(message="first"))
    assert next(responses).echoed.message == "first"
    assert harness.active_calls() == 1

    harness.server.call(harness.app.close_streams())

    with pytest.raises(grpc.RpcError) as error:
        next(responses)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error.value.details() == "server is shutting down"
    assert harness.active_calls() == 0
    outgoing.put(None)


def test_close_streams_ends_an_open_server_stream_with_unavailable(
    harness: Harness, stub: Any
) -> None:
    # Practically endless, and big enough per message that flow control holds the server back.
    responses = stub.Expand(request(count=10**9, blob=bytes(16 * 1024)), timeout=WAIT)
    assert next(responses).index == 0

    # Not awaited here: the server's trailers wait behind data this thread must still read.
    closing = asyncio.run_coroutine_threadsafe(
        harness.app.close_streams("going away"), harness.server.loop
    )
    with pytest.raises(grpc.RpcError) as error:
        for _ in responses:
            pass

    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error.value.details() == "going away"
    closing.result(WAIT)
    assert harness.active_calls() == 0


def test_binary_trailing_metadata_is_unpadded_base64(harness: Harness) -> None:
    response = raw_call(harness.server.target, f"{SERVICE}/Create", [frame(request())])

    assert response.trailers["x-trailing-bin"] == base64.b64encode(b"\xff\xfe\xfd").decode()
    assert response.headers["x-initial-bin"] == "AAE"  # b"\x00\x01" without "=" padding
