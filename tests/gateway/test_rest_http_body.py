"""google.api.HttpBody bodies: taken raw, of any content type, and answered raw."""

from __future__ import annotations

import base64
import gzip
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api import httpbody_pb2

from gateway.chain import InterceptorChain
from gateway.registry import MethodRegistry
from gateway.rest import BindingError, RestApp, RestMethodOptions
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    echo,
    echo_registry,
    rest_server,
    rule,
)

LIMIT = 4096
# Not UTF-8, not JSON: every byte value once.
BINARY = b'{"not": json\r\n' + bytes(range(256))


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(max_body_bytes=LIMIT) as server:
        yield server


def receive(
    rest: RestServer, content: Any, headers: dict[str, str] | None = None, **params: str
) -> dict[str, Any]:
    """What the servicer received: the request message as JSON."""
    response = rest.client.post(
        "/v1/hooks/h-1:receive", content=content, headers=headers or {}, params=params
    )
    assert response.status_code == 200, response.text
    received: dict[str, Any] = response.json()["received"]
    return received


def data(received: dict[str, Any]) -> bytes:
    return base64.b64decode(received["payload"]["data"])


# -- into a field of the request -----------------------------------------------------------------


def test_the_body_reaches_the_servicer_byte_for_byte(rest: RestServer) -> None:
    received = receive(rest, BINARY, {"content-type": "application/octet-stream"})
    assert data(received) == BINARY
    assert received["payload"]["content_type"] == "application/octet-stream"


def test_a_json_body_is_not_parsed_or_rewritten(rest: RestServer) -> None:
    # A signature over the body holds only for the bytes as sent: spacing, key order, duplicates.
    sent = b'{"type":"ping",  "type": "pong",\n "z": 1, "a": 2}\n'
    received = receive(rest, sent, {"content-type": "application/json"})
    assert data(received) == sent
    assert received["payload"]["content_type"] == "application/json"


def test_malformed_json_declared_as_json_is_taken_as_is(rest: RestServer) -> None:
    received = receive(rest, b'{"message": ', {"content-type": "application/json"})
    assert data(received) == b'{"message": '


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; charset=iso-8859-1",
        "application/x-www-form-urlencoded",
        "application/vnd.example.webhook+cbor; version=2",
        "Image/PNG",
    ],
)
def test_any_content_type_is_taken_and_passed_on_as_sent(
    rest: RestServer, content_type: str
) -> None:
    received = receive(rest, BINARY, {"content-type": content_type})
    assert data(received) == BINARY
    assert received["payload"]["content_type"] == content_type


def test_a_body_without_a_content_type(rest: RestServer) -> None:
    received = receive(rest, b"plain words")
    assert data(received) == b"plain words"
    assert received["payload"]["content_type"] == ""


def test_an_empty_body_is_an_empty_payload(rest: RestServer) -> None:
    received = receive(rest, b"", {"content-type": "text/plain"})
    assert received["payload"]["data"] == ""
    assert received["payload"]["content_type"] == "text/plain"


def test_path_and_query_bind_the_other_fields(rest: RestServer) -> None:
    received = receive(rest, BINARY, {"content-type": "application/octet-stream"}, note="hi")
    assert received["hook"] == "h-1"
    assert received["note"] == "hi"
    assert data(received) == BINARY


def test_the_query_cannot_overwrite_the_payload(rest: RestServer) -> None:
    # Ignored, as any parameter the body binds (refused with reject_unknown_query_parameters).
    params = {"payload.content_type": "application/json", "payload.data": "eA=="}
    received = receive(rest, b"sent", {"content-type": "text/plain"}, **params)
    assert received["payload"]["content_type"] == "text/plain"
    assert data(received) == b"sent"


# -- size and Content-Encoding -------------------------------------------------------------------


def test_a_body_of_the_limit_is_taken_one_byte_more_is_413(rest: RestServer) -> None:
    headers = {"content-type": "application/octet-stream"}
    assert data(receive(rest, b"\xff" * LIMIT, headers)) == b"\xff" * LIMIT
    response = rest.client.post(
        "/v1/hooks/h-1:receive", content=b"\xff" * (LIMIT + 1), headers=headers
    )
    assert response.status_code == 413
    assert response.json()["code"] == 8


def test_a_streamed_body_is_taken_up_to_the_limit_and_413_past_it(rest: RestServer) -> None:
    sent = []

    def chunks(count: int) -> Iterator[bytes]:  # no Content-Length
        for _ in range(count):
            sent.append(1)
            yield b"\xfe" * 1024
            time.sleep(0.01)

    headers = {"content-type": "image/png"}
    assert data(receive(rest, chunks(LIMIT // 1024), headers)) == b"\xfe" * LIMIT
    sent.clear()
    response = rest.client.post("/v1/hooks/h-1:receive", content=chunks(64), headers=headers)
    assert response.status_code == 413
    assert len(sent) < 64  # the server stopped reading early


def test_a_gzip_body_is_inflated_into_the_payload_within_the_limit(rest: RestServer) -> None:
    headers = {"content-type": "application/octet-stream", "content-encoding": "gzip"}
    received = receive(rest, gzip.compress(BINARY), headers)
    assert data(received) == BINARY
    assert received["payload"]["content_type"] == "application/octet-stream"
    bomb = gzip.compress(bytes(LIMIT * 1000))
    response = rest.client.post("/v1/hooks/h-1:receive", content=bomb, headers=headers)
    assert response.status_code == 413
    assert response.json()["message"].endswith("once decompressed")


# -- answered raw --------------------------------------------------------------------------------


def test_a_response_body_field_of_httpbody_is_answered_raw(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/hooks/h-1:reflect", content=BINARY, headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    assert response.content == BINARY
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(len(BINARY))


def test_an_httpbody_request_and_response_go_through_raw(rest: RestServer) -> None:
    response = rest.client.put(
        "/v1/blobs", content=BINARY, headers={"content-type": "application/pdf"}
    )
    assert response.status_code == 200
    assert response.content == BINARY
    assert response.headers["content-type"] == "application/pdf"


def test_an_httpbody_without_a_content_type_is_answered_as_octets(rest: RestServer) -> None:
    response = rest.client.put("/v1/blobs", content=b"\x00\x01")
    assert response.status_code == 200
    assert response.content == b"\x00\x01"
    assert response.headers["content-type"] == "application/octet-stream"


def test_head_of_a_raw_response_has_its_headers_and_no_body() -> None:
    async def blob(request: Any, context: Any) -> Any:
        return httpbody_pb2.HttpBody(content_type="text/csv", data=b"a,b\n1,2\n")

    def extra(registry: MethodRegistry) -> None:
        add_service(
            registry,
            [FakeMethod("Export", rule(get="/v1/export"), blob, output_type="google.api.HttpBody")],
        )

    with rest_server(extra=extra) as server:
        got = server.client.get("/v1/export")
        head = server.client.head("/v1/export")
    assert (got.status_code, got.content, got.headers["content-type"]) == (
        200,
        b"a,b\n1,2\n",
        "text/csv",
    )
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "8")


# -- start-up ------------------------------------------------------------------------------------

SERVICE = "/testing.echo.v1.EchoService/"


def test_form_body_on_an_httpbody_request_is_refused() -> None:
    registry, _ = echo_registry()
    with pytest.raises(BindingError, match=re.escape("Reflect: form_body does not apply")):
        RestApp(registry, method_options={SERVICE + "Reflect": RestMethodOptions(form_body=True)})


def test_a_client_stream_of_httpbody_is_refused() -> None:
    registry = MethodRegistry(InterceptorChain())
    add_service(
        registry,
        [
            FakeMethod(
                "Upload",
                rule(post="/v1/upload", body="*"),
                echo,
                client_streaming=True,
                input_type="google.api.HttpBody",
            )
        ],
    )
    with pytest.raises(BindingError, match=r"client-streaming method cannot take a google\.api"):
        RestApp(registry)
