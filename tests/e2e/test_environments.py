"""Environments end to end, the same scenarios over REST, native gRPC and gRPC-web."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from roz.v1 import environments_pb2 as pb
from roz.v1 import environments_pb2_grpc

from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call

SERVICE = "/roz.v1.EnvironmentService/"


def create(name: str, **fields: object) -> Rpc:
    environment = pb.Environment(name=name, **fields)  # type: ignore[arg-type]
    return Rpc(
        SERVICE + "CreateEnvironment",
        pb.CreateEnvironmentRequest(environment=environment),
        pb.Environment,
        "POST",
        "/api/v1/environments",
        body=json_format.MessageToDict(environment, preserving_proto_field_name=True),
    )


def get(environment_id: str) -> Rpc:
    return Rpc(
        SERVICE + "GetEnvironment",
        pb.GetEnvironmentRequest(id=environment_id),
        pb.Environment,
        "GET",
        f"/api/v1/environments/{environment_id}",
    )


def list_page(page_size: int = 0, page_token: str = "") -> Rpc:
    query = {k: v for k, v in {"page_size": page_size, "page_token": page_token}.items() if v}
    return Rpc(
        SERVICE + "ListEnvironments",
        pb.ListEnvironmentsRequest(page_size=page_size, page_token=page_token),
        pb.ListEnvironmentsResponse,
        "GET",
        "/api/v1/environments",
        query=query,
    )


def update(environment_id: str, mask: list[str] | None = None, **fields: object) -> Rpc:
    environment = pb.Environment(**fields)  # type: ignore[arg-type]
    request = pb.UpdateEnvironmentRequest(id=environment_id, environment=environment)
    if mask is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=mask))
    return Rpc(
        SERVICE + "UpdateEnvironment",
        request,
        pb.Environment,
        "PUT",
        f"/api/v1/environments/{environment_id}",
        body=json_format.MessageToDict(environment, preserving_proto_field_name=True),
        query={"update_mask": ",".join(mask)} if mask else None,
    )


def delete(environment_id: str) -> Rpc:
    from google.protobuf import empty_pb2

    return Rpc(
        SERVICE + "DeleteEnvironment",
        pb.DeleteEnvironmentRequest(id=environment_id),
        empty_pb2.Empty,
        "DELETE",
        f"/api/v1/environments/{environment_id}",
    )


def ok(outcome: Outcome) -> pb.Environment:
    assert outcome.code == grpc.StatusCode.OK, (outcome.code, outcome.message, outcome.details)
    assert outcome.response is not None
    return outcome.response  # type: ignore[return-value]


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lifecycle(roz: Roz, protocol: str) -> None:
    name = unique("lab")
    created = ok(
        call(
            protocol,
            roz,
            create(
                name,
                description="two arms",
                kind=pb.Environment.KIND_HARDWARE,
                allowed_tools=["camera", "gripper"],
            ),
            roz.admin_key,
        )
    )
    assert created.name == name
    assert created.kind == pb.Environment.KIND_HARDWARE
    assert list(created.allowed_tools) == ["camera", "gripper"]
    uuid.UUID(created.id)
    assert created.create_time.seconds > 0

    fetched = ok(call(protocol, roz, get(created.id), roz.admin_key))
    assert fetched == created

    renamed = ok(call(protocol, roz, update(created.id, ["name"], name=name + "-b"), roz.admin_key))
    assert renamed.name == name + "-b"
    assert renamed.description == "two arms"  # outside the mask: kept
    assert renamed.update_time.ToDatetime() >= created.update_time.ToDatetime()

    replaced = ok(call(protocol, roz, update(created.id, name=name + "-c"), roz.admin_key))
    assert replaced.description == ""  # no mask: PUT replaces every mutable field
    assert list(replaced.allowed_tools) == []

    deleted = call(protocol, roz, delete(created.id), roz.admin_key)
    assert deleted.code == grpc.StatusCode.OK
    gone = call(protocol, roz, get(created.id), roz.admin_key)
    assert gone.code == grpc.StatusCode.NOT_FOUND


def test_rest_statuses_are_declared_per_rpc(roz: Roz) -> None:
    with roz.rest(roz.admin_key) as client:
        created = client.post("/api/v1/environments", json={"name": unique("s")})
        fetched = client.get(f"/api/v1/environments/{created.json()['id']}")
        deleted = client.delete(f"/api/v1/environments/{created.json()['id']}")
    assert (created.status_code, fetched.status_code, deleted.status_code) == (201, 200, 204)
    assert deleted.content == b""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_duplicate_name_is_already_exists(roz: Roz, protocol: str) -> None:
    name = unique("dup")
    ok(call(protocol, roz, create(name), roz.admin_key))
    again = call(protocol, roz, create(name), roz.admin_key)
    assert again.code == grpc.StatusCode.ALREADY_EXISTS
    assert "exists" in again.message
    if protocol == "rest":
        assert again.http_status == 409


def test_same_name_in_two_tenants_is_fine(roz: Roz) -> None:
    other = roz.new_tenant()
    name = unique("shared")
    ok(call("rest", roz, create(name), roz.admin_key))
    ok(call("rest", roz, create(name), other))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invalid_fields_are_reported_together(roz: Roz, protocol: str) -> None:
    outcome = call(
        protocol,
        roz,
        create("", allowed_tools=["ok", "not ok!"], safety_policy_ids=["nope"]),
        roz.admin_key,
    )
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in outcome.detail(error_details_pb2.BadRequest).field_violations}
    assert {"environment.name", "environment.allowed_tools[1]"} <= fields
    assert "environment.safety_policy_ids[0]" in fields
    if protocol == "rest":
        assert outcome.http_status == 400


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_id_is_invalid_argument(roz: Roz, protocol: str) -> None:
    outcome = call(protocol, roz, get("not-a-uuid"), roz.admin_key)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    violation = outcome.detail(error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == "id"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_another_tenants_environment_is_not_found_and_untouched(roz: Roz, protocol: str) -> None:
    intruder = roz.new_tenant("intruder")
    mine = ok(call("rest", roz, create(unique("mine"), description="original"), roz.admin_key))

    for rpc in (get(mine.id), update(mine.id, name="taken-over"), delete(mine.id)):
        outcome = call(protocol, roz, rpc, intruder)
        assert outcome.code == grpc.StatusCode.NOT_FOUND, rpc.path
        assert outcome.detail(error_details_pb2.ResourceInfo).resource_type == "environment"

    listed = ok(call(protocol, roz, list_page(page_size=1000), intruder))
    assert mine.id not in {e.id for e in listed.environments}  # type: ignore[attr-defined]
    still = ok(call("rest", roz, get(mine.id), roz.admin_key))
    assert (still.name, still.description) == (mine.name, "original")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pages_walk_every_environment_once(roz: Roz, protocol: str) -> None:
    tenant = roz.new_tenant("pages")
    names = {unique("p") for _ in range(7)}
    for name in names:
        ok(call("grpc", roz, create(name), tenant))
    seen: list[str] = []
    token = ""
    while True:
        page = ok(call(protocol, roz, list_page(page_size=3, page_token=token), tenant))
        seen.extend(e.name for e in page.environments)  # type: ignore[attr-defined]
        token = page.next_page_token  # type: ignore[attr-defined]
        if not token:
            break
    assert sorted(seen) == sorted(names)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_page_token_is_invalid_argument(roz: Roz, protocol: str) -> None:
    outcome = call(protocol, roz, list_page(page_token="garbage"), roz.admin_key)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.detail(error_details_pb2.BadRequest).field_violations[0].field == "page_token"


def test_more_than_a_thousand_calls_on_one_channel(roz: Roz) -> None:
    with roz.channel() as channel:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        metadata = [("authorization", f"Bearer {roz.admin_key}")]
        for _ in range(1100):
            stub.ListEnvironments(
                pb.ListEnvironmentsRequest(page_size=1), metadata=metadata, timeout=10
            )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_host_ids_are_output_only(roz: Roz, protocol: str) -> None:
    sent = [str(uuid.uuid4())]
    created = ok(call(protocol, roz, create(unique("hosts"), host_ids=sent), roz.admin_key))
    # Ignored on input (AIP-203): a host names its environment, not the other way round.
    assert list(created.host_ids) == []
    replaced = ok(
        call(protocol, roz, update(created.id, name=created.name, host_ids=sent), roz.admin_key)
    )
    assert list(replaced.host_ids) == []
    masked = call(protocol, roz, update(created.id, ["host_ids"], host_ids=sent), roz.admin_key)
    assert masked.code == grpc.StatusCode.INVALID_ARGUMENT
    assert masked.detail(error_details_pb2.BadRequest).field_violations[0].field == "update_mask"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_safety_policies_must_exist_in_the_tenant_and_keep_their_order(
    roz: Roz, protocol: str
) -> None:
    tenant = roz.new_tenant("links")
    other = roz.new_tenant("other")

    def new_policy(key: str) -> str:
        with roz.rest(key) as client:
            response = client.post("/api/v1/safety-policies", json={"name": unique("p")})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    first, second = new_policy(tenant), new_policy(tenant)
    theirs = new_policy(other)
    missing = str(uuid.uuid4())
    refused = call(
        protocol,
        roz,
        create(unique("linked"), safety_policy_ids=[first, theirs, second, missing]),
        tenant,
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    violations = refused.detail(error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [
        ("environment.safety_policy_ids[1]", f"safety policy {theirs} not found"),
        ("environment.safety_policy_ids[3]", f"safety policy {missing} not found"),
    ]
    if protocol == "rest":
        assert refused.http_status == 400

    created = ok(
        call(protocol, roz, create(unique("linked"), safety_policy_ids=[second, first]), tenant)
    )
    assert list(created.safety_policy_ids) == [second, first]
    fetched = ok(call(protocol, roz, get(created.id), tenant))
    assert list(fetched.safety_policy_ids) == [second, first]
    swapped = ok(
        call(
            protocol,
            roz,
            update(created.id, ["safety_policy_ids"], safety_policy_ids=[first, second]),
            tenant,
        )
    )
    assert list(swapped.safety_policy_ids) == [first, second]
    smuggled = call(
        protocol, roz, update(created.id, ["safety_policy_ids"], safety_policy_ids=[theirs]), tenant
    )
    assert smuggled.code == grpc.StatusCode.INVALID_ARGUMENT
    still = ok(call(protocol, roz, get(created.id), tenant))
    assert list(still.safety_policy_ids) == [first, second]


def test_non_finite_config_over_grpc_is_a_field_violation(roz: Roz) -> None:
    environment = pb.Environment(name=unique("nan"))
    environment.config.update({"gain": float("nan"), "limits": {"max": float("inf")}})
    outcome = call(
        "grpc",
        roz,
        Rpc(
            SERVICE + "CreateEnvironment",
            pb.CreateEnvironmentRequest(environment=environment),
            pb.Environment,
            "POST",
            "/api/v1/environments",
        ),
        roz.admin_key,
    )
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT  # not INTERNAL
    fields = {v.field for v in outcome.detail(error_details_pb2.BadRequest).field_violations}
    assert fields == {"environment.config"}
