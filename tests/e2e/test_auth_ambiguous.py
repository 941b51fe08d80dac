"""Two credentials on one call are refused the same way on REST, native gRPC and gRPC-web.

protocols.py sends one Authorization header; these calls need two, so each protocol is spoken
here with a client that keeps repeated headers (httpx's header list, grpcio's metadata list).
"""

from __future__ import annotations

import struct
from urllib.parse import unquote

import grpc
import httpx
import pytest
from roz.v1 import environments_pb2 as pb

from server.domain.api_keys import mint_secret
from tests.e2e.conftest import Roz

METHOD = "/roz.v1.EnvironmentService/ListEnvironments"
MESSAGE = "ambiguous credentials: send one Authorization header, not several"


def _twice(roz: Roz, second: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {roz.admin_key}"), ("authorization", second)]


@pytest.mark.parametrize("second", ["Bearer " + mint_secret(), "", "BEARER {key}"])
def test_two_authorization_headers_are_401_over_rest(roz: Roz, second: str) -> None:
    headers = _twice(roz, second.format(key=roz.admin_key))
    response = httpx.get(roz.url + "/api/v1/environments", headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert body["message"] == MESSAGE
    assert body["details"][0]["reason"] == "API_KEY_AMBIGUOUS"


def test_one_authorization_header_still_works_over_rest(roz: Roz) -> None:
    headers = [("authorization", f"Bearer {roz.admin_key}")]
    response = httpx.get(roz.url + "/api/v1/environments", headers=headers, timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("second", ["Bearer " + mint_secret(), "BEARER {key}"])
def test_two_authorization_entries_are_unauthenticated_over_grpc(roz: Roz, second: str) -> None:
    with roz.channel() as channel:
        method = channel.unary_unary(
            METHOD,
            request_serializer=pb.ListEnvironmentsRequest.SerializeToString,
            response_deserializer=pb.ListEnvironmentsResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            method(
                pb.ListEnvironmentsRequest(),
                metadata=_twice(roz, second.format(key=roz.admin_key)),
                timeout=30,
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == MESSAGE


@pytest.mark.parametrize("second", ["Bearer " + mint_secret(), "BEARER {key}"])
def test_two_authorization_headers_are_unauthenticated_over_grpc_web(roz: Roz, second: str) -> None:
    payload = pb.ListEnvironmentsRequest().SerializeToString()
    headers = [
        ("content-type", "application/grpc-web+proto"),
        *_twice(roz, second.format(key=roz.admin_key)),
    ]
    response = httpx.post(
        roz.url + METHOD,
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200
    # An error before any message is a trailers-only response: the status is in the headers.
    assert response.headers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert unquote(response.headers["grpc-message"]) == MESSAGE
