"""Robot keys: API keys bound to a host, created and shown through the key API, refused every
method not marked `robot` on REST, gRPC-web and native gRPC, and gone with their host."""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from roz.v1 import api_keys_pb2 as pb

from gateway.registry import Method
from gateway.rest.bindings import read_bindings
from gateway.rest.templates import ANY, REST
from server.api.device_auth import rest_options
from tests.e2e import test_hosts as hosts
from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call
from tests.e2e.test_auth import SERVICE, create_key, get_key, list_keys
from tests.e2e.test_environments import ok, unique
from tests.support import grpc_web

ROBOT_KEY_REFUSED = "ROBOT_KEY_REFUSED"


def create_robot_key(name: str, host_id: str, scopes: tuple[str, ...] = ()) -> Rpc:
    key = pb.ApiKey(name=name, host_id=host_id, scopes=scopes)
    return Rpc(
        SERVICE + "CreateApiKey",
        pb.CreateApiKeyRequest(api_key=key),
        pb.CreateApiKeyResponse,
        "POST",
        "/api/v1/auth-keys",
        body=json_format.MessageToDict(key, preserving_proto_field_name=True),
    )


def new_host(roz: Roz, key: str) -> str:
    return str(ok(call("rest", roz, hosts.create(unique("robot")), key)).id)


def robot_key(roz: Roz, admin: str, host_id: str) -> tuple[pb.ApiKey, str]:
    created = ok(call("rest", roz, create_robot_key("robot", host_id), admin))
    return created.api_key, created.secret  # type: ignore[attr-defined]


def violations(outcome: Outcome) -> list[tuple[str, str]]:
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.message)
    return [
        (v.field, v.description)
        for v in outcome.detail(error_details_pb2.BadRequest).field_violations
    ]


def refused_as_robot(outcome: Outcome) -> None:
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (outcome.code, outcome.message)
    assert outcome.detail(error_details_pb2.ErrorInfo).reason == ROBOT_KEY_REFUSED
    if outcome.http_status is not None:
        assert outcome.http_status == 403


# -- creating and showing the binding -----------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_bound_to_a_host_shows_its_binding(roz: Roz, protocol: str) -> None:
    host_id = new_host(roz, roz.admin_key)
    created = ok(call(protocol, roz, create_robot_key("arm-1", host_id), roz.admin_key))
    key = created.api_key  # type: ignore[attr-defined]
    assert key.host_id == host_id
    assert list(key.scopes) == []
    assert created.secret.startswith("roz_sk_")  # type: ignore[attr-defined]

    listed = ok(call(protocol, roz, list_keys(), roz.admin_key))
    by_id = {k.id: k for k in listed.api_keys}  # type: ignore[attr-defined]
    assert by_id[key.id].host_id == host_id
    fetched = ok(call(protocol, roz, get_key(key.id), roz.admin_key))
    assert fetched.host_id == host_id  # type: ignore[attr-defined]
    # An ordinary key has none, and says so.
    plain = ok(call(protocol, roz, create_key("plain", []), roz.admin_key))
    assert plain.api_key.host_id == ""  # type: ignore[attr-defined]


def test_rest_wire_names_of_the_binding(roz: Roz) -> None:
    host_id = new_host(roz, roz.admin_key)
    with roz.rest(roz.admin_key) as client:
        created = client.post("/api/v1/auth-keys", json={"name": "arm", "host_id": host_id})
        assert created.status_code == 201, created.text
        key = created.json()["api_key"]
        assert key["host_id"] == host_id
        assert key["scopes"] == []
        listed = client.get("/api/v1/auth-keys").json()["api_keys"]
        assert {k["id"]: k["host_id"] for k in listed}[key["id"]] == host_id
        assert client.get(f"/api/v1/auth-keys/{key['id']}").json()["host_id"] == host_id
        # Input takes the lowerCamelCase spelling too.
        camel = client.post("/api/v1/auth-keys", json={"name": "arm-2", "hostId": host_id})
        assert camel.json()["api_key"]["host_id"] == host_id


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_host_and_another_tenants_host_answer_the_same(roz: Roz, protocol: str) -> None:
    other = roz.new_tenant("other")
    theirs = new_host(roz, other)
    unknown = str(uuid.uuid4())
    outcomes = [
        call(protocol, roz, create_robot_key("stolen", host_id), roz.admin_key)
        for host_id in (theirs, unknown)
    ]
    expected = [("api_key.host_id", "no host with this id exists")]
    assert [violations(outcome) for outcome in outcomes] == [expected, expected]
    assert outcomes[0].message == outcomes[1].message
    # Nothing was created in either tenant.
    mine = ok(call("rest", roz, list_keys(), roz.admin_key))
    assert "stolen" not in {k.name for k in mine.api_keys}  # type: ignore[attr-defined]
    assert "stolen" not in {k.name for k in ok(call("rest", roz, list_keys(), other)).api_keys}  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_bindings_are_field_violations(roz: Roz, protocol: str) -> None:
    host_id = new_host(roz, roz.admin_key)
    malformed = call(protocol, roz, create_robot_key("k", "not-a-host"), roz.admin_key)
    assert [field for field, _ in violations(malformed)] == ["api_key.host_id"]
    with_scopes = call(
        protocol, roz, create_robot_key("k", host_id, ("hosts:read",)), roz.admin_key
    )
    ((field, description),) = violations(with_scopes)
    assert field == "api_key.scopes"
    assert "holds no scopes" in description


def test_minting_a_robot_key_needs_what_a_robot_does(roz: Roz) -> None:
    host_id = new_host(roz, roz.admin_key)
    key_admin = ok(call("rest", roz, create_key("keys-only", ["api-keys:admin"]), roz.admin_key))
    outcome = call("rest", roz, create_robot_key("r", host_id), key_admin.secret)  # type: ignore[attr-defined]
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, outcome.message
    assert outcome.detail(error_details_pb2.ErrorInfo).metadata["required_scope"] == (
        "commands:write"
    )
    enough = ok(
        call(
            "rest",
            roz,
            create_key(
                "operator", ["api-keys:admin", "hosts:write", "commands:write", "tasks:write"]
            ),
            roz.admin_key,
        )
    )
    minted = ok(call("rest", roz, create_robot_key("r", host_id), enough.secret))  # type: ignore[attr-defined]
    assert minted.api_key.host_id == host_id  # type: ignore[attr-defined]


# -- what a robot key may call: nothing yet ----------------------------------------------------


def _refusable(roz: Roz) -> list[Method]:
    """Every method of the registry a robot key must be refused: not public, not `robot`."""
    rules = roz.app.access_rules
    found = [
        method
        for method in roz.app.registry.methods()
        if not rules[method.path].public and not rules[method.path].robot
    ]
    assert len(found) > 30  # the whole API, not an empty walk
    return sorted(found, key=lambda method: method.path)


def _over_grpc(roz: Roz, method: Method, secret: str) -> Outcome:
    # Every call kind is one HTTP/2 stream on the wire, so a streaming call reaches any method.
    with roz.channel() as channel:
        stream = channel.stream_stream(
            method.path,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=method.response_class.FromString,
        )
        responses = stream(
            iter([method.request_class()]),
            metadata=[("authorization", f"Bearer {secret}")],
            timeout=30,
        )
        try:
            for _ in responses:
                pass
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            details = [_info(d) for d in status.details] if status else []
            return Outcome(code=error.code(), message=error.details() or "", details=details)
    return Outcome(code=grpc.StatusCode.OK)


def _over_grpc_web(roz: Roz, method: Method, secret: str) -> Outcome:
    payload = method.request_class().SerializeToString()
    response = httpx.post(
        roz.url + method.path,
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "authorization": f"Bearer {secret}",
        },
        timeout=30,
    )
    trailers = {k.lower(): v for k, v in response.headers.items()}
    trailers.update(grpc_web.trailers(response.content))
    raw = trailers.get("grpc-status-details-bin", "")
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    code = int(trailers["grpc-status"])
    return Outcome(
        code=next(c for c in grpc.StatusCode if c.value[0] == code),
        message=status.message,
        details=[_info(d) for d in status.details],
    )


def _info(detail: Any) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    detail.Unpack(info)
    return info


def _rest_requests(roz: Roz) -> Iterator[tuple[str, str, str, bytes | None]]:
    """(method path, HTTP method, URL path, body) for every REST route, from the descriptors."""
    for binding in read_bindings(
        roz.app.registry, lenient_enums=True, strict_query=False, method_options=rest_options()
    ):
        parts: list[str] = []
        for segment in binding.template.segments:
            parts.append(str(uuid.uuid4()) if segment in (ANY, REST) else segment)
        url = "/" + "/".join(parts)
        if binding.template.verb is not None:
            url += f":{binding.template.verb}"
        body = b"{}" if binding.plan.takes_body else None
        yield binding.method.path, binding.http_method, url, body


def test_a_robot_key_is_refused_every_method_on_every_protocol(roz: Roz) -> None:
    """Walks the registry: no method but those marked `robot` (none yet) lets a robot key in."""
    host_id = new_host(roz, roz.admin_key)
    _, secret = robot_key(roz, roz.admin_key, host_id)
    methods = _refusable(roz)
    for method in methods:
        refused_as_robot(_over_grpc(roz, method, secret))
        if not method.kind.request_streaming:  # gRPC-web has no client streaming
            refused_as_robot(_over_grpc_web(roz, method, secret))
    paths = {method.path for method in methods}
    reached: set[str] = set()
    with roz.rest(secret) as client:
        for path, http_method, url, body in _rest_requests(roz):
            if path not in paths:
                continue
            response = client.request(
                http_method, url, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 403, (http_method, url, response.text)
            assert response.json()["code"] == code_pb2.PERMISSION_DENIED
            (info,) = [d for d in response.json()["details"] if d["@type"].endswith("ErrorInfo")]
            assert info["reason"] == ROBOT_KEY_REFUSED, (http_method, url)
            reached.add(path)
    assert len(reached) > 30


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_robot_key_cannot_manage_its_own_host_or_mint_keys(roz: Roz, protocol: str) -> None:
    host_id = new_host(roz, roz.admin_key)
    _, secret = robot_key(roz, roz.admin_key, host_id)
    refused_as_robot(call(protocol, roz, hosts.get(host_id), secret))
    refused_as_robot(
        call(protocol, roz, hosts.set_status(host_id, hosts.pb.Host.STATUS_ONLINE, "hello"), secret)
    )
    refused_as_robot(call(protocol, roz, create_key("escape", []), secret))
    refused_as_robot(call(protocol, roz, create_robot_key("twin", host_id), secret))
    assert (
        ok(call("rest", roz, hosts.get(host_id), roz.admin_key)).status
        == hosts.pb.Host.STATUS_OFFLINE
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_robot_key_of_one_tenant_can_do_nothing_in_another(roz: Roz, protocol: str) -> None:
    other = roz.new_tenant("victim")
    their_host = new_host(roz, other)
    _, secret = robot_key(roz, roz.admin_key, new_host(roz, roz.admin_key))
    refused_as_robot(call(protocol, roz, hosts.get(their_host), secret))
    refused_as_robot(call(protocol, roz, hosts.delete(their_host), secret))
    refused_as_robot(call(protocol, roz, list_keys(), secret))
    assert ok(call("rest", roz, hosts.get(their_host), other)).id == their_host


# -- the binding's lifetime --------------------------------------------------------------------


def test_deleting_the_host_deletes_its_keys(roz: Roz) -> None:
    tenant = roz.new_tenant("decommission")
    host_id = new_host(roz, tenant)
    key, secret = robot_key(roz, tenant, host_id)
    kept_host = new_host(roz, tenant)
    other_key, other_secret = robot_key(roz, tenant, kept_host)
    with roz.rest(secret) as client:
        assert client.get("/api/v1/caller").status_code == 403  # valid, and refused
    assert call("rest", roz, hosts.delete(host_id), tenant).code == grpc.StatusCode.OK
    for protocol in PROTOCOLS:
        outcome = call(protocol, roz, hosts.get(kept_host), secret)
        assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, (protocol, outcome.message)
    assert call("rest", roz, get_key(key.id), tenant).code == grpc.StatusCode.NOT_FOUND
    listed = ok(call("rest", roz, list_keys(), tenant))
    assert key.id not in {k.id for k in listed.api_keys}  # type: ignore[attr-defined]
    # Another host's key is untouched: still valid (refused, not unknown).
    refused_as_robot(call("grpc", roz, hosts.get(kept_host), other_secret))
    assert ok(call("rest", roz, get_key(other_key.id), tenant)).host_id == kept_host  # type: ignore[attr-defined]


def test_a_host_in_use_keeps_its_keys(roz: Roz) -> None:
    tenant = roz.new_tenant("busy")
    host_id = new_host(roz, tenant)
    key, secret = robot_key(roz, tenant, host_id)
    with roz.rest(tenant) as client:
        command = client.post("/api/v1/commands", json={"host_id": host_id, "type": "home"})
        assert command.status_code == 201, command.text
        assert client.delete(f"/api/v1/hosts/{host_id}").status_code == 400
    assert ok(call("rest", roz, get_key(key.id), tenant)).host_id == host_id  # type: ignore[attr-defined]
    refused_as_robot(call("rest", roz, hosts.get(host_id), secret))
