"""Path mounts in the router: other ASGI apps (e.g. HTML pages) under a prefix, beside REST."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import RunningServer, running

ORIGIN = "https://console.example"
ECHO_SERVICE = "/testing.echo.v1.EchoService"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


class Page:
    """A stand-in mounted app: answers with its name and what it was handed."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        seen = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"]
        body = json.dumps(
            {"app": self.name, "method": scope["method"], "path": scope["path"], "ids": seen}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Rest(Page):
    def allowed_methods(self, path: str) -> set[str] | None:
        return {"GET", "POST"}


def standins(**mounts: Any) -> GatewayRouter:
    return GatewayRouter(
        grpc_app=Page("grpc"),
        grpc_web_app=Page("grpc-web"),
        rest_app=Rest("rest"),
        allowed_origins=[ORIGIN],
        mounts={
            "/device": Page("device"),
            "/static/css": Page("css"),
            "/static": Page("static"),
            "/odd.path+(x)": Page("odd"),
            **mounts,
        },
    )


@pytest.fixture(scope="module")
def routed() -> Iterator[RunningServer]:
    with running(standins) as server:
        yield server


@pytest.fixture(scope="module")
def real() -> Iterator[RunningServer]:
    """The echo service on the real apps, with a page mounted over the service's own path."""

    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
            mounts={ECHO_SERVICE: Page("page"), "/v1/echo": Page("shadow")},
        )

    with running(build) as server:
        yield server


def request(server: RunningServer, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=10, **kwargs)


def app_for(server: RunningServer, path: str, **kwargs: Any) -> str:
    response = request(server, path, **kwargs)
    assert response.status_code == 200
    app: str = response.json()["app"]
    return app


# -- which app ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "app"),
    [
        ("/device", "device"),
        ("/device/", "device"),
        ("/device/approve", "device"),
        ("/device/approve/deeper?user_code=ABCD-EFGH", "device"),
        ("/devicex", "rest"),
        ("/device.html", "rest"),
        ("/v1/device", "rest"),
        ("/", "rest"),
        ("/static/site.js", "static"),
        ("/static/css", "css"),
        ("/static/css/site.css", "css"),  # the longest prefix wins
        ("/static/cssx", "static"),
        ("/odd.path+(x)/y", "odd"),  # prefixes are literal text, not patterns
        ("/oddXpath+(x)/y", "rest"),
    ],
)
def test_the_path_picks_the_mount(routed: RunningServer, path: str, app: str) -> None:
    assert app_for(routed, path) == app


def test_a_decoded_newline_does_not_end_a_prefix(routed: RunningServer) -> None:
    assert app_for(routed, "/device%0A") == "rest"


def test_the_mount_sees_the_full_path_and_method(routed: RunningServer) -> None:
    seen = request(routed, "/device/approve", method="POST", content=b"user_code=X").json()
    assert (seen["app"], seen["method"], seen["path"]) == ("device", "POST", "/device/approve")


@pytest.mark.parametrize(
    ("content_type", "app"),
    [
        ("application/grpc", "grpc"),
        ("application/grpc+proto", "grpc"),
        ("application/grpc-web+proto", "grpc-web"),
        ("application/grpc-web-text", "grpc-web"),
        ("application/x-www-form-urlencoded", "device"),
        ("text/html", "device"),
    ],
)
def test_grpc_content_types_still_go_to_grpc(
    routed: RunningServer, content_type: str, app: str
) -> None:
    headers = {"content-type": content_type}
    assert app_for(routed, "/device/x", method="POST", content=b"x", headers=headers) == app


def test_a_real_grpc_call_under_a_mounted_prefix_reaches_the_servicer(real: RunningServer) -> None:
    with grpc.insecure_channel(real.target) as channel:
        echo = channel.unary_unary(
            ECHO_SERVICE + "/Echo",
            echo_pb2.EchoRequest.SerializeToString,
            echo_pb2.EchoResponse.FromString,
        )
        response = echo(echo_pb2.EchoRequest(message="through"), timeout=10)
    assert response.echoed.message == "through"
    assert app_for(real, ECHO_SERVICE + "/Echo") == "page"  # a browser's GET finds the page


def test_a_mount_comes_before_rest(real: RunningServer) -> None:
    assert app_for(real, "/v1/echo", method="POST", json={"message": "hi"}) == "shadow"
    rest = request(real, "/v1/echo/hi")  # /v1/echo/{message} is under the mount too
    assert rest.json()["app"] == "shadow"
    assert request(real, "/v1/echoes").status_code == 404  # REST's own answer


# -- request ids and CORS -------------------------------------------------------------------------


def test_a_mount_gets_a_request_id(routed: RunningServer) -> None:
    response = request(routed, "/device")
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert response.json()["ids"] == [request_id]


def test_a_mount_keeps_a_sane_client_request_id(routed: RunningServer) -> None:
    response = request(routed, "/device", headers={"x-request-id": "page-1"})
    assert response.headers["x-request-id"] == "page-1"
    assert response.json()["ids"] == ["page-1"]


def test_a_mount_gets_no_cors_headers(routed: RunningServer) -> None:
    response = request(routed, "/device", headers={"origin": ORIGIN})
    assert response.json()["app"] == "device"
    assert not [name for name in response.headers if name.startswith("access-control-")]
    assert "vary" not in response.headers
    rest = request(routed, "/devicex", headers={"origin": ORIGIN})
    assert rest.headers["access-control-allow-origin"] == ORIGIN  # REST beside it still has CORS


def test_a_preflight_for_a_mount_is_passed_to_it(routed: RunningServer) -> None:
    response = request(
        routed,
        "/device/approve",
        method="OPTIONS",
        headers={"origin": ORIGIN, "access-control-request-method": "POST"},
    )
    assert response.status_code == 200
    assert response.json()["app"] == "device"
    assert response.json()["method"] == "OPTIONS"
    assert "access-control-allow-origin" not in response.headers
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


# -- start-up -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/", "device", "/device/", "device/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="mount prefix"):
        GatewayRouter(
            grpc_app=Page("grpc"),
            grpc_web_app=Page("grpc-web"),
            rest_app=Rest("rest"),
            mounts={prefix: Page("page")},
        )
