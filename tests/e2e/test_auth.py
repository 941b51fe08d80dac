"""API keys and the interceptor chain, identical on REST, native gRPC and gRPC-web."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, timestamp_pb2
from google.rpc import error_details_pb2
from roz.v1 import api_keys_pb2 as pb

from server.domain.api_keys import mint_secret
from tests.e2e.conftest import Roz, RozFactory
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call
from tests.e2e.test_environments import list_page, ok

SERVICE = "/roz.v1.ApiKeyService/"


def create_key(name: str, scopes: list[str], expire_time: datetime | None = None) -> Rpc:
    key = pb.ApiKey(name=name, scopes=scopes)
    if expire_time is not None:
        key.expire_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(expire_time.timestamp())))
    return Rpc(
        SERVICE + "CreateApiKey",
        pb.CreateApiKeyRequest(api_key=key),
        pb.CreateApiKeyResponse,
        "POST",
        "/api/v1/auth-keys",
        body=json_format.MessageToDict(key, preserving_proto_field_name=True),
    )


def list_keys() -> Rpc:
    return Rpc(
        SERVICE + "ListApiKeys",
        pb.ListApiKeysRequest(page_size=1000),
        pb.ListApiKeysResponse,
        "GET",
        "/api/v1/auth-keys",
        query={"page_size": 1000},
    )


def get_key(key_id: str) -> Rpc:
    return Rpc(
        SERVICE + "GetApiKey",
        pb.GetApiKeyRequest(id=key_id),
        pb.ApiKey,
        "GET",
        f"/api/v1/auth-keys/{key_id}",
    )


def revoke_key(key_id: str) -> Rpc:
    return Rpc(
        SERVICE + "DeleteApiKey",
        pb.DeleteApiKeyRequest(id=key_id),
        empty_pb2.Empty,
        "DELETE",
        f"/api/v1/auth-keys/{key_id}",
    )


def minted(roz: Roz, scopes: list[str], admin: str | None = None) -> str:
    response = ok(call("rest", roz, create_key("k", scopes), admin or roz.admin_key))
    return response.secret  # type: ignore[attr-defined,no-any-return]


def denied(outcome: Outcome, code: grpc.StatusCode) -> Outcome:
    assert outcome.code == code, (outcome.code, outcome.message)
    return outcome


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_missing_key_is_unauthenticated(roz: Roz, protocol: str) -> None:
    outcome = denied(call(protocol, roz, list_page(), None), grpc.StatusCode.UNAUTHENTICATED)
    assert "missing API key" in outcome.message
    assert outcome.detail(error_details_pb2.ErrorInfo).reason == "API_KEY_MISSING"
    if protocol == "rest":
        assert outcome.http_status == 401
        assert outcome.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "secret", ["roz_sk_short", mint_secret(), "garbage with spaces", "roz_sk_" + "é" * 43]
)
def test_unknown_or_malformed_key_is_unauthenticated(roz: Roz, protocol: str, secret: str) -> None:
    if protocol not in ("rest", "connect") and not secret.isascii():
        pytest.skip("gRPC metadata values are ASCII; grpcio refuses to send this one")
    outcome = denied(call(protocol, roz, list_page(), secret), grpc.StatusCode.UNAUTHENTICATED)
    assert outcome.message == "invalid, expired or revoked API key"
    assert outcome.detail(error_details_pb2.ErrorInfo).reason == "API_KEY_INVALID"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_missing_scope_is_permission_denied_with_the_scope_named(roz: Roz, protocol: str) -> None:
    reader = minted(roz, ["environments:read"])
    assert call(protocol, roz, list_page(), reader).code == grpc.StatusCode.OK
    from tests.e2e.test_environments import create

    outcome = denied(
        call(protocol, roz, create(f"x-{uuid.uuid4().hex[:6]}"), reader),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    info = outcome.detail(error_details_pb2.ErrorInfo)
    assert info.metadata["required_scope"] == "environments:write"
    if protocol == "rest":
        assert outcome.http_status == 403
    denied(call(protocol, roz, list_keys(), reader), grpc.StatusCode.PERMISSION_DENIED)


def test_write_implies_read_and_admin_implies_everything(roz: Roz) -> None:
    writer = minted(roz, ["environments:write"])
    assert call("rest", roz, list_page(), writer).code == grpc.StatusCode.OK
    group_admin = minted(roz, ["api-keys:admin"])
    assert call("rest", roz, list_keys(), group_admin).code == grpc.StatusCode.OK
    denied(call("rest", roz, list_page(), group_admin), grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_key_lifecycle_shows_the_secret_once(roz: Roz, protocol: str) -> None:
    created = ok(call(protocol, roz, create_key("ci", ["environments:read"]), roz.admin_key))
    secret = created.secret  # type: ignore[attr-defined]
    key = created.api_key  # type: ignore[attr-defined]
    assert secret.startswith("roz_sk_")
    assert len(secret) == 50
    assert secret.startswith(key.key_prefix)
    assert list(key.scopes) == ["environments:read"]
    assert not key.HasField("expire_time")  # permanent unless asked

    listed = ok(call(protocol, roz, list_keys(), roz.admin_key))
    assert key.id in {k.id for k in listed.api_keys}  # type: ignore[attr-defined]
    fetched = ok(call(protocol, roz, get_key(key.id), roz.admin_key))
    assert fetched.key_prefix == key.key_prefix  # type: ignore[attr-defined]
    for message in (listed, fetched):
        assert secret not in json_format.MessageToJson(message)

    assert call(protocol, roz, list_page(), secret).code == grpc.StatusCode.OK
    assert call(protocol, roz, revoke_key(key.id), roz.admin_key).code == grpc.StatusCode.OK
    # Revocation takes effect on the very next request, on every protocol.
    for other in PROTOCOLS:
        denied(call(other, roz, list_page(), secret), grpc.StatusCode.UNAUTHENTICATED)
    listed = ok(call(protocol, roz, list_keys(), roz.admin_key))
    assert key.id not in {k.id for k in listed.api_keys}  # type: ignore[attr-defined]
    revoked = ok(call(protocol, roz, get_key(key.id), roz.admin_key))
    assert revoked.HasField("revoke_time")
    denied(call(protocol, roz, revoke_key(key.id), roz.admin_key), grpc.StatusCode.NOT_FOUND)


def test_rest_create_is_201_and_delete_204(roz: Roz) -> None:
    with roz.rest(roz.admin_key) as client:
        created = client.post("/api/v1/auth-keys", json={"name": "my-key"})
        assert created.status_code == 201
        body = created.json()
        assert body["secret"].startswith("roz_sk_")
        assert body["api_key"]["name"] == "my-key"
        revoked = client.delete(f"/api/v1/auth-keys/{body['api_key']['id']}")
    assert revoked.status_code == 204


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_scope_is_a_field_violation(roz: Roz, protocol: str) -> None:
    outcome = denied(
        call(protocol, roz, create_key("k", ["environments:read", "root"]), roz.admin_key),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    violations = outcome.detail(error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["api_key.scopes[1]"]


def test_a_key_cannot_mint_more_than_it_holds(roz: Roz) -> None:
    key_admin = minted(roz, ["api-keys:admin", "environments:read"])
    assert minted(roz, ["environments:read"], admin=key_admin).startswith("roz_sk_")
    outcome = denied(
        call("rest", roz, create_key("escalate", ["admin"]), key_admin),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "admin" in outcome.detail(error_details_pb2.ErrorInfo).metadata["required_scope"]


def test_expired_key_stops_working(roz: Roz) -> None:
    past = denied(
        call(
            "rest",
            roz,
            create_key("old", [], datetime.now(UTC) - timedelta(hours=1)),
            roz.admin_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert past.detail(error_details_pb2.BadRequest).field_violations[0].field == (
        "api_key.expire_time"
    )
    soon = datetime.now(UTC) + timedelta(seconds=2)
    created = ok(call("rest", roz, create_key("brief", ["environments:read"], soon), roz.admin_key))
    secret = created.secret  # type: ignore[attr-defined]
    assert call("grpc", roz, list_page(), secret).code == grpc.StatusCode.OK
    time.sleep(max(0.0, soon.timestamp() - time.time()) + 1.1)
    denied(call("grpc", roz, list_page(), secret), grpc.StatusCode.UNAUTHENTICATED)


def test_keys_are_tenant_scoped(roz: Roz) -> None:
    other = roz.new_tenant()
    mine = ok(call("rest", roz, create_key("mine", []), roz.admin_key)).api_key  # type: ignore[attr-defined]
    denied(call("rest", roz, get_key(mine.id), other), grpc.StatusCode.NOT_FOUND)
    denied(call("grpc", roz, revoke_key(mine.id), other), grpc.StatusCode.NOT_FOUND)
    theirs = ok(call("rest", roz, list_keys(), other))
    assert mine.id not in {k.id for k in theirs.api_keys}  # type: ignore[attr-defined]
    still = ok(call("rest", roz, get_key(mine.id), roz.admin_key))
    assert not still.HasField("revoke_time")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rate_limit_is_per_tenant_and_says_when_to_retry(
    roz_factory: RozFactory, protocol: str
) -> None:
    limited = roz_factory(rate_limit_rps=0.5, rate_limit_burst=3)
    other = limited.new_tenant()
    for _ in range(3):
        assert call(protocol, limited, list_page(), limited.admin_key).code == grpc.StatusCode.OK
    outcome = denied(
        call(protocol, limited, list_page(), limited.admin_key), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    retry = outcome.detail(error_details_pb2.RetryInfo).retry_delay
    assert 1 <= retry.seconds <= 2
    if protocol == "rest":
        assert outcome.http_status == 429
        assert int(outcome.headers["retry-after"]) == math.ceil(retry.seconds)
    # Another tenant has a bucket of its own; public calls are never counted.
    assert call(protocol, limited, list_page(), other).code == grpc.StatusCode.OK
    with limited.rest() as client:
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scheme_is_bearer_case_insensitively(roz: Roz, protocol: str) -> None:
    from tests.e2e import protocols

    rpc = list_page()
    basic = protocols.call_with_authorization(protocol, roz, rpc, f"Basic {roz.admin_key}")
    denied(basic, grpc.StatusCode.UNAUTHENTICATED)
    assert "Bearer scheme" in basic.message
    lower = protocols.call_with_authorization(protocol, roz, rpc, f"bearer {roz.admin_key}")
    assert lower.code == grpc.StatusCode.OK
