"""What is measured: each side as one HTTP request to repeat, and the pairs that are compared."""

from __future__ import annotations

import json
import struct
import urllib.parse
from dataclasses import dataclass
from enum import Enum

from roz.v1 import environments_pb2

from bench.servers import HOST, Endpoints

GET_ENVIRONMENT = "/roz.v1.EnvironmentService/GetEnvironment"


class Wire(Enum):
    H2C = "h2c"  # HTTP/2 with prior knowledge, as gRPC clients speak it
    HTTP1 = "http/1.1"


@dataclass(frozen=True)
class Load:
    connections: int
    streams: int  # concurrent requests per connection (1 on HTTP/1.1: no pipelining)


@dataclass(frozen=True)
class Side:
    """One server answering one request, repeated by the load generator."""

    label: str
    port: int
    wire: Wire
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    load: Load

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"


@dataclass(frozen=True)
class Comparison:
    """Ours against a comparator; `goal` is the least acceptable ratio of their req/s."""

    title: str
    ours: Side
    theirs: Side
    goal: float


def grpc_frame(payload: bytes) -> bytes:
    """A length-prefixed, uncompressed gRPC message (the gRPC-web body uses the same frame)."""
    return struct.pack(">BI", 0, len(payload)) + payload


def get_environment_request(endpoints: Endpoints) -> bytes:
    request = environments_pb2.GetEnvironmentRequest(id=endpoints.environment_id)
    return grpc_frame(request.SerializeToString())


def _bearer(endpoints: Endpoints) -> tuple[str, str]:
    return ("authorization", f"Bearer {endpoints.api_key}")


def grpc_side(label: str, port: int, endpoints: Endpoints, load: Load) -> Side:
    return Side(
        label=label,
        port=port,
        wire=Wire.H2C,
        method="POST",
        path=GET_ENVIRONMENT,
        headers=(("content-type", "application/grpc"), ("te", "trailers"), _bearer(endpoints)),
        body=get_environment_request(endpoints),
        load=load,
    )


def rest_side(label: str, port: int, endpoints: Endpoints, load: Load) -> Side:
    return Side(
        label=label,
        port=port,
        wire=Wire.HTTP1,
        method="GET",
        path=f"/api/v1/environments/{endpoints.environment_id}",
        headers=(_bearer(endpoints),),
        body=None,
        load=load,
    )


def grpc_web_side(label: str, port: int, endpoints: Endpoints, load: Load) -> Side:
    return Side(
        label=label,
        port=port,
        wire=Wire.HTTP1,
        method="POST",
        path=GET_ENVIRONMENT,
        headers=(
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
            _bearer(endpoints),
        ),
        body=get_environment_request(endpoints),
        load=load,
    )


def connect_side(label: str, port: int, endpoints: Endpoints, load: Load) -> Side:
    """Connect's unary call in JSON, as connect-web's createConnectTransport sends it."""
    return Side(
        label=label,
        port=port,
        wire=Wire.HTTP1,
        method="POST",
        path=GET_ENVIRONMENT,
        headers=(
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
            _bearer(endpoints),
        ),
        body=json.dumps({"id": endpoints.environment_id}).encode(),
        load=load,
    )


def connect_get_side(label: str, port: int, endpoints: Endpoints, load: Load) -> Side:
    """The same call as Connect's GET (a side-effect-free method, cacheable by proxies)."""
    query = urllib.parse.urlencode(
        {
            "connect": "v1",
            "encoding": "json",
            "message": json.dumps({"id": endpoints.environment_id}, separators=(",", ":")),
        }
    )
    return Side(
        label=label,
        port=port,
        wire=Wire.HTTP1,
        method="GET",
        path=f"{GET_ENVIRONMENT}?{query}",
        headers=(_bearer(endpoints),),
        body=None,
        load=load,
    )


def comparisons(endpoints: Endpoints, grpc_load: Load, http1_load: Load) -> list[Comparison]:
    return [
        Comparison(
            title="GetEnvironment, native gRPC (h2c)",
            ours=grpc_side("roz port (Hypercorn)", endpoints.roz_port, endpoints, grpc_load),
            theirs=grpc_side("grpc.aio.server()", endpoints.grpcio_port, endpoints, grpc_load),
            goal=0.6,
        ),
        Comparison(
            title="GET /api/v1/environments/{id}, REST (HTTP/1.1)",
            ours=rest_side("roz port (transcoder)", endpoints.roz_port, endpoints, http1_load),
            theirs=rest_side(
                "hand-written ASGI", endpoints.handwritten_port, endpoints, http1_load
            ),
            goal=0.8,
        ),
    ]


def extras(endpoints: Endpoints, http1_load: Load) -> list[tuple[str, Side]]:
    """Measured without a comparator."""
    return [
        (
            "GetEnvironment, gRPC-web (HTTP/1.1)",
            grpc_web_side("roz port (gRPC-web)", endpoints.roz_port, endpoints, http1_load),
        ),
        (
            "GetEnvironment, Connect JSON (HTTP/1.1)",
            connect_side("roz port (Connect)", endpoints.roz_port, endpoints, http1_load),
        ),
        (
            "GetEnvironment, Connect GET (HTTP/1.1)",
            connect_get_side("roz port (Connect GET)", endpoints.roz_port, endpoints, http1_load),
        ),
    ]
