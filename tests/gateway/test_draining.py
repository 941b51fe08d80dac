"""The chain ends calls in flight for a shutdown, and every protocol says so in its own way.

Endless streams over native gRPC, gRPC-web, REST NDJSON and REST SSE, and a unary call in its
servicer: `close_calls` ends each with UNAVAILABLE that its client can read (trailers, gRPC-web
trailers, an NDJSON error line, an SSE error event), and the chain counts them all.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2
from tests.gateway.echo_service import echo_pb2_grpc as echo_grpc
from tests.support import grpc_web
from tests.support.server import RunningServer, running

EXPAND = "/testing.echo.v1.EchoService/Expand"
SLEEP = "/testing.echo.v1.EchoService/Sleep"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class Endless(EchoServicer):
    async def Expand(self, request: Any, context: Any) -> AsyncIterator[Any]:
        index = 0
        while True:
            yield echo_pb2.EchoResponse(echoed=request, index=index)
            index += 1
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[RunningServer, InterceptorChain]]:
    chain = InterceptorChain()

    def build() -> GatewayRouter:
        registry = MethodRegistry(chain)
        echo_grpc.add_EchoServiceServicer_to_server(Endless(), registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
        )

    with running(build) as server:
        yield server, chain


def _grpc_stream(server: RunningServer, seen: dict[str, Any], started: threading.Event) -> None:
    with grpc.insecure_channel(server.target) as channel:
        expand = channel.unary_stream(
            EXPAND, echo_pb2.EchoRequest.SerializeToString, echo_pb2.EchoResponse.FromString
        )
        try:
            for _ in expand(echo_pb2.EchoRequest(message="grpc"), timeout=30):
                started.set()
        except grpc.RpcError as error:
            seen["grpc"] = (error.code().value[0], error.details())


def _grpc_unary(server: RunningServer, seen: dict[str, Any], started: threading.Event) -> None:
    with grpc.insecure_channel(server.target) as channel:
        sleep = channel.unary_unary(
            SLEEP, echo_pb2.EchoRequest.SerializeToString, echo_pb2.EchoResponse.FromString
        )
        request = echo_pb2.EchoRequest(delay=duration_pb2.Duration(seconds=30))
        future = sleep.future(request, timeout=30)
        started.set()
        try:
            future.result()
        except grpc.RpcError as error:
            seen["grpc unary"] = (error.code().value[0], error.details())


def _grpc_web_stream(server: RunningServer, seen: dict[str, Any], started: threading.Event) -> None:
    payload = echo_pb2.EchoRequest(message="web").SerializeToString()
    body = struct.pack(">BI", 0, len(payload)) + payload
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    frames = b""
    with (
        httpx.Client(base_url=server.url, timeout=30) as client,
        client.stream("POST", EXPAND, content=body, headers=headers) as answer,
    ):
        for chunk in answer.iter_bytes():
            started.set()
            frames += chunk
    trailers = grpc_web.trailers(frames)
    seen["grpc-web"] = (int(trailers["grpc-status"]), trailers.get("grpc-message", ""))


def _rest_stream(
    server: RunningServer, seen: dict[str, Any], started: threading.Event, *, sse: bool
) -> None:
    headers = {"accept": "text/event-stream"} if sse else {}
    lines: list[str] = []
    with (
        httpx.Client(base_url=server.url, timeout=30) as client,
        client.stream("GET", "/v1/expand?message=rest", headers=headers) as answer,
    ):
        for line in answer.iter_lines():
            if line:
                started.set()
                lines.append(line)
    if sse:
        # The last event is the error: "event: error" then "data: {...}".
        data = [line for line in lines if line.startswith("data:")][-1]
        error = json.loads(data.removeprefix("data:"))
        seen["sse"] = (error["code"], error["message"])
    else:
        error = json.loads(lines[-1])["error"]
        seen["ndjson"] = (error["code"], error["message"])


def test_close_calls_ends_every_protocols_calls_with_unavailable(
    served: tuple[RunningServer, InterceptorChain],
) -> None:
    server, chain = served
    seen: dict[str, Any] = {}
    clients = {
        "grpc": _grpc_stream,
        "grpc unary": _grpc_unary,
        "grpc-web": _grpc_web_stream,
        "ndjson": lambda s, seen, started: _rest_stream(s, seen, started, sse=False),
        "sse": lambda s, seen, started: _rest_stream(s, seen, started, sse=True),
    }
    threads = []
    for name, client in clients.items():
        started = threading.Event()
        thread = threading.Thread(target=client, args=(server, seen, started), name=name)
        thread.start()
        assert started.wait(10), f"{name} did not start"
        threads.append(thread)

    async def in_flight() -> int:
        for _ in range(200):
            if chain.active_calls() == len(clients):
                break
            await asyncio.sleep(0.02)
        return chain.active_calls()

    assert server.call(in_flight()) == len(clients)

    async def close() -> int:
        told = chain.close_calls("server is shutting down")
        await asyncio.wait_for(chain.wait_idle(), 10)
        return told

    assert server.call(close()) == len(clients)
    for thread in threads:
        thread.join(10)
    assert seen == dict.fromkeys(clients, (UNAVAILABLE, "server is shutting down")), (
        "every client reads UNAVAILABLE, each in its protocol's way"
    )
