"""Proof that every side answers correctly before (and after) it is measured.

A load generator counts HTTP 200 as success, but a failed gRPC call is an HTTP 200 too, with the
failure in its trailers. So each side's exact request (the bytes and headers the load generator
sends) is sent once here, and the answer is checked down to grpc-status 0 and the decoded
Environment; native gRPC is also called once with grpcio's own client. REST sides must return
the same JSON, and both must refuse a wrong key.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
from roz.v1 import environments_pb2

from bench.scenarios import GET_ENVIRONMENT, Comparison, Side, Wire
from bench.servers import HOST, Endpoints

TIMEOUT_SECONDS = 30.0


class VerificationError(RuntimeError):
    """A side answered something other than what it is supposed to answer."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)


def h2c_request(side: Side) -> Answer:
    """One request over a fresh HTTP/2 prior-knowledge connection, trailers included."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    answer = Answer(status=0)
    with socket.create_connection((HOST, side.port), timeout=TIMEOUT_SECONDS) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        headers = [
            (":method", side.method),
            (":scheme", "http"),
            (":authority", f"{HOST}:{side.port}"),
            (":path", side.path),
            *side.headers,
        ]
        connection.send_headers(stream, headers, end_stream=side.body is None)
        if side.body is not None:
            connection.send_data(stream, side.body, end_stream=True)
        sock.sendall(connection.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                raise VerificationError(f"{side.label}: connection closed mid-response")
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.headers = _text_headers(event.headers)
                    answer.status = int(answer.headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer.body += event.data
                    connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.TrailersReceived):
                    answer.trailers = _text_headers(event.headers)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(connection.data_to_send())
    return answer


def http1_request(side: Side, headers: tuple[tuple[str, str], ...] | None = None) -> Answer:
    connection = http.client.HTTPConnection(HOST, side.port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request(
            side.method, side.path, body=side.body, headers=dict(headers or side.headers)
        )
        response = connection.getresponse()
        body = response.read()
        return Answer(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=body,
        )
    finally:
        connection.close()


def _text_headers(headers: Any) -> dict[str, str]:
    return {
        (name.decode() if isinstance(name, bytes) else name): (
            value.decode("latin-1") if isinstance(value, bytes) else value
        )
        for name, value in headers
    }


def grpc_frames(body: bytes) -> list[tuple[int, bytes]]:
    """Length-prefixed frames: (flags, payload)."""
    frames = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frames.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


def _environment(side: Side, payload: bytes, endpoints: Endpoints) -> environments_pb2.Environment:
    environment = environments_pb2.Environment.FromString(payload)
    if environment.id != endpoints.environment_id:
        raise VerificationError(f"{side.label}: answered environment {environment.id!r}")
    return environment


def check_grpc(side: Side, endpoints: Endpoints) -> environments_pb2.Environment:
    """The load generator's exact request: HTTP 200, one message, grpc-status 0 in trailers."""
    answer = h2c_request(side)
    status = answer.trailers.get("grpc-status", answer.headers.get("grpc-status"))
    if answer.status != 200 or status != "0":
        raise VerificationError(
            f"{side.label}: HTTP {answer.status}, grpc-status {status!r}, "
            f"grpc-message {answer.trailers.get('grpc-message', '')!r}"
        )
    if "grpc-status" not in answer.trailers:
        raise VerificationError(f"{side.label}: grpc-status was not sent as a trailer")
    frames = grpc_frames(answer.body)
    if len(frames) != 1 or frames[0][0] != 0:
        raise VerificationError(f"{side.label}: expected one uncompressed message, got {frames}")
    return _environment(side, frames[0][1], endpoints)


def check_grpcio_client(side: Side, endpoints: Endpoints) -> environments_pb2.Environment:
    """The same call through grpcio's client, a real gRPC implementation nobody here wrote."""
    with grpc.insecure_channel(f"{HOST}:{side.port}") as channel:
        method = channel.unary_unary(
            GET_ENVIRONMENT,
            request_serializer=environments_pb2.GetEnvironmentRequest.SerializeToString,
            response_deserializer=environments_pb2.Environment.FromString,
        )
        response, call = method.with_call(
            environments_pb2.GetEnvironmentRequest(id=endpoints.environment_id),
            metadata=[("authorization", f"Bearer {endpoints.api_key}")],
            timeout=TIMEOUT_SECONDS,
        )
    if call.code() != grpc.StatusCode.OK:
        raise VerificationError(f"{side.label}: grpcio client got {call.code()}")
    return _environment(side, response.SerializeToString(), endpoints)


def check_grpc_web(side: Side, endpoints: Endpoints) -> environments_pb2.Environment:
    answer = http1_request(side)
    frames = grpc_frames(answer.body)
    trailers = [payload for flags, payload in frames if flags & 0x80]
    messages = [payload for flags, payload in frames if not flags & 0x80]
    fields = _trailer_fields(trailers[0]) if trailers else {}
    status = fields.get("grpc-status", answer.headers.get("grpc-status"))
    if answer.status != 200 or status != "0" or len(messages) != 1:
        raise VerificationError(
            f"{side.label}: HTTP {answer.status}, grpc-status {status!r}, {len(messages)} messages"
        )
    return _environment(side, messages[0], endpoints)


def check_connect(side: Side, endpoints: Endpoints) -> dict[str, Any]:
    """Connect's unary answer: HTTP 200 and the Environment as JSON, the same as REST's."""
    answer = http1_request(side)
    if answer.status != 200 or not answer.headers.get("content-type", "").startswith(
        "application/json"
    ):
        raise VerificationError(f"{side.label}: HTTP {answer.status}: {answer.body[:200]!r}")
    document: dict[str, Any] = json.loads(answer.body)
    if document.get("id") != endpoints.environment_id:
        raise VerificationError(f"{side.label}: answered {document.get('id')!r}")
    return document


def check_alone(side: Side, endpoints: Endpoints) -> None:
    """A side measured without a comparator, checked by the protocol it speaks."""
    content_type = dict(side.headers).get("content-type", "")
    if content_type.startswith("application/grpc-web"):
        check_grpc_web(side, endpoints)
    else:
        check_connect(side, endpoints)


def _trailer_fields(frame: bytes) -> dict[str, str]:
    """gRPC-web's trailer frame: HTTP/1-style "name: value" lines."""
    fields = {}
    for line in frame.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip().lower()] = value.strip()
    return fields


def check_rest(side: Side, endpoints: Endpoints) -> dict[str, Any]:
    answer = http1_request(side)
    if answer.status != 200:
        raise VerificationError(f"{side.label}: HTTP {answer.status}: {answer.body[:200]!r}")
    document: dict[str, Any] = json.loads(answer.body)
    if document.get("id") != endpoints.environment_id:
        raise VerificationError(f"{side.label}: answered {document.get('id')!r}")
    wrong_key = tuple(
        (name, "Bearer roz_sk_" + "A" * 43) if name == "authorization" else (name, value)
        for name, value in side.headers
    )
    refused = http1_request(side, wrong_key)
    if refused.status != 401:
        raise VerificationError(f"{side.label}: a wrong key got HTTP {refused.status}, not 401")
    return document


def check_comparison(comparison: Comparison, endpoints: Endpoints) -> None:
    """Both sides are right, and they say exactly the same thing."""
    ours, theirs = comparison.ours, comparison.theirs
    if ours.wire is Wire.H2C:
        for side in (ours, theirs):
            check_grpcio_client(side, endpoints)
        if check_grpc(ours, endpoints) != check_grpc(theirs, endpoints):
            raise VerificationError(f"{comparison.title}: the two servers' answers differ")
    elif check_rest(ours, endpoints) != check_rest(theirs, endpoints):
        raise VerificationError(f"{comparison.title}: the two servers' JSON differs")
