"""Tasks end to end: the scenario over REST, native gRPC and gRPC-web, races, the timeout sweep,
REST statuses and spellings, field violations, idempotency, scopes and the tenancy matrix."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from roz.v1 import tasks_pb2 as pb

from server.storage.robot_deliveries import RobotDeliveryRepository
from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Outcome, Rpc, call

SERVICE = "/roz.v1.TaskService/"
S = pb.Task
TERMINAL = {
    S.STATE_SUCCEEDED,
    S.STATE_FAILED,
    S.STATE_CANCELLED,
    S.STATE_TIMED_OUT,
    S.STATE_SAFETY_STOPPED,
}


# -- requests -------------------------------------------------------------------------------


def create(idempotency_key: str = "", **fields: Any) -> Rpc:
    task = pb.Task(**fields)
    return Rpc(
        SERVICE + "CreateTask",
        pb.CreateTaskRequest(task=task, idempotency_key=idempotency_key),
        pb.Task,
        "POST",
        "/api/v1/tasks",
        body=json_format.MessageToDict(task, preserving_proto_field_name=True),
        query={"idempotency_key": idempotency_key} if idempotency_key else None,
    )


def get(task_id: str) -> Rpc:
    return Rpc(
        SERVICE + "GetTask",
        pb.GetTaskRequest(id=task_id),
        pb.Task,
        "GET",
        f"/api/v1/tasks/{task_id}",
    )


def list_page(page_size: int = 0, page_token: str = "", **filters: Any) -> Rpc:
    request = pb.ListTasksRequest(page_size=page_size, page_token=page_token, **filters)
    query = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return Rpc(
        SERVICE + "ListTasks", request, pb.ListTasksResponse, "GET", "/api/v1/tasks", query=query
    )


def transition(task_id: str, state: int, reason: str = "") -> Rpc:
    body: dict[str, Any] = {"state": S.State.Name(state)}  # type: ignore[arg-type]
    if reason:
        body["reason"] = reason
    return Rpc(
        SERVICE + "TransitionTask",
        pb.TransitionTaskRequest(id=task_id, state=state, reason=reason),  # type: ignore[arg-type]
        pb.Task,
        "POST",
        f"/api/v1/tasks/{task_id}/transition",
        body=body,
    )


# -- helpers ---------------------------------------------------------------------------------


def ok(outcome: Outcome) -> Any:
    assert outcome.code == grpc.StatusCode.OK, (outcome.code, outcome.message, outcome.details)
    assert outcome.response is not None
    return outcome.response


def violations(outcome: Outcome) -> list[str]:
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.message)
    return [v.field for v in outcome.detail(error_details_pb2.BadRequest).field_violations]


def environment(roz: Roz, key: str, tools: tuple[str, ...] = ("camera", "gripper")) -> str:
    with roz.rest(key) as client:
        response = client.post(
            "/api/v1/environments",
            json={"name": f"env-{uuid.uuid4().hex[:8]}", "allowed_tools": list(tools)},
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def key_id(roz: Roz, key: str) -> str:
    """The id of the tenant's only key (a fresh tenant's admin key)."""
    with roz.rest(key) as client:
        keys = client.get("/api/v1/auth-keys").json()["api_keys"]
    assert len(keys) == 1
    return str(keys[0]["id"])


def hosts_served(roz: Roz) -> bool:
    return roz.app.registry.lookup("/roz.v1.HostService/CreateHost") is not None


def host(roz: Roz, key: str, environment_id: str) -> str:
    if not hosts_served(roz):
        pytest.skip("HostService is not registered in server/app.py yet")
    with roz.rest(key) as client:
        response = client.post(
            "/api/v1/hosts",
            json={"name": f"arm-{uuid.uuid4().hex[:8]}", "environment_id": environment_id},
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def run(protocol: str, roz: Roz, key: str, task_id: str, *states: int) -> Any:
    task = None
    for state in states:
        task = ok(call(protocol, roz, transition(task_id, state, f"to {S.State.Name(state)}"), key))  # type: ignore[arg-type]
    return task


def grpc_call(
    roz: Roz, rpc: Rpc, key: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, Message | None, str]:
    """Native gRPC with extra metadata (protocols.call sends only the key)."""
    with roz.channel() as channel:
        method = channel.unary_unary(
            rpc.path,
            request_serializer=type(rpc.request).SerializeToString,
            response_deserializer=rpc.response_class.FromString,
        )
        try:
            response = method(
                rpc.request, metadata=(("authorization", f"Bearer {key}"), *metadata), timeout=30
            )
        except grpc.RpcError as error:
            return error.code(), None, error.details() or ""
    return grpc.StatusCode.OK, response, ""


# -- the scenario ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scenario(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("tasks")
    env = environment(roz, key)
    other_env = environment(roz, key, ("camera",))
    actor = key_id(roz, key)

    created = call(
        protocol,
        roz,
        create(
            prompt="pick the red cube",
            environment_id=env,
            timeout=duration_pb2.Duration(seconds=90),
            allowed_tools=["gripper"],
            labels={"zone": "cell-1"},
        ),
        key,
    )
    first = ok(created)
    if protocol == "rest":
        assert created.http_status == 201
    uuid.UUID(first.id)
    assert (first.prompt, first.environment_id, first.host_id) == ("pick the red cube", env, "")
    assert first.timeout.ToTimedelta().total_seconds() == 90
    assert list(first.allowed_tools) == ["gripper"]
    assert dict(first.labels) == {"zone": "cell-1"}
    assert first.state == S.STATE_PENDING
    assert not first.HasField("start_time")
    assert not first.HasField("end_time")
    assert [(t.from_state, t.to_state, t.actor) for t in first.transitions] == [
        (S.STATE_UNSPECIFIED, S.STATE_PENDING, actor)
    ]

    child = ok(
        call(
            protocol,
            roz,
            create(prompt="then stack it", environment_id=env, parent_task_id=first.id),
            key,
        )
    )
    assert child.parent_task_id == first.id
    # No tools named, no timeout: every tool of the environment, and one hour.
    assert list(child.allowed_tools) == ["camera", "gripper"]
    assert child.timeout.ToTimedelta().total_seconds() == 3600
    elsewhere = ok(call(protocol, roz, create(prompt="look around", environment_id=other_env), key))

    # Transitions, each with its reason.
    queued = ok(call(protocol, roz, transition(first.id, S.STATE_QUEUED), key))
    assert queued.state == S.STATE_QUEUED
    running = ok(call(protocol, roz, transition(first.id, S.STATE_RUNNING, "picked up"), key))
    assert (running.state, running.result) == (S.STATE_RUNNING, "picked up")
    assert running.HasField("start_time")
    done = ok(call(protocol, roz, transition(first.id, S.STATE_SUCCEEDED, "cube in bin"), key))
    assert (done.state, done.result) == (S.STATE_SUCCEEDED, "cube in bin")
    assert done.start_time == running.start_time
    assert done.end_time.ToDatetime() >= done.start_time.ToDatetime()

    # The history, oldest first, through GetTask.
    fetched = ok(call(protocol, roz, get(first.id), key))
    assert fetched == done
    assert [(t.from_state, t.to_state, t.reason, t.actor) for t in fetched.transitions] == [
        (S.STATE_UNSPECIFIED, S.STATE_PENDING, "", actor),
        (S.STATE_PENDING, S.STATE_QUEUED, "", actor),
        (S.STATE_QUEUED, S.STATE_RUNNING, "picked up", actor),
        (S.STATE_RUNNING, S.STATE_SUCCEEDED, "cube in bin", actor),
    ]
    times = [t.transition_time.ToDatetime() for t in fetched.transitions]
    assert times == sorted(times)
    assert fetched.transitions[2].transition_time == fetched.start_time
    assert fetched.transitions[3].transition_time == fetched.end_time

    # An illegal transition names both states.
    illegal = call(protocol, roz, transition(first.id, S.STATE_QUEUED), key)
    assert illegal.code == grpc.StatusCode.FAILED_PRECONDITION
    info = illegal.detail(error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_TRANSITION",
        "roz.dev",
        {"from": "SUCCEEDED", "to": "QUEUED"},
    )
    assert "SUCCEEDED" in illegal.message
    if protocol == "rest":
        assert illegal.http_status == 400
    assert ok(call(protocol, roz, get(first.id), key)) == done

    # Lists: every filter, and pages.
    def listed(**filters: Any) -> list[str]:
        ids: list[str] = []
        token = ""
        while True:
            page = ok(call(protocol, roz, list_page(page_size=2, page_token=token, **filters), key))
            assert len(page.tasks) <= 2
            ids.extend(t.id for t in page.tasks)
            token = page.next_page_token
            if not token:
                return ids

    assert listed() == [elsewhere.id, child.id, first.id]
    assert listed(environment_id=env) == [child.id, first.id]
    assert listed(environment_id=other_env) == [elsewhere.id]
    assert listed(state=S.STATE_SUCCEEDED) == [first.id]
    assert listed(state=S.STATE_PENDING, environment_id=env) == [child.id]
    assert listed(state=S.STATE_RUNNING) == []
    page = ok(call(protocol, roz, list_page(page_size=1), key))
    assert [t.id for t in page.tasks] == [elsewhere.id]
    assert page.tasks[0].transitions == []  # lists leave the history to GetTask
    bad = call(
        protocol, roz, list_page(page_token=page.next_page_token, state=S.STATE_PENDING), key
    )
    assert violations(bad) == ["page_token"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_field_problem_is_reported(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("fields")
    env = environment(roz, key)
    outcome = call(
        protocol,
        roz,
        create(
            prompt="",
            environment_id="not-an-id",
            timeout=duration_pb2.Duration(seconds=0),
            labels={"bad key!": "v"},
            parent_task_id="nope",
        ),
        key,
    )
    assert violations(outcome) == [
        "task.prompt",
        "task.environment_id",
        "task.parent_task_id",
        "task.timeout",
        "task.labels['bad key!']",
    ]
    too_long = call(
        protocol,
        roz,
        create(prompt="p", environment_id=env, timeout=duration_pb2.Duration(seconds=86401)),
        key,
    )
    assert violations(too_long) == ["task.timeout"]
    big = call(protocol, roz, create(prompt="x" * (32 * 1024 + 1), environment_id=env), key)
    assert violations(big) == ["task.prompt"]
    tools = call(
        protocol,
        roz,
        create(prompt="p", environment_id=env, allowed_tools=["camera", "laser", "drill"]),
        key,
    )
    assert violations(tools) == ["task.allowed_tools[1]", "task.allowed_tools[2]"]
    missing = call(protocol, roz, create(prompt="p", environment_id=str(uuid.uuid4())), key)
    assert violations(missing) == ["task.environment_id"]
    absent_parent = call(
        protocol, roz, create(prompt="p", environment_id=env, parent_task_id=str(uuid.uuid4())), key
    )
    assert violations(absent_parent) == ["task.parent_task_id"]
    if protocol == "rest":
        assert missing.http_status == 400

    task = ok(call(protocol, roz, create(prompt="p", environment_id=env), key))
    for state, field in ((S.STATE_UNSPECIFIED, "state"), (S.STATE_TIMED_OUT, "state")):
        assert violations(call(protocol, roz, transition(task.id, state), key)) == [field]
    long_reason = call(protocol, roz, transition(task.id, S.STATE_QUEUED, "r" * 4097), key)
    assert violations(long_reason) == ["reason"]
    assert violations(call(protocol, roz, get("not-a-uuid"), key)) == ["id"]
    assert violations(call(protocol, roz, list_page(environment_id="x"), key)) == ["environment_id"]
    assert violations(call(protocol, roz, list_page(host_id="x"), key)) == ["host_id"]
    assert ok(call(protocol, roz, get(task.id), key)).state == S.STATE_PENDING


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_ids_are_not_found(roz: Roz, protocol: str) -> None:
    missing = str(uuid.uuid4())
    for rpc in (get(missing), transition(missing, S.STATE_QUEUED)):
        outcome = call(protocol, roz, rpc, roz.admin_key)
        assert outcome.code == grpc.StatusCode.NOT_FOUND, rpc.path
        assert outcome.detail(error_details_pb2.ResourceInfo).resource_type == "task"
        if protocol == "rest":
            assert outcome.http_status == 404


# -- idempotency -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_idempotency_key_returns_the_original_task(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("idem")
    env = environment(roz, key)
    request_key = f"order-{uuid.uuid4().hex[:8]}"
    first = ok(call(protocol, roz, create(request_key, prompt="p", environment_id=env), key))
    again = call(protocol, roz, create(request_key, prompt="p", environment_id=env), key)
    assert ok(again).id == first.id
    if protocol == "rest":
        assert again.http_status == 201
    conflict = call(protocol, roz, create(request_key, prompt="other", environment_id=env), key)
    assert conflict.code == grpc.StatusCode.ALREADY_EXISTS
    assert request_key in conflict.message
    if protocol == "rest":
        assert conflict.http_status == 409
    listed = ok(call(protocol, roz, list_page(environment_id=env), key))
    assert [t.id for t in listed.tasks] == [first.id]


def test_the_idempotency_key_header_over_rest(roz: Roz) -> None:
    key = roz.new_tenant("idem-header")
    env = environment(roz, key)
    header = {"Idempotency-Key": f"retry-{uuid.uuid4().hex[:8]}"}
    with roz.rest(key) as client:
        first = client.post(
            "/api/v1/tasks", json={"prompt": "p", "environment_id": env}, headers=header
        )
        again = client.post(
            "/api/v1/tasks", json={"prompt": "p", "environment_id": env}, headers=header
        )
        other = client.post(
            "/api/v1/tasks", json={"prompt": "q", "environment_id": env}, headers=header
        )
        # The header and the field are one key: naming both, differently, is a mistake.
        both = client.post(
            "/api/v1/tasks",
            params={"idempotency_key": "something-else"},
            json={"prompt": "p", "environment_id": env},
            headers=header,
        )
        listed = client.get("/api/v1/tasks", params={"environment_id": env}).json()["tasks"]
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 409)
    assert again.json()["id"] == first.json()["id"]
    assert again.json() == first.json()
    assert other.json()["code"] == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert both.status_code == 400
    assert both.json()["details"][0]["field_violations"][0]["field"] == "idempotency_key"
    assert [t["id"] for t in listed] == [first.json()["id"]]


def test_the_idempotency_key_metadata_over_grpc(roz: Roz) -> None:
    key = roz.new_tenant("idem-metadata")
    env = environment(roz, key)
    metadata = (("idempotency-key", f"retry-{uuid.uuid4().hex[:8]}"),)
    code, first, _ = grpc_call(roz, create(prompt="p", environment_id=env), key, metadata)
    assert code == grpc.StatusCode.OK
    code, again, _ = grpc_call(roz, create(prompt="p", environment_id=env), key, metadata)
    assert code == grpc.StatusCode.OK
    assert again == first
    code, _, message = grpc_call(roz, create(prompt="q", environment_id=env), key, metadata)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert metadata[0][1] in message


# -- races and the sweep ---------------------------------------------------------------------


def _racer(
    roz: Roz, key: str, task_id: str, protocol: str, state: int, barrier: threading.Barrier
) -> tuple[grpc.StatusCode, int, dict[str, str]]:
    """One client, connected before the start; returns (code, state reached, ErrorInfo metadata).

    Everyone first reads concurrently (so the server's pool has grown), then all send their
    transition at once: without a row lock or compare-and-set, several would win.
    """
    rpc = transition(task_id, state)
    if protocol == "rest":
        with roz.rest(key) as client:
            client.get(f"/api/v1/tasks/{task_id}")
            barrier.wait()
            client.get(f"/api/v1/tasks/{task_id}")
            barrier.wait()
            response = client.post(rpc.http_path, json=rpc.body)
        body = response.json()
        if response.status_code == 200:
            return grpc.StatusCode.OK, S.State.Value(body["state"]), {}
        info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
        code = next(c for c in grpc.StatusCode if c.value[0] == body["code"])
        return code, 0, dict(info["metadata"])
    with roz.channel() as channel:
        stub = channel.unary_unary(
            rpc.path,
            request_serializer=pb.TransitionTaskRequest.SerializeToString,
            response_deserializer=pb.Task.FromString,
        )
        reader = channel.unary_unary(
            SERVICE + "GetTask",
            request_serializer=pb.GetTaskRequest.SerializeToString,
            response_deserializer=pb.Task.FromString,
        )
        metadata = (("authorization", f"Bearer {key}"),)
        reader(pb.GetTaskRequest(id=task_id), metadata=metadata, timeout=30)
        barrier.wait()
        reader(pb.GetTaskRequest(id=task_id), metadata=metadata, timeout=30)
        barrier.wait()
        try:
            response = stub(rpc.request, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            return error.code(), 0, dict(info.metadata)
        return grpc.StatusCode.OK, response.state, {}


def test_racing_transitions_have_exactly_one_winner(roz: Roz) -> None:
    key = roz.new_tenant("race")
    task = ok(call("grpc", roz, create(prompt="p", environment_id=environment(roz, key)), key))
    run("grpc", roz, key, task.id, S.STATE_QUEUED, S.STATE_RUNNING)
    attempts = [
        (protocol, state)
        for protocol in ("rest", "grpc")
        for state in (S.STATE_SUCCEEDED, S.STATE_FAILED) * 3
    ][:10]
    barrier = threading.Barrier(len(attempts), timeout=30)
    with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
        outcomes = list(
            pool.map(lambda a: _racer(roz, key, task.id, a[0], a[1], barrier), attempts)
        )
    winners = [state for code, state, _ in outcomes if code == grpc.StatusCode.OK]
    assert len(winners) == 1, outcomes
    won = S.State.Name(winners[0]).removeprefix("STATE_")  # type: ignore[arg-type]
    losers = [(code, info) for code, _, info in outcomes if code != grpc.StatusCode.OK]
    assert len(losers) == len(attempts) - 1
    for code, info in losers:
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert info["from"] == won
    final = ok(call("rest", roz, get(task.id), key))
    assert final.state == winners[0]
    assert [t.to_state for t in final.transitions if t.to_state in TERMINAL] == [final.state]


def test_the_server_times_out_a_running_task(roz: Roz) -> None:
    key = roz.new_tenant("sweep")
    env = environment(roz, key)
    task = ok(
        call(
            "rest",
            roz,
            create(prompt="p", environment_id=env, timeout=duration_pb2.Duration(seconds=1)),
            key,
        )
    )
    patient = ok(call("rest", roz, create(prompt="p", environment_id=env), key))
    run("rest", roz, key, task.id, S.STATE_QUEUED, S.STATE_RUNNING)
    run("rest", roz, key, patient.id, S.STATE_QUEUED, S.STATE_RUNNING)
    # The shared server sweeps every ROZ_SWEEP_INTERVAL_SECONDS (5 s by default).
    deadline = time.monotonic() + roz.app.settings.sweep_interval_seconds + 15
    while True:
        swept = ok(call("grpc", roz, get(task.id), key))
        if swept.state != S.STATE_RUNNING or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert swept.state == S.STATE_TIMED_OUT
    assert swept.result == "timeout"
    assert (
        swept.end_time.ToDatetime() - swept.start_time.ToDatetime() >= swept.timeout.ToTimedelta()
    )
    last = swept.transitions[-1]
    assert (last.from_state, last.to_state, last.reason, last.actor) == (
        S.STATE_RUNNING,
        S.STATE_TIMED_OUT,
        "timeout",
        "",
    )
    assert last.transition_time == swept.end_time
    assert [t.to_state for t in swept.transitions].count(S.STATE_TIMED_OUT) == 1
    # Timed out is final, and the task with the default hour keeps running.
    late = call("rest", roz, transition(task.id, S.STATE_SUCCEEDED), key)
    assert late.code == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(late.detail(error_details_pb2.ErrorInfo).metadata) == {
        "from": "TIMED_OUT",
        "to": "SUCCEEDED",
    }
    assert ok(call("rest", roz, get(patient.id), key)).state == S.STATE_RUNNING


# -- REST specifics --------------------------------------------------------------------------


def test_rest_statuses_and_lenient_enums(roz: Roz) -> None:
    key = roz.new_tenant("rest")
    env = environment(roz, key)
    with roz.rest(key) as client:
        created = client.post(
            "/api/v1/tasks",
            json={
                "prompt": "p",
                "environment_id": env,
                "timeout": "30s",
                "allowedTools": ["camera"],
            },
        )
        task_id = created.json()["id"]
        queued = client.post(f"/api/v1/tasks/{task_id}/transition", json={"state": "queued"})
        running = client.post(
            f"/api/v1/tasks/{task_id}/transition", json={"state": "Running", "reason": "go"}
        )
        by_state = client.get("/api/v1/tasks", params={"state": "running"})
        fetched = client.get(f"/api/v1/tasks/{task_id}")
        unknown = client.get(f"/api/v1/tasks/{uuid.uuid4()}")
        bad_state = client.post(f"/api/v1/tasks/{task_id}/transition", json={"state": "flying"})
        unknown_field = client.post(
            "/api/v1/tasks", json={"prompt": "p", "environment_id": env, "priority": 5}
        )
        illegal = client.post(f"/api/v1/tasks/{task_id}/transition", json={"state": "pending"})
    assert created.status_code == 201, created.text
    assert created.json()["timeout"] == "30s"
    assert created.json()["state"] == "STATE_PENDING"
    assert created.json()["allowed_tools"] == ["camera"]
    assert (queued.status_code, running.status_code) == (200, 200)
    assert running.json()["state"] == "STATE_RUNNING"
    assert running.json()["result"] == "go"
    assert [t["id"] for t in by_state.json()["tasks"]] == [task_id]
    transitions = fetched.json()["transitions"]
    assert [t["to_state"] for t in transitions] == [
        "STATE_PENDING",
        "STATE_QUEUED",
        "STATE_RUNNING",
    ]
    assert transitions[0]["from_state"] == "STATE_UNSPECIFIED"
    assert unknown.status_code == 404
    assert bad_state.status_code == 400
    assert unknown_field.status_code == 400
    assert illegal.status_code == 400
    assert illegal.json()["details"][0]["reason"] == "INVALID_TRANSITION"
    assert illegal.json()["details"][0]["metadata"] == {"from": "RUNNING", "to": "PENDING"}


# -- scopes ----------------------------------------------------------------------------------


def _key_with(roz: Roz, admin: str, *scopes: str) -> str:
    with roz.rest(admin) as client:
        response = client.post("/api/v1/auth-keys", json={"name": "scoped", "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_scopes_are_enforced_per_method(roz: Roz, protocol: str) -> None:
    admin = roz.new_tenant("scopes")
    env = environment(roz, admin)
    task = ok(call(protocol, roz, create(prompt="p", environment_id=env), admin))
    reader = _key_with(roz, admin, "tasks:read")
    writer = _key_with(roz, admin, "tasks:write")
    assert ok(call(protocol, roz, get(task.id), reader)).id == task.id
    assert ok(call(protocol, roz, list_page(), reader)).tasks
    for rpc in (create(prompt="p", environment_id=env), transition(task.id, S.STATE_QUEUED)):
        denied = call(protocol, roz, rpc, reader)
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED, rpc.path
        assert (
            denied.detail(error_details_pb2.ErrorInfo).metadata["required_scope"] == "tasks:write"
        )
        if protocol == "rest":
            assert denied.http_status == 403
    # write implies read.
    assert (
        ok(call(protocol, roz, transition(task.id, S.STATE_QUEUED), writer)).state == S.STATE_QUEUED
    )
    assert ok(call(protocol, roz, get(task.id), writer)).state == S.STATE_QUEUED


# -- tenancy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_tenancy_matrix(roz: Roz, protocol: str) -> None:
    """Tenant B naming tenant A's ids, through every task method: nothing of A's is revealed
    or changed."""
    a, b = roz.new_tenant("owner"), roz.new_tenant("intruder")
    a_env = environment(roz, a)
    parent = ok(call("rest", roz, create(prompt="parent", environment_id=a_env), a))
    mine = ok(
        call(
            "rest",
            roz,
            create(prompt="a's task", environment_id=a_env, parent_task_id=parent.id),
            a,
        )
    )
    run("rest", roz, a, mine.id, S.STATE_QUEUED)
    before = ok(call("rest", roz, get(mine.id), a))
    b_env = environment(roz, b)

    for rpc in (
        get(mine.id),
        *(transition(mine.id, state) for state in (S.STATE_RUNNING, S.STATE_CANCELLED)),
    ):
        outcome = call(protocol, roz, rpc, b)
        assert outcome.code == grpc.StatusCode.NOT_FOUND, rpc.path
        assert outcome.detail(error_details_pb2.ResourceInfo).resource_type == "task"
    # A's rows as references of B's new task: refused as if they did not exist.
    assert violations(call(protocol, roz, create(prompt="p", environment_id=a_env), b)) == [
        "task.environment_id"
    ]
    assert violations(
        call(protocol, roz, create(prompt="p", environment_id=b_env, parent_task_id=mine.id), b)
    ) == ["task.parent_task_id"]
    if hosts_served(roz):
        a_host = host(roz, a, a_env)
        assert violations(
            call(protocol, roz, create(prompt="p", environment_id=b_env, host_id=a_host), b)
        ) == ["task.host_id"]
        assert ok(call(protocol, roz, list_page(host_id=a_host), b)).tasks == []
    # Lists show none of A's tasks, whichever filter names A's rows.
    for filters in ({}, {"environment_id": a_env}, {"state": S.STATE_QUEUED}):
        listed = ok(call(protocol, roz, list_page(page_size=1000, **filters), b))
        assert {t.id for t in listed.tasks} & {mine.id, parent.id} == set(), filters
    # Idempotency keys are per tenant: B's key cannot replay or block A's.
    shared = f"k-{uuid.uuid4().hex[:8]}"
    a_keyed = ok(call("rest", roz, create(shared, prompt="p", environment_id=a_env), a))
    b_keyed = ok(call(protocol, roz, create(shared, prompt="p", environment_id=b_env), b))
    assert b_keyed.id != a_keyed.id

    after = ok(call("rest", roz, get(mine.id), a))
    assert after == before
    assert ok(call("rest", roz, get(parent.id), a)).state == S.STATE_PENDING


# -- hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_task_on_a_host_of_its_environment(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("hosts")
    env, other_env = environment(roz, key), environment(roz, key)
    arm = host(roz, key, env)
    elsewhere = host(roz, key, other_env)
    task = ok(call(protocol, roz, create(prompt="p", environment_id=env, host_id=arm), key))
    assert task.host_id == arm
    wrong = call(protocol, roz, create(prompt="p", environment_id=env, host_id=elsewhere), key)
    assert violations(wrong) == ["task.host_id"]
    assert (
        "does not belong"
        in wrong.detail(error_details_pb2.BadRequest).field_violations[0].description
    )
    unknown = call(
        protocol, roz, create(prompt="p", environment_id=env, host_id=str(uuid.uuid4())), key
    )
    assert violations(unknown) == ["task.host_id"]
    ok(call(protocol, roz, create(prompt="p", environment_id=env), key))
    assert [t.id for t in ok(call(protocol, roz, list_page(host_id=arm), key)).tasks] == [task.id]
    assert ok(call(protocol, roz, list_page(host_id=elsewhere), key)).tasks == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_operators_see_when_a_task_was_delivered_and_acknowledged(roz: Roz, protocol: str) -> None:
    """A QUEUED task with a host goes to its robot; GetTask shows when it went out and when the
    robot acknowledged it (stamped here through the delivery log's repository)."""
    key = roz.new_tenant("delivered")
    environment_id = environment(roz, key)
    host_id = host(roz, key, environment_id)
    task = ok(
        call(protocol, roz, create(prompt="p", environment_id=environment_id, host_id=host_id), key)
    )
    queued = ok(call(protocol, roz, transition(task.id, S.STATE_QUEUED), key))
    assert not queued.HasField("deliver_time")

    with roz.rest(key) as client:
        tenant = uuid.UUID(client.get("/api/v1/caller").json()["tenant_id"])
    deliveries = RobotDeliveryRepository(roz.app.database.pool)
    sent = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    roz.listener.call(deliveries.mark_delivered(tenant, host_id, 0, 1, now=sent))
    roz.listener.call(deliveries.acknowledge(tenant, host_id, 1, now=sent + timedelta(seconds=1)))

    seen = ok(call(protocol, roz, get(task.id), key))
    assert seen.deliver_time.ToDatetime(tzinfo=UTC) == sent
    assert seen.acknowledge_time.ToDatetime(tzinfo=UTC) == sent + timedelta(seconds=1)
