"""Observed in-process: the ASGI messages pass through untouched, and each request leaves one
access-log line and one count, whatever the app inside did (answered, failed, never answered)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.asgi import Message, Receive, Scope, Send
from gateway.observability.exchange import CURRENT_EXCHANGE
from gateway.observability.metrics import RequestMetrics
from gateway.observability.middleware import Observed, carrying

METHOD = "/echo.v1.EchoService/Echo"


def scope(path: str = METHOD, content_type: bytes = b"application/grpc", **extra: Any) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"key=secret",
        "headers": [(b"content-type", content_type), (b"x-request-id", b"rid-1")],
        "client": ("10.0.0.7", 4242),
        **extra,
    }


def observed(app: Any) -> tuple[Observed, CollectorRegistry]:
    registry = CollectorRegistry()
    return Observed(app, metrics=RequestMetrics(registry, [METHOD]), methods=[METHOD]), registry


async def serve(app: Any, request: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(request, receive, send)
    return sent


GRPC_ANSWER: list[Message] = [
    {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"x-request-id", b"rid-1")],
        "trailers": True,
    },
    {"type": "http.response.body", "body": b"\x00\x00\x00\x00\x00", "more_body": False},
    {"type": "http.response.trailers", "headers": [(b"grpc-status", b"5")]},
]


def answering(messages: list[Message]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)

    return app


def test_messages_pass_through_and_the_trailers_code_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, registry = observed(answering(GRPC_ANSWER))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        sent = asyncio.run(serve(app, scope()))
    assert sent == GRPC_ANSWER
    [record] = caplog.records
    fields = vars(record)
    assert (fields["protocol"], fields["rpc"], fields["status"], fields["code"]) == (
        "grpc",
        METHOD,
        200,
        "NOT_FOUND",
    )
    assert (fields["path"], fields["peer"], fields["request_id"]) == (
        METHOD,
        "ipv4:10.0.0.7:4242",
        "rid-1",
    )
    assert "secret" not in record.getMessage()
    labels = {"protocol": "grpc", "method": METHOD[1:], "code": "NOT_FOUND", "status": "200"}
    assert registry.get_sample_value("roz_requests_total", labels) == 1


def test_what_the_chain_says_wins_and_its_fields_join_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        exchange = CURRENT_EXCHANGE.get()
        assert exchange is not None
        exchange.called("rest", METHOD, "PERMISSION_DENIED", {"tenant": "t-1"})
        await send({"type": "http.response.start", "status": 403, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    observed_app, _ = observed(app)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        asyncio.run(serve(observed_app, scope("/v1/echo", b"application/json")))
    [record] = caplog.records
    fields = vars(record)
    assert (fields["protocol"], fields["rpc"], fields["code"], fields["tenant"]) == (
        "rest",
        METHOD,
        "PERMISSION_DENIED",
        "t-1",
    )
    assert fields["request_id"] == "rid-1"  # from the request when the answer has none


def test_an_app_that_fails_is_logged_as_the_500_the_server_sends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    app, _ = observed(failing)
    with caplog.at_level(logging.INFO, logger="gateway.access"), pytest.raises(RuntimeError):
        asyncio.run(serve(app, scope("/v1/echo", b"application/json")))
    [record] = caplog.records
    assert (record.protocol, record.status) == ("rest", 500)  # type: ignore[attr-defined]
    assert app.requests_in_flight() == 0


def test_a_page_is_http_and_counts_under_unknown(caplog: pytest.LogCaptureFixture) -> None:
    page = carrying("http", answering([{"type": "http.response.start", "status": 200}]))
    app, registry = observed(page)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        asyncio.run(serve(app, scope("/device", b"")))
    [record] = caplog.records
    assert record.protocol == "http"  # type: ignore[attr-defined]
    assert not hasattr(record, "rpc")
    assert not hasattr(record, "code")
    labels = {"protocol": "http", "method": "unknown", "code": "", "status": "200"}
    assert registry.get_sample_value("roz_requests_total", labels) == 1


def test_other_scopes_pass_through_unobserved(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        assert CURRENT_EXCHANGE.get() is None

    observed_app, _ = observed(app)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        asyncio.run(serve(observed_app, {"type": "lifespan"}))
    assert seen == ["lifespan"]
    assert not caplog.records


def test_a_path_cannot_forge_a_line(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = observed(answering([{"type": "http.response.start", "status": 404}]))
    forged = scope("/x", b"application/json", raw_path=b"/x\n2026 INFO gateway.access: fake")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        asyncio.run(serve(app, forged))
    [record] = caplog.records
    assert "\n" not in record.getMessage()
    assert record.path == "/x\\n2026 INFO gateway.access: fake"  # type: ignore[attr-defined]
