"""Hosts end to end: the same scenarios over REST, native gRPC and gRPC-web, REST's own
statuses and wire names, and the tenancy matrix over REST and native gRPC."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from roz.v1 import hosts_pb2 as pb

from tests.e2e import test_environments as environments
from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call
from tests.e2e.test_auth import create_key
from tests.e2e.test_environments import ok, unique

SERVICE = "/roz.v1.HostService/"


def _body(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def create(name: str, **fields: Any) -> Rpc:
    host = pb.Host(name=name, **fields)
    return Rpc(
        SERVICE + "CreateHost",
        pb.CreateHostRequest(host=host),
        pb.Host,
        "POST",
        "/api/v1/hosts",
        body=_body(host),
    )


def get(host_id: str) -> Rpc:
    return Rpc(
        SERVICE + "GetHost",
        pb.GetHostRequest(id=host_id),
        pb.Host,
        "GET",
        f"/api/v1/hosts/{host_id}",
    )


def list_hosts(
    status: int = 0, environment_id: str = "", page_size: int = 0, page_token: str = ""
) -> Rpc:
    request = pb.ListHostsRequest(
        status=status,  # type: ignore[arg-type]
        environment_id=environment_id,
        page_size=page_size,
        page_token=page_token,
    )
    query: dict[str, Any] = {
        "status": pb.Host.Status.Name(status) if status else None,  # type: ignore[arg-type]
        "environment_id": environment_id,
        "page_size": page_size,
        "page_token": page_token,
    }
    return Rpc(
        SERVICE + "ListHosts",
        request,
        pb.ListHostsResponse,
        "GET",
        "/api/v1/hosts",
        query={k: v for k, v in query.items() if v},
    )


def set_status(host_id: str, status: int, reason: str = "") -> Rpc:
    request = pb.UpdateHostStatusRequest(id=host_id, status=status, reason=reason)  # type: ignore[arg-type]
    return Rpc(
        SERVICE + "UpdateHostStatus",
        request,
        pb.Host,
        "PUT",
        f"/api/v1/hosts/{host_id}/status",
        body={"status": pb.Host.Status.Name(status), "reason": reason},  # type: ignore[arg-type]
    )


def history(host_id: str, page_size: int = 0, page_token: str = "") -> Rpc:
    query = {k: v for k, v in {"page_size": page_size, "page_token": page_token}.items() if v}
    return Rpc(
        SERVICE + "ListHostStatusChanges",
        pb.ListHostStatusChangesRequest(
            host_id=host_id, page_size=page_size, page_token=page_token
        ),
        pb.ListHostStatusChangesResponse,
        "GET",
        f"/api/v1/hosts/{host_id}/status-changes",
        query=query,
    )


def update(host_id: str, mask: list[str] | None = None, **fields: Any) -> Rpc:
    host = pb.Host(**fields)
    request = pb.UpdateHostRequest(id=host_id, host=host)
    if mask is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=mask))
    return Rpc(
        SERVICE + "UpdateHost",
        request,
        pb.Host,
        "PUT",
        f"/api/v1/hosts/{host_id}",
        body=_body(host),
        query={"update_mask": ",".join(mask)} if mask else None,
    )


def delete(host_id: str) -> Rpc:
    return Rpc(
        SERVICE + "DeleteHost",
        pb.DeleteHostRequest(id=host_id),
        empty_pb2.Empty,
        "DELETE",
        f"/api/v1/hosts/{host_id}",
    )


def violations(outcome: Outcome) -> dict[str, str]:
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.message)
    bad_request = outcome.detail(error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad_request.field_violations}


def all_changes(protocol: str, roz: Roz, host_id: str, key: str) -> list[pb.HostStatusChange]:
    changes: list[pb.HostStatusChange] = []
    token = ""
    while True:
        page = ok(call(protocol, roz, history(host_id, page_size=2, page_token=token), key))
        changes.extend(page.status_changes)  # type: ignore[attr-defined]
        token = page.next_page_token  # type: ignore[attr-defined]
        if not token:
            return changes


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lifecycle_with_status_history(roz: Roz, protocol: str) -> None:
    tenant = roz.new_tenant("hosts")
    made = ok(call("rest", roz, create_key("robot", ["hosts:write", "environments:read"]), tenant))
    robot_key, robot_key_id = made.secret, made.api_key.id  # type: ignore[attr-defined]
    cell = ok(call("rest", roz, environments.create(unique("cell")), tenant))

    created = ok(
        call(
            protocol,
            roz,
            create(
                unique("arm"),
                environment_id=cell.id,
                capabilities=["arm", "camera:rgb"],
                labels={"site": "berlin"},
            ),
            tenant,
        )
    )
    assert created.kind == pb.Host.KIND_EDGE  # unspecified is edge
    assert created.status == pb.Host.STATUS_OFFLINE
    assert not created.HasField("last_seen_time")
    assert (list(created.capabilities), dict(created.labels)) == (
        ["arm", "camera:rgb"],
        {"site": "berlin"},
    )
    assert ok(call(protocol, roz, get(created.id), tenant)) == created
    assert list(ok(call(protocol, roz, environments.get(cell.id), tenant)).host_ids) == [created.id]

    online = ok(
        call(protocol, roz, set_status(created.id, pb.Host.STATUS_ONLINE, "booted"), robot_key)
    )
    assert online.status == pb.Host.STATUS_ONLINE
    assert online.last_seen_time.ToDatetime() >= created.create_time.ToDatetime()
    down = ok(call(protocol, roz, set_status(created.id, pb.Host.STATUS_MAINTENANCE, "fw"), tenant))
    assert down.last_seen_time == online.last_seen_time

    changes = all_changes(protocol, roz, created.id, tenant)
    assert [(c.from_status, c.to_status, c.reason) for c in changes] == [
        (pb.Host.STATUS_ONLINE, pb.Host.STATUS_MAINTENANCE, "fw"),
        (pb.Host.STATUS_OFFLINE, pb.Host.STATUS_ONLINE, "booted"),
        (pb.Host.STATUS_UNSPECIFIED, pb.Host.STATUS_OFFLINE, "registered"),
    ]
    # Who: the robot's own key for its report, the admin key for the rest.
    assert changes[1].changed_by_key_id == robot_key_id
    assert changes[0].changed_by_key_id == changes[2].changed_by_key_id != robot_key_id
    assert changes[1].create_time == online.update_time

    moved = ok(call(protocol, roz, update(created.id, ["environment_id"]), tenant))
    assert moved.environment_id == ""
    assert moved.status == pb.Host.STATUS_MAINTENANCE
    assert list(ok(call(protocol, roz, environments.get(cell.id), tenant)).host_ids) == []

    assert call(protocol, roz, delete(created.id), tenant).code == grpc.StatusCode.OK
    assert call(protocol, roz, get(created.id), tenant).code == grpc.StatusCode.NOT_FOUND
    assert call(protocol, roz, history(created.id), tenant).code == grpc.StatusCode.NOT_FOUND


def test_rest_statuses_and_wire_names(roz: Roz) -> None:
    tenant = roz.new_tenant("rest-hosts")
    with roz.rest(tenant) as client:
        environment = client.post("/api/v1/environments", json={"name": unique("cell")}).json()
        name = unique("rover")
        created = client.post(
            "/api/v1/hosts",
            json={"name": name, "kind": "cloud", "environment_id": environment["id"]},
        )
        host = created.json()
        duplicate = client.post("/api/v1/hosts", json={"name": name})
        invalid = client.post("/api/v1/hosts", json={"name": "", "capabilities": ["no spaces"]})
        changed = client.put(
            f"/api/v1/hosts/{host['id']}/status", json={"status": "online", "reason": "boot"}
        )
        filtered = client.get("/api/v1/hosts", params={"status": "online"})
        missing = client.get(f"/api/v1/hosts/{uuid.uuid4()}")
        changes = client.get(f"/api/v1/hosts/{host['id']}/status-changes")
        in_use = client.delete(f"/api/v1/environments/{environment['id']}")
        deleted = client.delete(f"/api/v1/hosts/{host['id']}")
        freed = client.delete(f"/api/v1/environments/{environment['id']}")
    assert created.status_code == 201
    assert (host["kind"], host["status"], host["environment_id"]) == (
        "KIND_CLOUD",
        "STATUS_OFFLINE",
        environment["id"],
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert invalid.status_code == 400
    assert {v["field"] for v in invalid.json()["details"][0]["field_violations"]} == {
        "host.name",
        "host.capabilities[0]",
    }
    assert changed.status_code == 200
    assert (changed.json()["status"], "last_seen_time" in changed.json()) == ("STATUS_ONLINE", True)
    assert [h["id"] for h in filtered.json()["hosts"]] == [host["id"]]
    assert missing.status_code == 404
    assert [c["to_status"] for c in changes.json()["status_changes"]] == [
        "STATUS_ONLINE",
        "STATUS_OFFLINE",
    ]
    assert in_use.status_code == 400
    (info,) = [d for d in in_use.json()["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["reason"] == "ENVIRONMENT_IN_USE"
    assert info["metadata"] == {"environment_id": environment["id"], "host_id": host["id"]}
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert freed.status_code == 204


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_duplicate_name_is_already_exists(roz: Roz, protocol: str) -> None:
    name = unique("twin")
    ok(call(protocol, roz, create(name), roz.admin_key))
    again = call(protocol, roz, create(name), roz.admin_key)
    assert again.code == grpc.StatusCode.ALREADY_EXISTS
    assert f"{name!r}" in again.message
    ok(call(protocol, roz, create(name), roz.new_tenant()))  # unique per tenant only


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invalid_fields_are_reported_together(roz: Roz, protocol: str) -> None:
    outcome = call(
        protocol,
        roz,
        create(
            "",
            environment_id="cell-1",
            capabilities=["ok", "not ok", "ok"],
            labels={"bad key": "v"},
        ),
        roz.admin_key,
    )
    assert set(violations(outcome)) == {
        "host.name",
        "host.environment_id",
        "host.capabilities[1]",
        "host.capabilities[2]",
        "host.labels",
    }
    if protocol == "rest":
        assert outcome.http_status == 400


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_environment_must_exist_in_the_tenant(roz: Roz, protocol: str) -> None:
    other = roz.new_tenant("other")
    theirs = ok(call("rest", roz, environments.create(unique("theirs")), other))
    missing = str(uuid.uuid4())
    for environment_id in (theirs.id, missing):
        outcome = call(
            protocol, roz, create(unique("h"), environment_id=environment_id), roz.admin_key
        )
        assert violations(outcome) == {
            "host.environment_id": f"environment {environment_id} not found"
        }
    assert list(ok(call("rest", roz, environments.get(theirs.id), other)).host_ids) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_status_change_needs_a_status(roz: Roz, protocol: str) -> None:
    host = ok(call("rest", roz, create(unique("h")), roz.admin_key))
    outcome = call(protocol, roz, set_status(host.id, pb.Host.STATUS_UNSPECIFIED), roz.admin_key)
    assert set(violations(outcome)) == {"status"}
    too_long = call(
        protocol, roz, set_status(host.id, pb.Host.STATUS_ONLINE, "r" * 1025), roz.admin_key
    )
    assert set(violations(too_long)) == {"reason"}
    assert ok(call("rest", roz, get(host.id), roz.admin_key)).status == pb.Host.STATUS_OFFLINE


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lists_filter_and_page(roz: Roz, protocol: str) -> None:
    tenant = roz.new_tenant("host-pages")
    cell = ok(call("rest", roz, environments.create(unique("cell")), tenant))
    in_cell = [
        ok(call("grpc", roz, create(unique("c"), environment_id=cell.id), tenant)) for _ in range(4)
    ]
    loose = [ok(call("grpc", roz, create(unique("l")), tenant)) for _ in range(3)]
    for host in (in_cell[1], loose[0]):
        ok(call("grpc", roz, set_status(host.id, pb.Host.STATUS_DEGRADED), tenant))

    def walk(**filters: Any) -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page = ok(
                call(protocol, roz, list_hosts(page_size=2, page_token=token, **filters), tenant)
            )
            seen.extend(h.id for h in page.hosts)  # type: ignore[attr-defined]
            token = page.next_page_token  # type: ignore[attr-defined]
            if not token:
                return seen

    assert walk() == [h.id for h in reversed(in_cell + loose)]
    assert walk(environment_id=cell.id) == [h.id for h in reversed(in_cell)]
    assert walk(status=pb.Host.STATUS_DEGRADED) == [loose[0].id, in_cell[1].id]
    assert walk(status=pb.Host.STATUS_DEGRADED, environment_id=cell.id) == [in_cell[1].id]
    bad = call(protocol, roz, list_hosts(environment_id="not-an-id"), tenant)
    assert set(violations(bad)) == {"environment_id"}
    garbage = call(protocol, roz, list_hosts(page_token="garbage"), tenant)
    assert set(violations(garbage)) == {"page_token"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_environment_with_hosts_cannot_be_deleted_until_they_move(
    roz: Roz, protocol: str
) -> None:
    tenant = roz.new_tenant("in-use")
    cell = ok(call("rest", roz, environments.create(unique("cell")), tenant))
    host = ok(call("rest", roz, create(unique("h"), environment_id=cell.id), tenant))
    refused = call(protocol, roz, environments.delete(cell.id), tenant)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    info = refused.detail(error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == (
        "ENVIRONMENT_IN_USE",
        {"environment_id": cell.id, "host_id": host.id},
    )
    assert ok(call(protocol, roz, environments.get(cell.id), tenant)).host_ids == [host.id]
    ok(call(protocol, roz, update(host.id, ["environment_id"], environment_id=""), tenant))
    assert call(protocol, roz, environments.delete(cell.id), tenant).code == grpc.StatusCode.OK


def test_scopes_are_enforced_per_method(roz: Roz) -> None:
    tenant = roz.new_tenant("host-scopes")
    host = ok(call("rest", roz, create(unique("h")), tenant))
    reader = ok(call("rest", roz, create_key("reader", ["hosts:read"]), tenant)).secret  # type: ignore[attr-defined]
    for protocol in ("rest", "grpc"):
        for rpc in (get(host.id), list_hosts(), history(host.id)):
            ok(call(protocol, roz, rpc, reader))
        for rpc in (
            create(unique("h")),
            set_status(host.id, pb.Host.STATUS_ONLINE),
            update(host.id, name="renamed"),
            delete(host.id),
        ):
            outcome = call(protocol, roz, rpc, reader)
            assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, rpc.path
            info = outcome.detail(error_details_pb2.ErrorInfo)
            assert info.metadata["required_scope"] == "hosts:write"
    assert ok(call("rest", roz, get(host.id), tenant)) == host


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_tenancy_matrix(roz: Roz, protocol: str) -> None:
    """Tenant B, holding tenant A's ids, reaches nothing of A's and changes nothing."""
    owner = roz.new_tenant("owner")
    intruder = roz.new_tenant("intruder")
    cell = ok(call("rest", roz, environments.create(unique("cell")), owner))
    host = ok(
        call("rest", roz, create(unique("h"), environment_id=cell.id, labels={"k": "v"}), owner)
    )
    ok(call("rest", roz, set_status(host.id, pb.Host.STATUS_ONLINE, "up"), owner))
    before = ok(call("rest", roz, get(host.id), owner))
    changes_before = all_changes("rest", roz, host.id, owner)

    by_id = {
        "GetHost": get(host.id),
        "UpdateHostStatus": set_status(host.id, pb.Host.STATUS_MAINTENANCE, "taken"),
        "ListHostStatusChanges": history(host.id),
        "UpdateHost": update(host.id, name="taken-over"),
        "UpdateHost with a mask": update(host.id, ["labels"], labels={"owned": "yes"}),
        "DeleteHost": delete(host.id),
    }
    for label, rpc in by_id.items():
        outcome = call(protocol, roz, rpc, intruder)
        assert outcome.code == grpc.StatusCode.NOT_FOUND, label
        assert outcome.detail(error_details_pb2.ResourceInfo).resource_type == "host", label
        if protocol == "rest":
            assert outcome.http_status == 404, label
    # The methods that take no host id: A's rows are not among B's, and A's environment is
    # not B's to register hosts in (a reference in a body, so INVALID_ARGUMENT, like a typo).
    listed = ok(call(protocol, roz, list_hosts(page_size=1000), intruder))
    assert host.id not in {h.id for h in listed.hosts}  # type: ignore[attr-defined]
    filtered = ok(call(protocol, roz, list_hosts(environment_id=cell.id), intruder))
    assert list(filtered.hosts) == []  # type: ignore[attr-defined]
    smuggled = call(protocol, roz, create(unique("spy"), environment_id=cell.id), intruder)
    assert set(violations(smuggled)) == {"host.environment_id"}

    assert ok(call("rest", roz, get(host.id), owner)) == before
    assert all_changes("rest", roz, host.id, owner) == changes_before
    assert list(ok(call("rest", roz, environments.get(cell.id), owner)).host_ids) == [host.id]


def test_a_host_with_commands_cannot_be_deleted(roz: Roz) -> None:
    tenant = roz.new_tenant("host-in-use")
    host = ok(call("rest", roz, create(unique("busy")), tenant))
    with roz.rest(tenant) as client:
        command = client.post("/api/v1/commands", json={"host_id": host.id, "type": "home"})
        assert command.status_code == 201, command.text
        refused = client.delete(f"/api/v1/hosts/{host.id}")
    assert refused.status_code == 400
    (info,) = [d for d in refused.json()["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["reason"] == "HOST_IN_USE"
    assert info["metadata"] == {"host_id": host.id, "referenced_by": "commands"}
    assert ok(call("grpc", roz, get(host.id), tenant)) == host
