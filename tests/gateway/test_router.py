"""The router on a real Hypercorn listener: dispatch, request ids, CORS, websocket, lifespan."""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from sonora.client import insecure_web_channel

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.health import add_health_to
from gateway.reflection import add_reflection_to
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import RunningServer, running

ORIGIN = "https://console.example"
OTHER_ORIGIN = "https://evil.example"
ECHO_PATH = "/testing.echo.v1.EchoService/Echo"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


class _Recorder:
    """A stand-in app that answers with its name and the request ids it was handed."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        seen = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"]
        body = json.dumps({"app": self.name, "method": scope["method"], "request_ids": seen})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"x-custom", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


class _RestRecorder(_Recorder):
    ROUTES: ClassVar[dict[str, set[str]]] = {
        "/v1/things": {"GET", "POST"},
        "/v1/things/1": {"GET", "DELETE", "PATCH"},
    }

    def allowed_methods(self, path: str) -> set[str] | None:
        return self.ROUTES.get(path)


def _standins(allowed_origins: list[str]) -> GatewayRouter:
    return GatewayRouter(
        grpc_app=_Recorder("grpc"),
        grpc_web_app=_Recorder("grpc-web"),
        rest_app=_RestRecorder("rest"),
        allowed_origins=allowed_origins,
    )


@pytest.fixture(scope="module")
def routed() -> Iterator[RunningServer]:
    with running(lambda: _standins([ORIGIN])) as server:
        yield server


@pytest.fixture(scope="module")
def wildcard() -> Iterator[RunningServer]:
    with running(lambda: _standins(["*"])) as server:
        yield server


@pytest.fixture(scope="module")
def real() -> Iterator[RunningServer]:
    """The echo service on the real apps."""

    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), registry)
        add_reflection_to(registry)
        add_health_to(registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
            allowed_origins=[ORIGIN],
        )

    with running(build) as server:
        yield server


def _get(server: RunningServer, path: str = "/v1/things", **kwargs: Any) -> httpx.Response:
    return httpx.request(kwargs.pop("method", "GET"), server.url + path, timeout=10, **kwargs)


def _preflight(
    server: RunningServer, path: str, origin: str = ORIGIN, headers: str = "content-type"
) -> httpx.Response:
    return _get(
        server,
        path,
        method="OPTIONS",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": headers,
        },
    )


# -- dispatch --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "app"),
    [
        ("application/grpc", "grpc"),
        ("application/grpc+proto", "grpc"),
        ("application/grpc+json", "grpc"),
        ("Application/GRPC; charset=utf-8", "grpc"),
        ("application/grpc-web", "grpc-web"),
        ("application/grpc-web+proto", "grpc-web"),
        ("application/grpc-web-text", "grpc-web"),
        ("application/grpc-web-text+proto", "grpc-web"),
        ("application/json", "rest"),
        ("application/grpcfoo", "rest"),
        ("text/plain", "rest"),
        (None, "rest"),
    ],
)
def test_content_type_picks_the_app(
    routed: RunningServer, content_type: str | None, app: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = _get(routed, "/any/path", method="POST", content=b"x", headers=headers)
    assert response.json()["app"] == app


# -- request ids -----------------------------------------------------------------------------


def test_a_request_id_is_generated_and_handed_to_the_app(routed: RunningServer) -> None:
    response = _get(routed)
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert response.json()["request_ids"] == [request_id]
    assert _get(routed).headers["x-request-id"] != request_id


@pytest.mark.parametrize("request_id", ["abc-123_XYZ.~:/", "k" * 128])
def test_a_sane_client_request_id_is_kept(routed: RunningServer, request_id: str) -> None:
    response = _get(routed, headers={"x-request-id": request_id})
    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_ids"] == [request_id]


@pytest.mark.parametrize(
    "headers",
    [
        [("x-request-id", "k" * 129)],
        [("x-request-id", "two words")],
        [("x-request-id", b"caf\xe9")],
        [("x-request-id", "")],
        [("x-request-id", "first"), ("x-request-id", "second")],
    ],
    ids=["too-long", "space", "non-ascii", "empty", "twice"],
)
def test_an_insane_client_request_id_is_replaced(
    routed: RunningServer, headers: list[tuple[str, Any]]
) -> None:
    response = _get(routed, headers=headers)
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert response.json()["request_ids"] == [request_id]  # the app never saw the client's


def test_request_id_on_grpc_web(real: RunningServer) -> None:
    with insecure_web_channel(real.url) as channel:
        echo = channel.unary_unary(
            ECHO_PATH, echo_pb2.EchoRequest.SerializeToString, echo_pb2.EchoResponse.FromString
        )
        response, call = echo.with_call(echo_pb2.EchoRequest(), metadata=[("x-request-id", "w-1")])
        generated, generated_call = echo.with_call(echo_pb2.EchoRequest())
    assert dict(call.initial_metadata())["x-request-id"] == "w-1"
    assert "x-request-id=w-1" in response.metadata
    request_id = dict(generated_call.initial_metadata())["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert f"x-request-id={request_id}" in generated.metadata  # the servicer saw the same id


def test_request_id_on_native_grpc(real: RunningServer) -> None:
    with grpc.insecure_channel(real.target) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        response, call = stub.Echo.with_call(
            echo_pb2.EchoRequest(), metadata=[("x-request-id", "n-1")], timeout=10
        )
        generated, generated_call = stub.Echo.with_call(echo_pb2.EchoRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Fail(echo_pb2.EchoRequest(code=5), timeout=10)
    assert dict(call.initial_metadata())["x-request-id"] == "n-1"
    assert "x-request-id=n-1" in response.metadata
    request_id = dict(generated_call.initial_metadata())["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert f"x-request-id={request_id}" in generated.metadata
    # An error answered without any message still carries it.
    assert GENERATED_ID.fullmatch(dict(failure.value.initial_metadata())["x-request-id"])


def test_request_id_on_rest(real: RunningServer) -> None:
    response = _get(real, "/v1/echo/hello", headers={"x-request-id": "r-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "r-1"
    assert "x-request-id=r-1" in response.json()["metadata"]
    missing = _get(real, "/v1/no/such/route")
    assert GENERATED_ID.fullmatch(missing.headers["x-request-id"])


# -- CORS preflight --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "requested"),
    [
        (ECHO_PATH, "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-tenant"),
        (ECHO_PATH, "content-type"),  # recognised by its /pkg.Service/Method shape
        ("/some/proxy/prefix", "x-grpc-web,content-type"),  # recognised by x-grpc-web
    ],
)
def test_grpc_web_preflight_from_an_allowed_origin(
    routed: RunningServer, path: str, requested: str
) -> None:
    response = _preflight(routed, path, headers=requested)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert response.headers["access-control-allow-headers"] == requested
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-max-age"] == "600"
    assert "Origin" in response.headers["vary"]
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


def test_rest_preflight_allows_the_methods_bound_to_the_path(routed: RunningServer) -> None:
    response = _preflight(routed, "/v1/things/1")
    assert response.status_code == 204
    assert response.headers["access-control-allow-methods"] == "DELETE, GET, OPTIONS, PATCH"
    assert response.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_rest_preflight_for_an_unknown_path_is_404(routed: RunningServer) -> None:
    response = _preflight(routed, "/v1/nothing/here")
    assert response.status_code == 404
    assert response.json()["code"] == 5
    assert "access-control-allow-origin" not in response.headers


def test_rest_preflight_reads_the_real_route_table(real: RunningServer) -> None:
    # echo.proto binds POST /v1/echo and GET /v1/echo/{message}.
    assert "POST" in _preflight(real, "/v1/echo").headers["access-control-allow-methods"]
    methods = _preflight(real, "/v1/echo/hello").headers["access-control-allow-methods"]
    assert "GET" in methods


@pytest.mark.parametrize("path", [ECHO_PATH, "/v1/things"])
def test_preflight_from_another_origin_is_refused_without_cors_headers(
    routed: RunningServer, path: str
) -> None:
    response = _preflight(routed, path, origin=OTHER_ORIGIN, headers="x-grpc-web")
    assert response.status_code == 403
    assert not [name for name in response.headers if name.startswith("access-control-")]


def test_options_without_preflight_headers_goes_to_rest(routed: RunningServer) -> None:
    response = _get(routed, method="OPTIONS", headers={"origin": ORIGIN})
    assert response.json() == {
        "app": "rest",
        "method": "OPTIONS",
        "request_ids": [response.headers["x-request-id"]],
    }


def test_wildcard_echoes_any_origin_but_never_allows_credentials(wildcard: RunningServer) -> None:
    preflight = _preflight(wildcard, ECHO_PATH, origin=OTHER_ORIGIN)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == OTHER_ORIGIN
    assert "access-control-allow-credentials" not in preflight.headers
    actual = _get(wildcard, headers={"origin": OTHER_ORIGIN})
    assert actual.headers["access-control-allow-origin"] == OTHER_ORIGIN
    assert "access-control-allow-credentials" not in actual.headers


# -- CORS on actual responses ----------------------------------------------------------------


def test_actual_response_to_an_allowed_origin_exposes_the_grpc_headers(
    routed: RunningServer,
) -> None:
    response = _get(routed, headers={"origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["vary"] == "Origin"
    exposed = [
        name.strip() for name in response.headers["access-control-expose-headers"].split(",")
    ]
    assert exposed[:4] == ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"]
    assert "x-custom" in exposed  # the app's own headers are readable too
    assert "content-type" not in exposed  # safelisted already


def test_actual_response_to_another_origin_has_no_cors_headers(routed: RunningServer) -> None:
    response = _get(routed, headers={"origin": OTHER_ORIGIN})
    assert response.status_code == 200  # served; the browser keeps it from the page
    assert not [name for name in response.headers if name.startswith("access-control-")]
    assert response.headers["vary"] == "Origin"
    assert response.headers["x-request-id"]


def test_grpc_web_error_is_readable_cross_origin(real: RunningServer) -> None:
    payload = echo_pb2.EchoRequest(code=3).SerializeToString()
    response = httpx.post(
        real.url + "/testing.echo.v1.EchoService/Fail",
        content=b"\x00" + len(payload).to_bytes(4, "big") + payload,
        headers={"content-type": "application/grpc-web+proto", "origin": ORIGIN},
        timeout=10,
    )
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"]
    for name in ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"):
        assert name in exposed
    details = status_pb2.Status.FromString(
        base64.b64decode(response.headers["grpc-status-details-bin"])
    )
    assert details.code == 3


# -- other scopes ----------------------------------------------------------------------------


def test_websocket_is_refused(routed: RunningServer) -> None:
    request = (
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((routed.host, routed.port), timeout=10) as sock:
        sock.sendall(request.encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"403"


def test_lifespan_context_runs_around_serving() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    def build() -> GatewayRouter:
        router = _standins([])
        return GatewayRouter(
            grpc_app=router._grpc,
            grpc_web_app=router._grpc_web,
            rest_app=router._rest,
            lifespan=lifespan,
        )

    with running(build) as server:
        assert events == ["startup"]  # before the first request is served
        assert _get(server).status_code == 200
    assert events == ["startup", "shutdown"]


def test_lifespan_asgi_app_receives_the_events() -> None:
    events: list[str] = []

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            events.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    with running(
        lambda: GatewayRouter(
            grpc_app=_Recorder("grpc"),
            grpc_web_app=_Recorder("grpc-web"),
            rest_app=_RestRecorder("rest"),
            lifespan=lifespan,
        )
    ):
        assert events == ["lifespan.startup"]
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_a_failing_startup_is_reported_to_the_server() -> None:
    # In process, asserting the exact ASGI messages: through Hypercorn this only shows up as a
    # server that never listens.
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    router = GatewayRouter(
        grpc_app=_Recorder("grpc"),
        grpc_web_app=_Recorder("grpc-web"),
        rest_app=_RestRecorder("rest"),
        lifespan=lifespan,
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await router({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [
        {"type": "lifespan.startup.failed", "message": "RuntimeError('database unreachable')"}
    ]


def test_lifespan_must_be_an_asgi_app_or_a_context_factory() -> None:
    with pytest.raises(TypeError):
        GatewayRouter(
            grpc_app=_Recorder("grpc"),
            grpc_web_app=_Recorder("grpc-web"),
            rest_app=_RestRecorder("rest"),
            lifespan=lambda app: app,
        )
