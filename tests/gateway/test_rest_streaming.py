"""REST streaming: NDJSON and SSE server streams, stream errors, client streams, disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from tests.gateway.echo_service import EchoServicer
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    echo_pb2,
    echo_registry,
    rest_server,
    rule,
    violated_fields,
)


class Recorder:
    """What the made-up streaming methods saw, read back from the server's loop."""

    def __init__(self) -> None:
        self.stream_cancelled = asyncio.Event()
        self.peer_cancelled: list[bool] = []


RECORDER = Recorder()


async def collect(requests: Any, context: Any) -> Any:
    parts = [request.message async for request in requests]
    return echo_pb2.EchoResponse(echoed=echo_pb2.EchoRequest(message="+".join(parts)))


async def chat(requests: Any, context: Any) -> AsyncIterator[Any]:
    index = 0
    async for request in requests:
        yield echo_pb2.EchoResponse(echoed=request, index=index)
        index += 1


async def forever(request: Any, context: Any) -> AsyncIterator[Any]:
    try:
        index = 0
        while True:
            yield echo_pb2.EchoResponse(index=index)
            index += 1
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        RECORDER.peer_cancelled.append(context.cancelled())
        RECORDER.stream_cancelled.set()
        raise


def add_extra(registry: MethodRegistry) -> None:
    add_service(
        registry,
        [
            FakeMethod(
                "Collect", rule(post="/v1/collect", body="*"), collect, client_streaming=True
            ),
            FakeMethod(
                "Chat",
                rule(post="/v1/chat", body="*"),
                chat,
                client_streaming=True,
                server_streaming=True,
            ),
            FakeMethod("Forever", rule(get="/v1/forever"), forever, server_streaming=True),
        ],
    )


class SleepRecorder(EchoServicer):
    """Notes whether the context already says "cancelled by the peer" when the call is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.context_cancelled: list[bool] = []

    async def Sleep(self, request: Any, context: Any) -> Any:
        try:
            return await super().Sleep(request, context)
        except asyncio.CancelledError:
            self.context_cancelled.append(context.cancelled())
            raise


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(servicer_factory=SleepRecorder, extra=add_extra) as server:
        yield server


def lines(response: httpx.Response) -> list[Any]:
    return [json.loads(line) for line in response.text.splitlines()]


def test_ndjson_wraps_each_message_in_result(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": "3", "message": "m"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "content-length" not in response.headers
    got = lines(response)
    assert [item["result"]["index"] for item in got] == [0, 1, 2]
    assert all(item["result"]["echoed"]["message"] == "m" for item in got)


# Raw in a JSON string, and line breaks to Python's splitlines, httpx's iter_lines and old
# JavaScript; a fleet watch carrying an e-stop reason with one broke the line it was on.
LINE_BREAKING = "a\u2028b\x85c\u2029d\x1ce"


def test_a_message_with_unicode_line_breaks_stays_one_line(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": "2", "message": LINE_BREAKING})
    got = lines(response)  # splitlines(): every line reader's idea of a line
    assert [item["result"]["echoed"]["message"] for item in got] == [LINE_BREAKING] * 2
    with rest.client.stream(
        "GET", "/v1/expand", params={"count": "1", "message": LINE_BREAKING}
    ) as streamed:
        (line,) = list(streamed.iter_lines())
    assert json.loads(line)["result"]["echoed"]["message"] == LINE_BREAKING
    events = rest.client.get(
        "/v1/expand",
        params={"count": "1", "message": LINE_BREAKING},
        headers={"accept": "text/event-stream"},
    )
    (event, end) = events.text.split("\n\n")
    assert end == ""
    assert len(event.splitlines()) == 1
    assert json.loads(event.removeprefix("data: "))["echoed"]["message"] == LINE_BREAKING


def test_each_message_arrives_as_its_own_chunk(rest: RestServer) -> None:
    with rest.client.stream("GET", "/v1/expand", params={"count": "4"}) as response:
        chunks = [chunk for chunk in response.iter_raw() if chunk]
    assert len(chunks) == 4
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in chunks)


def test_an_error_before_the_first_message_uses_the_mapped_status(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": "0", "code": "7"})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": 7, "message": "stream failed", "details": []}


def test_an_error_after_the_first_message_is_a_final_error_line(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": "2", "code": "9"})
    assert response.status_code == 200
    got = lines(response)
    assert [item["result"]["index"] for item in got[:2]] == [0, 1]
    assert got[2] == {"error": {"code": 9, "message": "stream failed", "details": []}}
    assert len(got) == 3


def test_an_empty_stream_is_200_with_no_lines(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": "0"})
    assert response.status_code == 200
    assert response.content == b""


def test_server_sent_events_on_request(rest: RestServer) -> None:
    response = rest.client.get(
        "/v1/expand",
        params={"count": "2", "code": "10"},
        headers={"accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    events = response.text.split("\n\n")
    assert events[-1] == ""
    first, second, error = events[:3]
    assert json.loads(first.removeprefix("data: "))["index"] == 0
    assert json.loads(second.removeprefix("data: "))["index"] == 1
    name, data = error.split("\n")
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: "))["code"] == 10


def test_client_stream_from_ndjson_lines(rest: RestServer) -> None:
    body = b'{"message": "a"}\n{"message": "b"}\n\n{"message": "c"}\n'
    response = rest.client.post(
        "/v1/collect", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["echoed"]["message"] == "a+b+c"


def test_client_stream_from_a_json_array(rest: RestServer) -> None:
    response = rest.client.post("/v1/collect", json=[{"message": "x"}, {"message": "y"}])
    assert response.json()["echoed"]["message"] == "x+y"


def test_client_stream_with_a_bad_message_is_400(rest: RestServer) -> None:
    response = rest.client.post("/v1/collect", content=b'{"message": "a"}\n{"bogus": 1}\n')
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["bogus"]


def test_bidi_is_half_duplex_ndjson(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/chat",
        content=b'{"message": "hi"}\n{"message": "there"}\n',
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200
    got = lines(response)
    assert [(item["result"]["index"], item["result"]["echoed"]["message"]) for item in got] == [
        (0, "hi"),
        (1, "there"),
    ]


def test_client_streaming_methods_without_a_rule_are_not_bound(rest: RestServer) -> None:
    # EchoService.Collect and Chat have no google.api.http rule.
    assert rest.client.post("/testing.echo.v1.EchoService/Collect", json={}).status_code == 404


def test_disconnect_cancels_a_unary_call(rest: RestServer) -> None:
    with pytest.raises(httpx.ReadTimeout):
        rest.client.get("/v1/sleep", params={"delay": "30s"}, timeout=0.5)
    rest.wait(asyncio.wait_for(rest.servicer.cancelled.wait(), 5))
    assert rest.servicer.context_cancelled == [True]


def test_disconnect_cancels_a_stream(rest: RestServer) -> None:
    with rest.client.stream("GET", "/v1/forever") as response:
        first = next(response.iter_lines())
        assert json.loads(first)["result"]["index"] == 0
    rest.wait(asyncio.wait_for(RECORDER.stream_cancelled.wait(), 5))
    assert RECORDER.peer_cancelled == [True]


# -- the exact ASGI messages ---------------------------------------------------------------------


async def asgi_call(
    app: RestApp,
    path: str,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    http_version: str = "1.1",
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.Event().wait()  # no disconnect in this test
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": http_version,
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
        "extensions": {"http.response.trailers": {}} if http_version == "2" else {},
    }
    await app(scope, receive, send)
    return sent


async def test_stream_sends_one_body_message_per_result() -> None:
    registry, _ = echo_registry()
    sent = await asgi_call(RestApp(registry), "/v1/expand", b"count=3")
    assert [message["type"] for message in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
        "http.response.body",
        "http.response.body",
    ]
    bodies = [message["body"] for message in sent[1:]]
    assert [json.loads(body)["result"]["index"] for body in bodies[:3]] == [0, 1, 2]
    assert [message["more_body"] for message in sent[1:]] == [True, True, True, False]
    assert bodies[3] == b""


async def tally(request: Any, context: Any) -> AsyncIterator[Any]:
    context.set_trailing_metadata([("x-total", "1")])
    yield echo_pb2.EchoResponse(index=0)


async def test_stream_trailing_metadata_goes_into_http2_trailers() -> None:
    registry, _ = echo_registry()
    add_service(
        registry, [FakeMethod("Tally", rule(get="/v1/tally"), tally, server_streaming=True)]
    )
    app = RestApp(registry)
    sent = await asgi_call(app, "/v1/tally", headers=[(b"te", b"trailers")], http_version="2")
    assert sent[0]["trailers"] is True
    assert sent[-1] == {
        "type": "http.response.trailers",
        "headers": [(b"grpc-trailer-x-total", b"1")],
        "more_trailers": False,
    }
    # Without `te: trailers` there is nowhere to put them: the stream just ends.
    plain = await asgi_call(app, "/v1/tally", http_version="2")
    assert plain[0]["trailers"] is False
    assert plain[-1]["type"] == "http.response.body"


def test_a_server_sent_event_carries_its_id_and_an_id_cannot_break_the_frame() -> None:
    from gateway.rest.streaming import NDJSON, SSE

    assert SSE.message({"n": 1}, "42") == b'id: 42\ndata: {"n":1}\n\n'
    assert SSE.message({"n": 1}) == b'data: {"n":1}\n\n'
    assert SSE.message({}, "4\n\ndata: forged\r\x00") == b"id: 4data: forged\ndata: {}\n\n"
    assert NDJSON.message({"n": 1}, "42") == b'{"result":{"n":1}}\n'
