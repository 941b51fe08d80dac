"""REST headers ⇄ gRPC metadata: what reaches the servicer, what comes back, and Grpc-Timeout."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.rest import RestMethodOptions
from tests.gateway.echo_service import EchoServicer
from tests.gateway.rest_harness import RestServer, rest_server

WEBHOOK_HEADERS = (b"webhook-id", b"webhook-timestamp", b"webhook-signature")


class TalkativeServicer(EchoServicer):
    """Echo that also answers with metadata, and says who its peer was."""

    async def Echo(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata([("x-served-by", "unit-7"), ("x-raw-bin", b"\x00\xff")])
        context.set_trailing_metadata([("x-cost", "3"), ("grpc-internal", "hidden")])
        response = await super().Echo(request, context)
        response.metadata.append(f"peer={context.peer()}")
        return response

    async def Fail(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata([("x-served-by", "unit-7")])
        await super().Fail(request, context)


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(servicer_factory=TalkativeServicer) as server:
        yield server


@pytest.fixture(scope="module")
def forwarding() -> Iterator[RestServer]:
    options = RestMethodOptions(forward_headers=WEBHOOK_HEADERS)
    with rest_server(method_options={"/testing.echo.v1.EchoService/Receive": options}) as server:
        yield server


def seen(rest: RestServer, headers: dict[str, str]) -> list[str]:
    response = rest.client.get("/v1/echo/m", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["metadata"]  # type: ignore[no-any-return]


def test_authorization_and_grpc_metadata_headers_reach_the_servicer(rest: RestServer) -> None:
    metadata = seen(
        rest,
        {
            "Authorization": "Bearer roz_sk_123",
            "Grpc-Metadata-Tenant": "acme",
            "Grpc-Metadata-Trace-Bin": base64.b64encode(b"\x01\x02").decode().rstrip("="),
            "X-Request-Id": "req-1",
        },
    )
    assert "authorization=Bearer roz_sk_123" in metadata
    assert "tenant=acme" in metadata
    assert "trace-bin=b'\\x01\\x02'" in metadata
    assert "x-request-id=req-1" in metadata
    assert any(item.startswith("user-agent=python-httpx") for item in metadata)


def test_other_headers_stay_at_the_http_layer(rest: RestServer) -> None:
    metadata = seen(
        rest,
        {"Cookie": "session=1", "X-Custom": "no", "Grpc-Metadata-Grpc-Status": "0"},
    )
    names = {item.split("=", 1)[0] for item in metadata}
    assert not names & {"cookie", "x-custom", "grpc-status", "accept", "host"}


def test_bad_binary_metadata_is_400(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/m", headers={"Grpc-Metadata-Trace-Bin": "!!not base64"})
    assert response.status_code == 400


def test_peer_is_the_client_address(rest: RestServer) -> None:
    metadata = seen(rest, {})
    assert any(item.startswith("peer=ipv4:127.0.0.1:") for item in metadata)


def test_servicer_metadata_comes_back_as_headers(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/m")
    assert response.headers["grpc-metadata-x-served-by"] == "unit-7"
    assert base64.b64decode(response.headers["grpc-metadata-x-raw-bin"]) == b"\x00\xff"
    assert response.headers["grpc-trailer-x-cost"] == "3"
    assert "grpc-trailer-grpc-internal" not in response.headers


def test_error_responses_carry_metadata_but_not_the_details_trailer(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/3")
    assert response.status_code == 400
    assert response.headers["grpc-metadata-x-served-by"] == "unit-7"
    assert not [name for name in response.headers if "status-details" in name]


def test_grpc_timeout_sets_the_deadline(rest: RestServer) -> None:
    started = time.monotonic()
    response = rest.client.get(
        "/v1/sleep", params={"delay": "5s"}, headers={"Grpc-Timeout": "200m"}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["code"] == 4
    assert elapsed < 3


def test_a_timeout_long_enough_lets_the_call_finish(rest: RestServer) -> None:
    response = rest.client.get(
        "/v1/sleep", params={"delay": "0.05s"}, headers={"Grpc-Timeout": "5S"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["soon", "10", "123456789S", "1.5S"])
def test_a_malformed_grpc_timeout_is_400(rest: RestServer, value: str) -> None:
    response = rest.client.get("/v1/echo/m", headers={"Grpc-Timeout": value})
    assert response.status_code == 400
    assert response.json()["code"] == 3


# -- a method's own forwarded headers ------------------------------------------------------------

SIGNED = [
    ("Webhook-Id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
    ("Webhook-Timestamp", "1674087231"),
    ("Webhook-Signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
    ("Webhook-Signature", "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw1V7+7vBkUE="),
]


def test_a_methods_forward_headers_reach_its_servicer(forwarding: RestServer) -> None:
    response = forwarding.client.post(
        "/v1/hooks/h:receive", content=b"{}", headers=[*SIGNED, ("X-Other", "no")]
    )
    assert response.status_code == 200, response.text
    forwarded = [
        item for item in response.json()["metadata"] if item.startswith(("webhook-", "x-other"))
    ]
    # A repeated header is an entry per occurrence, in order, as for FORWARDED_HEADERS.
    assert forwarded == [f"{name.lower()}={value}" for name, value in SIGNED]


def test_other_methods_do_not_forward_them(forwarding: RestServer) -> None:
    response = forwarding.client.get("/v1/echo/m", headers=SIGNED)
    assert response.status_code == 200
    metadata = response.json()["metadata"]
    assert not [item for item in metadata if item.startswith("webhook-")]
    assert any(item.startswith("user-agent=") for item in metadata)  # the usual ones still are
