"""The device flow driven by Authlib, a third-party OAuth 2.0 client nobody here wrote.

Authlib posts the RFC 8628 §3.4 form (grant_type, device_code, client_id) and raises its own
OAuthError from RFC 6749 §5.2 error bodies; if roz's answers were not standard, it could not.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from tests.e2e.conftest import Roz, TestClock

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def client(server: Roz) -> Iterator[OAuth2Client]:
    with OAuth2Client(
        client_id="authlib-test",
        token_endpoint_auth_method="none",
        token_endpoint=f"{server.url}/api/v1/device/token",
        timeout=30,
    ) as oauth:
        yield oauth


def start(client: OAuth2Client, server: Roz, scope: str) -> dict[str, object]:
    # Authlib has no helper for the device authorization request itself (RFC 8628 §3.1).
    response = httpx.post(
        f"{server.url}/api/v1/device/code", data={"client_id": "authlib-test", "scope": scope}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def fetch(client: OAuth2Client, device_code: object) -> dict[str, object]:
    return client.fetch_token(grant_type=GRANT, device_code=device_code)  # type: ignore[no-any-return]


def oauth_error_of(client: OAuth2Client, device_code: object) -> str:
    with pytest.raises(OAuthError) as raised:
        fetch(client, device_code)
    return str(raised.value.error)


def test_authlib_completes_the_flow(client: OAuth2Client, server: Roz, clock: TestClock) -> None:
    code = start(client, server, "tasks:read")
    assert oauth_error_of(client, code["device_code"]) == "authorization_pending"
    clock.advance(1)
    assert oauth_error_of(client, code["device_code"]) == "slow_down"

    admin = server.new_tenant("authlib")
    approved = httpx.post(
        f"{server.url}/api/v1/device/approve",
        json={"user_code": code["user_code"]},
        headers={"authorization": f"Bearer {admin}"},
    )
    assert approved.status_code == 200, approved.text

    clock.advance(10)
    token = fetch(client, code["device_code"])
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "tasks:read"
    assert str(token["access_token"]).startswith("roz_sk_")
    assert client.token["access_token"] == token["access_token"]

    # Authlib's session now sends the token itself as a Bearer header, and roz accepts it.
    me = client.get(f"{server.url}/api/v1/caller")
    assert me.status_code == 200, me.text
    assert me.json()["api_key"]["scopes"] == ["tasks:read"]

    assert oauth_error_of(client, code["device_code"]) == "invalid_grant"


def test_authlib_hears_denied_and_expired(
    client: OAuth2Client, server: Roz, clock: TestClock
) -> None:
    admin = server.new_tenant("authlib")
    denied = start(client, server, "")
    httpx.post(
        f"{server.url}/api/v1/device/deny",
        json={"user_code": denied["user_code"]},
        headers={"authorization": f"Bearer {admin}"},
    ).raise_for_status()
    assert oauth_error_of(client, denied["device_code"]) == "access_denied"

    expired = start(client, server, "")
    clock.advance(901)
    assert oauth_error_of(client, expired["device_code"]) == "expired_token"
