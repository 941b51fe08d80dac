"""Safety policies end to end: versions, validation on wire names, use by environments, REST's
statuses, scopes and the tenancy matrix."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, empty_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from roz.v1 import safety_policies_pb2 as pb

from tests.e2e import test_environments as environments
from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call
from tests.e2e.test_auth import create_key
from tests.e2e.test_environments import ok, unique

SERVICE = "/roz.v1.SafetyPolicyService/"

CELL_LIMITS = pb.Limits(max_linear_velocity=0.5, max_acceleration=2.0, max_force=40.0)
CELL_WORKSPACE = pb.Workspace(
    boxes=[pb.Box(min=pb.Point(x=-1, y=-1, z=0), max=pb.Point(x=1, y=1, z=1.5))],
    prisms=[
        pb.Prism(
            vertices=[
                pb.Point(x=0, y=0),
                pb.Point(x=3, y=0),
                pb.Point(x=3, y=1),
                pb.Point(x=0, y=2),
            ],
            min_z=0,
            max_z=2,
        )
    ],
)


def _body(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def policy(name: str, **fields: Any) -> pb.SafetyPolicy:
    return pb.SafetyPolicy(name=name, **fields)


def create(message: pb.SafetyPolicy) -> Rpc:
    return Rpc(
        SERVICE + "CreateSafetyPolicy",
        pb.CreateSafetyPolicyRequest(safety_policy=message),
        pb.SafetyPolicy,
        "POST",
        "/api/v1/safety-policies",
        body=_body(message),
    )


def get(policy_id: str, version: int = 0) -> Rpc:
    return Rpc(
        SERVICE + "GetSafetyPolicy",
        pb.GetSafetyPolicyRequest(id=policy_id, version=version),
        pb.SafetyPolicy,
        "GET",
        f"/api/v1/safety-policies/{policy_id}",
        query={"version": version} if version else None,
    )


def list_policies(page_size: int = 0, page_token: str = "") -> Rpc:
    query = {k: v for k, v in {"page_size": page_size, "page_token": page_token}.items() if v}
    return Rpc(
        SERVICE + "ListSafetyPolicies",
        pb.ListSafetyPoliciesRequest(page_size=page_size, page_token=page_token),
        pb.ListSafetyPoliciesResponse,
        "GET",
        "/api/v1/safety-policies",
        query=query,
    )


def update(policy_id: str, message: pb.SafetyPolicy) -> Rpc:
    return Rpc(
        SERVICE + "UpdateSafetyPolicy",
        pb.UpdateSafetyPolicyRequest(id=policy_id, safety_policy=message),
        pb.SafetyPolicy,
        "PUT",
        f"/api/v1/safety-policies/{policy_id}",
        body=_body(message),
    )


def delete(policy_id: str) -> Rpc:
    return Rpc(
        SERVICE + "DeleteSafetyPolicy",
        pb.DeleteSafetyPolicyRequest(id=policy_id),
        empty_pb2.Empty,
        "DELETE",
        f"/api/v1/safety-policies/{policy_id}",
    )


def violations(outcome: Outcome) -> dict[str, str]:
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.message)
    bad_request = outcome.detail(error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad_request.field_violations}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_versions_are_kept_and_readable(roz: Roz, protocol: str) -> None:
    tenant = roz.new_tenant("policies")
    name = unique("cell")
    v1 = ok(
        call(
            protocol,
            roz,
            create(
                policy(
                    name,
                    description="pick line",
                    limits=CELL_LIMITS,
                    workspace=CELL_WORKSPACE,
                    allowed_command_types=["move", "grip", "home"],
                    denied_command_types=["weld"],
                    approval_command_types=["home"],
                )
            ),
            tenant,
        )
    )
    assert v1.version == 1
    assert v1.limits == CELL_LIMITS
    assert not v1.limits.HasField("max_payload")  # unset stays unconstrained
    assert v1.workspace == CELL_WORKSPACE
    assert list(v1.allowed_command_types) == ["grip", "home", "move"]  # sorted
    assert (list(v1.denied_command_types), list(v1.approval_command_types)) == (["weld"], ["home"])
    assert ok(call(protocol, roz, get(v1.id), tenant)) == v1

    v2 = ok(
        call(
            protocol,
            roz,
            update(v1.id, policy(name, limits=pb.Limits(max_force=10.0, max_payload=0.0))),
            tenant,
        )
    )
    assert (v2.id, v2.version, v2.create_time) == (v1.id, 2, v1.create_time)
    assert v2.update_time.ToDatetime() > v1.update_time.ToDatetime()
    assert v2.limits == pb.Limits(max_force=10.0, max_payload=0.0)
    assert v2.limits.HasField("max_payload")  # 0 is a limit, not "unset"
    assert len(v2.workspace.boxes) == 0
    assert ok(call(protocol, roz, get(v1.id), tenant)) == v2
    assert ok(call(protocol, roz, get(v1.id, version=1), tenant)) == v1
    assert ok(call(protocol, roz, get(v1.id, version=2), tenant)) == v2
    future = call(protocol, roz, get(v1.id, version=3), tenant)
    assert future.code == grpc.StatusCode.NOT_FOUND
    assert future.detail(error_details_pb2.ResourceInfo).resource_type == "safety policy version"

    listed = ok(call(protocol, roz, list_policies(), tenant))
    assert list(listed.safety_policies) == [v2]  # type: ignore[attr-defined]

    assert call(protocol, roz, delete(v1.id), tenant).code == grpc.StatusCode.OK
    for version in (0, 1, 2):
        assert call(protocol, roz, get(v1.id, version), tenant).code == grpc.StatusCode.NOT_FOUND


def test_rest_statuses_and_wire_names(roz: Roz) -> None:
    tenant = roz.new_tenant("rest-policies")
    name = unique("rest")
    body = {
        "name": name,
        "limits": {
            "max_linear_velocity": 1.0,
            "max_acceleration": 2,
            "max_force": 20,
            "max_payload": 5,
        },
        "workspace": {
            "boxes": [{"min": {"x": 0, "y": 0, "z": 0}, "max": {"x": 1, "y": 1, "z": 1}}]
        },
        "allowed_command_types": ["move"],
        "denied_command_types": ["weld"],
        "approval_command_types": ["move"],
    }
    with roz.rest(tenant) as client:
        created = client.post("/api/v1/safety-policies", json=body)
        policy_id = created.json()["id"]
        duplicate = client.post("/api/v1/safety-policies", json={"name": name})
        invalid = client.post(
            "/api/v1/safety-policies", json={"name": unique("x"), "limits": {"max_force": "NaN"}}
        )
        updated = client.put(
            f"/api/v1/safety-policies/{policy_id}", json={**body, "description": "v2"}
        )
        old = client.get(f"/api/v1/safety-policies/{policy_id}", params={"version": 1})
        negative = client.get(f"/api/v1/safety-policies/{policy_id}", params={"version": -1})
        missing = client.get(f"/api/v1/safety-policies/{uuid.uuid4()}")
        deleted = client.delete(f"/api/v1/safety-policies/{policy_id}")
        again = client.delete(f"/api/v1/safety-policies/{policy_id}")
    assert created.status_code == 201
    assert created.json()["limits"] == {
        "max_linear_velocity": 1.0,
        "max_acceleration": 2.0,
        "max_force": 20.0,
        "max_payload": 5.0,
    }
    assert created.json()["version"] == 1
    assert duplicate.status_code == 409
    assert invalid.status_code == 400
    assert [v["field"] for v in invalid.json()["details"][0]["field_violations"]] == [
        "safety_policy.limits.max_force"
    ]
    assert (updated.status_code, updated.json()["version"], updated.json()["description"]) == (
        200,
        2,
        "v2",
    )
    assert (old.status_code, old.json()["version"], old.json()["description"]) == (200, 1, "")
    assert negative.status_code == 400
    assert missing.status_code == 404
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert again.status_code == 404


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_validation_names_the_fields(roz: Roz, protocol: str) -> None:
    bad = policy(
        unique("bad"),
        limits=pb.Limits(max_force=-1.0, max_linear_velocity=float("inf")),
        workspace=pb.Workspace(
            boxes=[pb.Box(min=pb.Point(x=2), max=pb.Point(x=1))],
            prisms=[
                pb.Prism(vertices=[pb.Point(x=0), pb.Point(x=1)], min_z=0, max_z=1),
                pb.Prism(
                    vertices=[
                        pb.Point(x=0, y=0),
                        pb.Point(x=1, y=1),
                        pb.Point(x=1, y=0),
                        pb.Point(x=0, y=1),
                    ],
                    min_z=2,
                    max_z=1,
                ),
            ],
        ),
        allowed_command_types=["move", "bad type"],
        denied_command_types=["move"],
    )
    outcome = call(protocol, roz, create(bad), roz.admin_key)
    found = violations(outcome)
    assert set(found) == {
        "safety_policy.limits.max_force",
        "safety_policy.limits.max_linear_velocity",
        "safety_policy.workspace.boxes[0].min.x",
        "safety_policy.workspace.prisms[0].vertices",
        "safety_policy.workspace.prisms[1].min_z",
        "safety_policy.workspace.prisms[1].vertices",
        "safety_policy.allowed_command_types[1]",
        "safety_policy.denied_command_types[0]",
    }
    assert "at least 3 vertices" in found["safety_policy.workspace.prisms[0].vertices"]
    assert "intersects itself" in found["safety_policy.workspace.prisms[1].vertices"]
    assert "N" in found["safety_policy.limits.max_force"]
    if protocol == "rest":
        assert outcome.http_status == 400
    names = {
        p.name
        for p in ok(call("rest", roz, list_policies(page_size=1000), roz.admin_key)).safety_policies
    }  # type: ignore[attr-defined]
    assert bad.name not in names


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_duplicate_name_is_already_exists(roz: Roz, protocol: str) -> None:
    name = unique("dup")
    first = ok(call(protocol, roz, create(policy(name)), roz.admin_key))
    again = call(protocol, roz, create(policy(name)), roz.admin_key)
    assert again.code == grpc.StatusCode.ALREADY_EXISTS
    other = ok(call(protocol, roz, create(policy(unique("other"))), roz.admin_key))
    renamed = call(protocol, roz, update(other.id, policy(name)), roz.admin_key)
    assert renamed.code == grpc.StatusCode.ALREADY_EXISTS
    assert ok(call(protocol, roz, get(other.id), roz.admin_key)).version == 1
    ok(call(protocol, roz, create(policy(name)), roz.new_tenant()))  # per tenant only
    assert ok(call(protocol, roz, get(first.id), roz.admin_key)) == first


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_policy_in_use_cannot_be_deleted_until_detached(roz: Roz, protocol: str) -> None:
    tenant = roz.new_tenant("in-use")
    used = ok(call("rest", roz, create(policy(unique("used"))), tenant))
    spare = ok(call("rest", roz, create(policy(unique("spare"))), tenant))
    cell = ok(
        call(
            protocol,
            roz,
            environments.create(unique("cell"), safety_policy_ids=[spare.id, used.id]),
            tenant,
        )
    )
    assert list(cell.safety_policy_ids) == [spare.id, used.id]
    refused = call(protocol, roz, delete(used.id), tenant)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    info = refused.detail(error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == (
        "SAFETY_POLICY_IN_USE",
        {"safety_policy_id": used.id, "environment_id": cell.id},
    )
    if protocol == "rest":
        assert refused.http_status == 400
    assert ok(call(protocol, roz, get(used.id), tenant)) == used

    detached = ok(
        call(
            protocol,
            roz,
            environments.update(cell.id, ["safety_policy_ids"], safety_policy_ids=[spare.id]),
            tenant,
        )
    )
    assert list(detached.safety_policy_ids) == [spare.id]
    assert call(protocol, roz, delete(used.id), tenant).code == grpc.StatusCode.OK
    assert call(protocol, roz, get(used.id), tenant).code == grpc.StatusCode.NOT_FOUND


def test_scopes_are_enforced_per_method(roz: Roz) -> None:
    tenant = roz.new_tenant("policy-scopes")
    existing = ok(call("rest", roz, create(policy(unique("p"))), tenant))
    reader = ok(call("rest", roz, create_key("reader", ["safety-policies:read"]), tenant)).secret  # type: ignore[attr-defined]
    for protocol in ("rest", "grpc"):
        for rpc in (get(existing.id), get(existing.id, 1), list_policies()):
            ok(call(protocol, roz, rpc, reader))
        for rpc in (
            create(policy(unique("p"))),
            update(existing.id, policy("x")),
            delete(existing.id),
        ):
            outcome = call(protocol, roz, rpc, reader)
            assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, rpc.path
            info = outcome.detail(error_details_pb2.ErrorInfo)
            assert info.metadata["required_scope"] == "safety-policies:write"
    assert ok(call("rest", roz, get(existing.id), tenant)) == existing


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_tenancy_matrix(roz: Roz, protocol: str) -> None:
    """Tenant B, holding tenant A's ids, reaches nothing of A's and changes nothing."""
    owner = roz.new_tenant("owner")
    intruder = roz.new_tenant("intruder")
    mine = ok(call("rest", roz, create(policy(unique("mine"), limits=CELL_LIMITS)), owner))
    cell = ok(
        call("rest", roz, environments.create(unique("cell"), safety_policy_ids=[mine.id]), owner)
    )

    for label, rpc in {
        "GetSafetyPolicy": get(mine.id),
        "GetSafetyPolicy?version": get(mine.id, version=1),
        "UpdateSafetyPolicy": update(mine.id, policy("taken-over")),
        "DeleteSafetyPolicy": delete(mine.id),
    }.items():
        outcome = call(protocol, roz, rpc, intruder)
        assert outcome.code == grpc.StatusCode.NOT_FOUND, label
        assert outcome.detail(error_details_pb2.ResourceInfo).resource_type == "safety policy"
        if protocol == "rest":
            assert outcome.http_status == 404, label
    listed = ok(call(protocol, roz, list_policies(page_size=1000), intruder))
    assert mine.id not in {p.id for p in listed.safety_policies}  # type: ignore[attr-defined]
    # A's policy is not B's to attach: a reference in a body, so INVALID_ARGUMENT, like a typo.
    smuggled = call(
        protocol, roz, environments.create(unique("spy"), safety_policy_ids=[mine.id]), intruder
    )
    assert set(violations(smuggled)) == {"environment.safety_policy_ids[0]"}
    # CreateSafetyPolicy takes no id; the same name is B's own business.
    ok(call(protocol, roz, create(policy(mine.name)), intruder))

    assert ok(call("rest", roz, get(mine.id), owner)) == mine
    # No update landed: there is no version 2.
    assert call("rest", roz, get(mine.id, version=2), owner).code == grpc.StatusCode.NOT_FOUND
    assert list(ok(call("rest", roz, environments.get(cell.id), owner)).safety_policy_ids) == [
        mine.id
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_durations_round_trip_and_bad_ones_name_their_fields(roz: Roz, protocol: str) -> None:
    tenant = roz.new_tenant("durations")
    name = unique("timed")
    v1 = ok(
        call(
            protocol,
            roz,
            create(
                policy(
                    name,
                    approval_ttl=duration_pb2.Duration(seconds=300),
                    heartbeat_window=duration_pb2.Duration(seconds=2, nanos=500_000_000),
                )
            ),
            tenant,
        )
    )
    assert v1.approval_ttl == duration_pb2.Duration(seconds=300)
    assert v1.heartbeat_window == duration_pb2.Duration(seconds=2, nanos=500_000_000)
    assert ok(call(protocol, roz, get(v1.id), tenant)) == v1

    bad = policy(
        name,
        approval_ttl=duration_pb2.Duration(seconds=-1),
        heartbeat_window=duration_pb2.Duration(seconds=0, nanos=500_000_000),
    )
    found = violations(call(protocol, roz, update(v1.id, bad), tenant))
    assert found == {
        "safety_policy.approval_ttl": (
            "approval_ttl must be between 1s and 2592000s (or unset), not -1s"
        ),
        "safety_policy.heartbeat_window": (
            "heartbeat_window must be between 1s and 600s (or unset), not 0.5s"
        ),
    }
    too_long = policy(name, heartbeat_window=duration_pb2.Duration(seconds=601))
    assert set(violations(call(protocol, roz, update(v1.id, too_long), tenant))) == {
        "safety_policy.heartbeat_window"
    }
    assert ok(call(protocol, roz, get(v1.id), tenant)) == v1  # untouched, still version 1

    # Zero is "not set", like leaving the field out: the next version has neither.
    zero = policy(name, approval_ttl=duration_pb2.Duration(), heartbeat_window=None)
    v2 = ok(call(protocol, roz, update(v1.id, zero), tenant))
    assert v2.version == 2
    assert not v2.HasField("approval_ttl")
    assert not v2.HasField("heartbeat_window")


def test_durations_on_rest_are_protobuf_json_strings(roz: Roz) -> None:
    tenant = roz.new_tenant("rest-durations")
    with roz.rest(tenant) as client:
        created = client.post(
            "/api/v1/safety-policies",
            json={"name": unique("rest"), "approval_ttl": "90s", "heartbeatWindow": "1.250s"},
        )
        refused = client.post(
            "/api/v1/safety-policies",
            json={"name": unique("rest"), "heartbeat_window": "3600s"},
        )
        garbled = client.post(
            "/api/v1/safety-policies", json={"name": unique("rest"), "approval_ttl": "soon"}
        )
    assert created.status_code == 201
    body = created.json()
    assert (body["approval_ttl"], body["heartbeat_window"]) == ("90s", "1.250s")
    assert refused.status_code == 400
    assert [v["field"] for v in refused.json()["details"][0]["field_violations"]] == [
        "safety_policy.heartbeat_window"
    ]
    assert garbled.status_code == 400


def test_a_duration_outside_protobufs_own_range_is_a_field_violation(roz: Roz) -> None:
    # Only a binary client can send nanos of the other sign than the seconds.
    broken = policy(unique("broken"), approval_ttl=duration_pb2.Duration(seconds=5, nanos=-1))
    rpc = Rpc(
        SERVICE + "CreateSafetyPolicy",
        pb.CreateSafetyPolicyRequest(safety_policy=broken),
        pb.SafetyPolicy,
        "POST",
        "/api/v1/safety-policies",
    )
    found = violations(call("grpc", roz, rpc, roz.admin_key))
    assert list(found) == ["safety_policy.approval_ttl"]
