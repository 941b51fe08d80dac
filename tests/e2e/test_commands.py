"""Commands end to end: the safety check, the state machine, history, approval, delete,
idempotency, the timeout sweep and tenancy, over REST, native gRPC and gRPC-web.

Environments, safety policies and hosts are set up over REST, as an operator would.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, json_format
from google.rpc import error_details_pb2
from roz.v1 import commands_pb2 as pb

from server.storage.robot_deliveries import RobotDeliveryRepository
from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call

SERVICE = "/roz.v1.CommandService/"
S = pb.Command
INSIDE = {"x": 0.5, "y": 0.5, "z": 0.5}
OUTSIDE = {"x": 2.0, "y": 0.5, "z": 0.5}


# -- the RPCs ---------------------------------------------------------------------------------


def create(validate_only: bool = False, **fields: Any) -> Rpc:
    command = json_format.ParseDict(fields, pb.Command())
    return Rpc(
        SERVICE + "CreateCommand",
        pb.CreateCommandRequest(command=command, validate_only=validate_only),
        pb.Command,
        "POST",
        "/api/v1/commands",
        body=fields,
        query={"validate_only": "true"} if validate_only else None,
    )


def get(command_id: str) -> Rpc:
    return Rpc(
        SERVICE + "GetCommand",
        pb.GetCommandRequest(id=command_id),
        pb.Command,
        "GET",
        f"/api/v1/commands/{command_id}",
    )


def list_commands(host_id: str = "", state: int = 0, page_size: int = 0, token: str = "") -> Rpc:
    query: dict[str, Any] = {}
    if host_id:
        query["host_id"] = host_id
    if state:
        query["state"] = S.State.Name(state)  # type: ignore[arg-type]
    if page_size:
        query["page_size"] = page_size
    if token:
        query["page_token"] = token
    return Rpc(
        SERVICE + "ListCommands",
        pb.ListCommandsRequest(
            host_id=host_id,
            state=state,  # type: ignore[arg-type]
            page_size=page_size,
            page_token=token,
        ),
        pb.ListCommandsResponse,
        "GET",
        "/api/v1/commands",
        query=query,
    )


def transition(command_id: str, state: int, reason: str = "") -> Rpc:
    return Rpc(
        SERVICE + "TransitionCommand",
        pb.TransitionCommandRequest(id=command_id, state=state, reason=reason),  # type: ignore[arg-type]
        pb.Command,
        "POST",
        f"/api/v1/commands/{command_id}/transition",
        body={"state": S.State.Name(state), "reason": reason},  # type: ignore[arg-type]
    )


def delete(command_id: str) -> Rpc:
    return Rpc(
        SERVICE + "DeleteCommand",
        pb.DeleteCommandRequest(id=command_id),
        empty_pb2.Empty,
        "DELETE",
        f"/api/v1/commands/{command_id}",
    )


def ok(outcome: Outcome) -> Any:
    assert outcome.code == grpc.StatusCode.OK, (outcome.code, outcome.message, outcome.details)
    assert outcome.response is not None
    return outcome.response


def error_infos(outcome: Outcome) -> list[error_details_pb2.ErrorInfo]:
    return [d for d in outcome.details if isinstance(d, error_details_pb2.ErrorInfo)]


def field_violations(outcome: Outcome) -> list[str]:
    return [v.field for v in outcome.detail(error_details_pb2.BadRequest).field_violations]


# -- the operator's setup, over REST ----------------------------------------------------------


def rest(roz: Roz, key: str, method: str, path: str, **kwargs: Any) -> Any:
    with roz.rest(key) as client:
        response = client.request(method, path, **kwargs)
    assert response.status_code < 300, (method, path, response.status_code, response.text)
    return response.json() if response.content else None


def key_id(roz: Roz, key: str) -> str:
    """The id of the tenant's first key: the admin key roz.new_tenant() made."""
    keys = rest(roz, key, "GET", "/api/v1/auth-keys")["api_keys"]
    (admin,) = keys
    return str(admin["id"])


def new_key(roz: Roz, admin: str, *scopes: str) -> tuple[str, str]:
    made = rest(
        roz,
        admin,
        "POST",
        "/api/v1/auth-keys",
        json={"name": f"k-{uuid.uuid4().hex[:6]}", "scopes": list(scopes)},
    )
    return made["secret"], made["api_key"]["id"]


class Cell:
    """An environment bound by one safety policy, with one host in it."""

    def __init__(self, roz: Roz, key: str) -> None:
        label = uuid.uuid4().hex[:8]
        policy = rest(
            roz,
            key,
            "POST",
            "/api/v1/safety-policies",
            json={
                "name": f"cell-limits-{label}",
                "limits": {"max_linear_velocity": 1.0, "max_force": 20},
                "workspace": {
                    "boxes": [{"min": {"x": 0, "y": 0, "z": 0}, "max": {"x": 1, "y": 1, "z": 1}}]
                },
                "denied_command_types": ["self_destruct"],
                "approval_command_types": ["home"],
            },
        )
        environment = rest(roz, key, "POST", "/api/v1/environments", json={"name": f"cell-{label}"})
        rest(
            roz,
            key,
            "PUT",
            f"/api/v1/environments/{environment['id']}",
            params={"update_mask": "safety_policy_ids"},
            json={"safety_policy_ids": [policy["id"]]},
        )
        host = rest(
            roz,
            key,
            "POST",
            "/api/v1/hosts",
            json={"name": f"arm-{label}", "environment_id": environment["id"]},
        )
        self.policy_id: str = policy["id"]
        self.policy_version: int = policy["version"]
        self.environment_id: str = environment["id"]
        self.host_id: str = host["id"]


# -- the scenario -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scenario(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("commands")
    me = key_id(roz, key)
    cell = Cell(roz, key)

    # A violation: one ErrorInfo per violated constraint, and nothing stored.
    refused = call(
        protocol,
        roz,
        create(
            host_id=cell.host_id,
            type="move_to",
            params={"velocity": 2.5, "force": 30, "target": OUTSIDE},
        ),
        key,
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, refused.message
    infos = error_infos(refused)
    assert [(i.reason, i.metadata["constraint"]) for i in infos] == [
        ("SAFETY_LIMIT_EXCEEDED", "max_linear_velocity"),
        ("SAFETY_LIMIT_EXCEEDED", "max_force"),
        ("OUTSIDE_WORKSPACE", "workspace"),
    ]
    assert [(i.metadata["limit"], i.metadata["value"]) for i in infos[:2]] == [
        ("1", "2.5"),
        ("20", "30"),
    ]
    assert {i.metadata["policy_id"] for i in infos} == {cell.policy_id}
    assert {i.metadata["policy_version"] for i in infos} == {str(cell.policy_version)}
    assert "3 safety constraints" in refused.message
    if protocol == "rest":
        assert refused.http_status == 400
    assert list(ok(call(protocol, roz, list_commands(), key)).commands) == []

    # Within limits: stored PENDING with the policy version it was checked against.
    created = ok(
        call(
            protocol,
            roz,
            create(
                host_id=cell.host_id,
                type="move_to",
                params={"velocity": 1.0, "force": 20, "target": INSIDE, "tool": "gripper"},
                timeout="30s",
            ),
            key,
        )
    )
    assert created.state == S.STATE_PENDING
    assert created.host_id == cell.host_id
    assert [(p.policy_id, p.version) for p in created.applied_policies] == [
        (cell.policy_id, cell.policy_version)
    ]
    assert created.params["tool"] == "gripper"
    assert created.timeout.seconds == 30
    assert [(t.from_state, t.to_state, t.actor) for t in created.transitions] == [
        (S.STATE_UNSPECIFIED, S.STATE_PENDING, me)
    ]

    # Transitions, each recorded with who made it and why.
    ok(call(protocol, roz, transition(created.id, S.STATE_RUNNING), key))
    done = ok(call(protocol, roz, transition(created.id, S.STATE_COMPLETED, "placed"), key))
    assert done.state == S.STATE_COMPLETED
    history = ok(call(protocol, roz, get(created.id), key)).transitions
    assert [(t.from_state, t.to_state) for t in history] == [
        (S.STATE_UNSPECIFIED, S.STATE_PENDING),
        (S.STATE_PENDING, S.STATE_RUNNING),
        (S.STATE_RUNNING, S.STATE_COMPLETED),
    ]
    assert history[-1].reason == "placed"
    assert {t.actor for t in history} == {me}
    assert all(t.transition_time.seconds > 0 for t in history)

    # An illegal transition names both states.
    illegal = call(protocol, roz, transition(created.id, S.STATE_RUNNING), key)
    assert illegal.code == grpc.StatusCode.FAILED_PRECONDITION
    (info,) = error_infos(illegal)
    assert info.reason == "INVALID_TRANSITION"
    assert dict(info.metadata) == {"from": "COMPLETED", "to": "RUNNING"}
    assert ok(call(protocol, roz, get(created.id), key)).state == S.STATE_COMPLETED

    # The dry run: the same answer as a create, with nothing stored.
    dry = ok(
        call(
            protocol,
            roz,
            create(validate_only=True, host_id=cell.host_id, type="move_to", params={}),
            key,
        )
    )
    assert (dry.id, dry.state, len(dry.transitions)) == ("", S.STATE_PENDING, 0)
    assert [p.policy_id for p in dry.applied_policies] == [cell.policy_id]
    dry_approval = ok(
        call(protocol, roz, create(validate_only=True, host_id=cell.host_id, type="home"), key)
    )
    assert dry_approval.state == S.STATE_AWAITING_APPROVAL
    dry_refused = call(
        protocol,
        roz,
        create(validate_only=True, host_id=cell.host_id, type="self_destruct"),
        key,
    )
    assert dry_refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [i.reason for i in error_infos(dry_refused)] == ["COMMAND_TYPE_DENIED"]
    assert [c.id for c in ok(call(protocol, roz, list_commands(), key)).commands] == [created.id]

    # Approval: the command waits; a person with commands:write approves it, and is recorded.
    approver, approver_id = new_key(roz, key, "commands:write")
    waiting = ok(call(protocol, roz, create(host_id=cell.host_id, type="home"), key))
    assert waiting.state == S.STATE_AWAITING_APPROVAL
    early = call(protocol, roz, transition(waiting.id, S.STATE_RUNNING), key)
    assert early.code == grpc.StatusCode.FAILED_PRECONDITION
    approved = ok(call(protocol, roz, transition(waiting.id, S.STATE_PENDING, "ok"), approver))
    assert approved.state == S.STATE_PENDING
    last = approved.transitions[-1]
    assert (last.from_state, last.to_state, last.actor, last.reason) == (
        S.STATE_AWAITING_APPROVAL,
        S.STATE_PENDING,
        approver_id,
        "ok",
    )
    denied = ok(call(protocol, roz, create(host_id=cell.host_id, type="home"), key))
    rejected = ok(call(protocol, roz, transition(denied.id, S.STATE_REJECTED, "no"), approver))
    assert rejected.state == S.STATE_REJECTED
    assert rejected.transitions[-1].actor == approver_id

    # Delete: PENDING is cancelled (and recorded), terminal is removed, RUNNING is refused.
    assert ok(call(protocol, roz, delete(approved.id), key)) == empty_pb2.Empty()
    cancelled = ok(call(protocol, roz, get(approved.id), key))
    assert cancelled.state == S.STATE_CANCELLED
    assert cancelled.transitions[-1].to_state == S.STATE_CANCELLED
    ok(call(protocol, roz, delete(approved.id), key))
    assert call(protocol, roz, get(approved.id), key).code == grpc.StatusCode.NOT_FOUND
    running = ok(call(protocol, roz, create(host_id=cell.host_id, type="grip"), key))
    ok(call(protocol, roz, transition(running.id, S.STATE_RUNNING), key))
    kept = call(protocol, roz, delete(running.id), key)
    assert kept.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [i.reason for i in error_infos(kept)] == ["COMMAND_RUNNING"]
    assert ok(call(protocol, roz, get(running.id), key)).state == S.STATE_RUNNING

    # Idempotency: the same key and body give the original; another body is ALREADY_EXISTS.
    body = {
        "host_id": cell.host_id,
        "type": "grip",
        "params": {"force": 5},
        "idempotency_key": "o-1",
    }
    first = ok(call(protocol, roz, create(**body), key))
    again = ok(call(protocol, roz, create(**body), key))
    assert again.id == first.id
    assert again == first
    conflict = call(protocol, roz, create(**{**body, "params": {"force": 6}}), key)
    assert conflict.code == grpc.StatusCode.ALREADY_EXISTS
    assert "o-1" in conflict.message
    if protocol == "rest":
        assert conflict.http_status == 409
    listed = ok(call(protocol, roz, list_commands(host_id=cell.host_id, page_size=100), key))
    assert [c.id for c in listed.commands].count(first.id) == 1

    # Filters.
    only_running = ok(call(protocol, roz, list_commands(state=S.STATE_RUNNING), key))
    assert [c.id for c in only_running.commands] == [running.id]


def test_the_idempotency_key_header_over_rest(roz: Roz) -> None:
    key = roz.new_tenant("idem")
    cell = Cell(roz, key)
    body = {"host_id": cell.host_id, "type": "grip", "params": {"force": 1}}
    with roz.rest(key) as client:
        first = client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "h-1"})
        again = client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "h-1"})
        other = client.post(
            "/api/v1/commands",
            json={**body, "params": {"force": 2}},
            headers={"Idempotency-Key": "h-1"},
        )
        # The header and the field name one key: the field repeats the original.
        field = client.post("/api/v1/commands", json={**body, "idempotency_key": "h-1"})
        mismatch = client.post(
            "/api/v1/commands",
            json={**body, "idempotency_key": "h-2"},
            headers={"Idempotency-Key": "h-1"},
        )
        fresh = client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "h-3"})
        listed = client.get("/api/v1/commands").json()["commands"]
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert first.json()["idempotency_key"] == "h-1"
    assert other.status_code == 409
    assert other.json()["code"] == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert field.json()["id"] == first.json()["id"]
    assert mismatch.status_code == 400
    assert fresh.json()["id"] != first.json()["id"]
    assert sorted(c["id"] for c in listed) == sorted([first.json()["id"], fresh.json()["id"]])


def test_the_idempotency_key_metadata_over_grpc(roz: Roz) -> None:
    key = roz.new_tenant("idem-grpc")
    cell = Cell(roz, key)
    request = create(host_id=cell.host_id, type="grip").request
    metadata = [("authorization", f"Bearer {key}"), ("idempotency-key", "g-1")]
    with roz.channel() as channel:
        method = channel.unary_unary(
            SERVICE + "CreateCommand",
            request_serializer=pb.CreateCommandRequest.SerializeToString,
            response_deserializer=pb.Command.FromString,
        )
        first = method(request, metadata=metadata, timeout=30)
        again = method(request, metadata=metadata, timeout=30)
    assert first.id == again.id
    assert first.idempotency_key == "g-1"


def test_rest_statuses(roz: Roz) -> None:
    key = roz.new_tenant("codes")
    cell = Cell(roz, key)
    with roz.rest(key) as client:
        created = client.post("/api/v1/commands", json={"host_id": cell.host_id, "type": "grip"})
        dry = client.post(
            "/api/v1/commands",
            params={"validate_only": "true"},
            json={"host_id": cell.host_id, "type": "grip"},
        )
        missing_host = client.post(
            "/api/v1/commands", json={"host_id": str(uuid.uuid4()), "type": "grip"}
        )
        bad_param = client.post(
            "/api/v1/commands",
            json={"host_id": cell.host_id, "type": "move_to", "params": {"velocity": "fast"}},
        )
        bad_target = client.post(
            "/api/v1/commands",
            json={
                "host_id": cell.host_id,
                "type": "move_to",
                "params": {"target": {"x": 0, "y": 0}},
            },
        )
        missing = client.get(f"/api/v1/commands/{uuid.uuid4()}")
        # Lenient enums: "running" for STATE_RUNNING, in a body and in a query.
        started = client.post(
            f"/api/v1/commands/{created.json()['id']}/transition", json={"state": "running"}
        )
        listed = client.get("/api/v1/commands", params={"state": "running"})
        unknown_state = client.post(
            f"/api/v1/commands/{created.json()['id']}/transition", json={"state": "sleeping"}
        )
        no_state = client.post(f"/api/v1/commands/{created.json()['id']}/transition", json={})
        by_client = client.post(
            f"/api/v1/commands/{created.json()['id']}/transition", json={"state": "timed_out"}
        )
        refused = client.delete(f"/api/v1/commands/{created.json()['id']}")
        client.post(f"/api/v1/commands/{created.json()['id']}/transition", json={"state": "failed"})
        removed = client.delete(f"/api/v1/commands/{created.json()['id']}")
        gone = client.delete(f"/api/v1/commands/{created.json()['id']}")
        all_left = client.get("/api/v1/commands").json()["commands"]
    assert created.status_code == 201
    assert created.json()["state"] == "STATE_PENDING"
    assert created.json()["applied_policies"] == [
        {"policy_id": cell.policy_id, "version": cell.policy_version}
    ]
    assert (dry.status_code, dry.json()["id"]) == (201, "")
    assert missing_host.status_code == 400
    assert [v["field"] for v in missing_host.json()["details"][0]["field_violations"]] == [
        "command.host_id"
    ]
    assert bad_param.status_code == 400
    assert bad_param.json()["details"][0]["field_violations"][0]["field"] == (
        "command.params.velocity"
    )
    assert bad_target.json()["details"][0]["field_violations"][0]["field"] == (
        "command.params.target.z"
    )
    assert missing.status_code == 404
    assert started.status_code == 200
    assert started.json()["state"] == "STATE_RUNNING"
    assert [c["id"] for c in listed.json()["commands"]] == [created.json()["id"]]
    assert unknown_state.status_code == 400
    assert no_state.status_code == 400
    assert no_state.json()["details"][0]["field_violations"][0]["field"] == "state"
    assert by_client.status_code == 400
    assert refused.status_code == 400
    assert (removed.status_code, removed.content) == (204, b"")
    assert gone.status_code == 404
    assert all_left == []


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_racing_transitions_never_both_win(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("race")
    cell = Cell(roz, key)
    for _ in range(3):
        command = ok(call(protocol, roz, create(host_id=cell.host_id, type="grip"), key))
        targets = [S.STATE_RUNNING, S.STATE_CANCELLED] * 5
        rpcs = [transition(command.id, target) for target in targets]
        with ThreadPoolExecutor(max_workers=len(rpcs)) as pool:
            outcomes = list(pool.map(lambda rpc: call(protocol, roz, rpc, key), rpcs))
        final = ok(call(protocol, roz, get(command.id), key))
        moves = [(t.from_state, t.to_state) for t in final.transitions[1:]]
        assert moves in (
            [(S.STATE_PENDING, S.STATE_RUNNING)],
            [(S.STATE_PENDING, S.STATE_CANCELLED)],
            [(S.STATE_PENDING, S.STATE_RUNNING), (S.STATE_RUNNING, S.STATE_CANCELLED)],
        )
        winners = [o for o in outcomes if o.code == grpc.StatusCode.OK]
        assert len(winners) == len(moves)
        losers = [o for o in outcomes if o.code != grpc.StatusCode.OK]
        assert {o.code for o in losers} <= {grpc.StatusCode.FAILED_PRECONDITION}
        assert all(error_infos(o)[0].reason == "INVALID_TRANSITION" for o in losers)


def test_the_sweep_times_out_a_running_command(roz: Roz) -> None:
    key = roz.new_tenant("sweep")
    cell = Cell(roz, key)
    command = ok(call("rest", roz, create(host_id=cell.host_id, type="grip", timeout="1s"), key))
    time.sleep(1.5)  # still PENDING: the clock starts when it runs
    ok(call("rest", roz, transition(command.id, S.STATE_RUNNING), key))
    assert ok(call("rest", roz, get(command.id), key)).state == S.STATE_RUNNING
    deadline = time.monotonic() + 20  # the timeout, plus the sweep interval
    while time.monotonic() < deadline:
        found = ok(call("grpc", roz, get(command.id), key))
        if found.state != S.STATE_RUNNING:
            break
        time.sleep(0.2)
    assert found.state == S.STATE_TIMED_OUT
    last = found.transitions[-1]
    assert (last.from_state, last.to_state, last.actor) == (
        S.STATE_RUNNING,
        S.STATE_TIMED_OUT,
        "",
    )
    late = call("rest", roz, transition(command.id, S.STATE_COMPLETED), key)
    assert late.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_another_tenants_commands_are_not_found_and_untouched(roz: Roz, protocol: str) -> None:
    owner = roz.new_tenant("owner")
    intruder = roz.new_tenant("intruder")
    cell = Cell(roz, owner)
    mine = ok(
        call(
            "rest",
            roz,
            create(host_id=cell.host_id, type="grip", idempotency_key="mine"),
            owner,
        )
    )
    running = ok(call("rest", roz, create(host_id=cell.host_id, type="grip"), owner))
    ok(call("rest", roz, transition(running.id, S.STATE_RUNNING), owner))
    before = {
        c.id: c for c in (ok(call("rest", roz, get(i), owner)) for i in (mine.id, running.id))
    }

    for command_id in (mine.id, running.id):
        for rpc in (
            get(command_id),
            transition(command_id, S.STATE_CANCELLED),
            transition(command_id, S.STATE_COMPLETED),
            delete(command_id),
        ):
            outcome = call(protocol, roz, rpc, intruder)
            assert outcome.code == grpc.StatusCode.NOT_FOUND, (rpc.path, outcome.message)
            assert outcome.detail(error_details_pb2.ResourceInfo).resource_type == "command"
    # Their host is no host of ours: the same answer as an id that names nothing.
    for host_id in (cell.host_id, str(uuid.uuid4())):
        refused = call(protocol, roz, create(host_id=host_id, type="grip"), intruder)
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(refused) == ["command.host_id"]
        assert cell.host_id not in refused.message
    dry = call(protocol, roz, create(validate_only=True, host_id=cell.host_id, type="g"), intruder)
    assert dry.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        list(ok(call(protocol, roz, list_commands(host_id=cell.host_id), intruder)).commands) == []
    )
    assert list(ok(call(protocol, roz, list_commands(), intruder)).commands) == []
    # Their idempotency key is theirs: ours makes a command of our own (on our own host).
    our_host = Cell(roz, intruder).host_id
    ours = ok(
        call(protocol, roz, create(host_id=our_host, type="grip", idempotency_key="mine"), intruder)
    )
    assert ours.id != mine.id

    after = {c.id: c for c in (ok(call("rest", roz, get(i), owner)) for i in (mine.id, running.id))}
    assert after == before
    listed = ok(call("rest", roz, list_commands(), owner)).commands
    assert sorted(c.id for c in listed) == sorted([mine.id, running.id])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pages_and_bad_filters(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("pages")
    cell = Cell(roz, key)
    made = [
        ok(call("grpc", roz, create(host_id=cell.host_id, type="grip"), key)).id for _ in range(5)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = ok(call(protocol, roz, list_commands(page_size=2, token=token), key))
        seen.extend(c.id for c in page.commands)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    bad_token = call(protocol, roz, list_commands(token="garbage"), key)
    assert bad_token.code == grpc.StatusCode.INVALID_ARGUMENT
    bad_host = call(protocol, roz, list_commands(host_id="not-a-uuid"), key)
    assert bad_host.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(bad_host) == ["host_id"]


def test_scopes_are_enforced_per_method(roz: Roz) -> None:
    admin = roz.new_tenant("scopes")
    cell = Cell(roz, admin)
    reader, _ = new_key(roz, admin, "commands:read")
    command = ok(call("rest", roz, create(host_id=cell.host_id, type="grip"), admin))
    assert ok(call("grpc", roz, get(command.id), reader)).id == command.id
    for rpc in (
        create(host_id=cell.host_id, type="grip"),
        transition(command.id, S.STATE_RUNNING),
        delete(command.id),
    ):
        denied = call("grpc", roz, rpc, reader)
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED, rpc.path
        assert error_infos(denied)[0].metadata["required_scope"] == "commands:write"
    assert ok(call("rest", roz, get(command.id), admin)).state == S.STATE_PENDING


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_finite_params_are_invalid_not_internal(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("nan")
    cell = Cell(roz, key)
    for value in (float("nan"), float("inf")):
        rpc = create(host_id=cell.host_id, type="move_to")
        rpc.request.command.params["velocity"] = value  # type: ignore[attr-defined]
        # JSON has no NaN: over REST the nearest a client can send is the string.
        rpc = Rpc(
            rpc.path,
            rpc.request,
            rpc.response_class,
            rpc.http_method,
            rpc.http_path,
            body={**rpc.body, "params": {"velocity": str(value)}},
        )
        outcome = call(protocol, roz, rpc, key)
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.message
        assert "command.params.velocity" in field_violations(outcome)
    assert list(ok(call(protocol, roz, list_commands(), key)).commands) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_operators_see_when_a_command_was_delivered_and_acknowledged(
    roz: Roz, protocol: str
) -> None:
    """The robot link stamps both times in the delivery log (here through its repository, as
    the link's service will); GetCommand shows them, and nothing before."""
    key = roz.new_tenant("delivered")
    cell = Cell(roz, key)
    command = ok(call(protocol, roz, create(host_id=cell.host_id, type="wave"), key))
    fresh = ok(call(protocol, roz, get(command.id), key))
    assert not fresh.HasField("deliver_time")
    assert not fresh.HasField("acknowledge_time")

    tenant = uuid.UUID(rest(roz, key, "GET", "/api/v1/caller")["tenant_id"])
    deliveries = RobotDeliveryRepository(roz.app.database.pool)
    sent, acked = (
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    )
    roz.listener.call(deliveries.mark_delivered(tenant, cell.host_id, 0, 1, now=sent))
    roz.listener.call(deliveries.acknowledge(tenant, cell.host_id, 1, now=acked))

    seen = ok(call(protocol, roz, get(command.id), key))
    assert seen.deliver_time.ToDatetime(tzinfo=UTC) == sent
    assert seen.acknowledge_time.ToDatetime(tzinfo=UTC) == acked
