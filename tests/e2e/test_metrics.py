"""Task metrics end to end: exact numbers on a fresh tenant over every protocol, filters, the REST
shape, validation, scopes and tenancy."""

from __future__ import annotations

import math
import time
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2
from roz.v1 import metrics_pb2 as mpb
from roz.v1 import tasks_pb2 as pb

from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Rpc, call
from tests.e2e.test_tasks import (
    create,
    environment,
    get,
    host,
    hosts_served,
    ok,
    run,
    violations,
)

S = pb.Task
ALL_STATES = [value.number for value in S.State.DESCRIPTOR.values if value.number]


def metrics(**filters: Any) -> Rpc:
    request = mpb.GetTaskMetricsRequest(**filters)
    return Rpc(
        "/roz.v1.MetricsService/GetTaskMetrics",
        request,
        mpb.TaskMetrics,
        "GET",
        "/api/v1/metrics/tasks",
        query=json_format.MessageToDict(request, preserving_proto_field_name=True),
    )


def counts(result: mpb.TaskMetrics) -> dict[int, int]:
    # Every state, in enum order, zeros included.
    assert [c.state for c in result.state_counts] == ALL_STATES
    return {c.state: c.count for c in result.state_counts if c.count}


def percentile(values: list[timedelta], fraction: float) -> timedelta:
    """percentile_cont: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def close(duration: Any, expected: timedelta) -> bool:
    # The database's interval arithmetic rounds to the microsecond.
    return abs(duration.ToTimedelta() - expected) <= timedelta(microseconds=1)


def run_for(protocol: str, roz: Roz, key: str, env: str, end: int, seconds: float) -> Any:
    task = ok(call(protocol, roz, create(prompt="p", environment_id=env), key))
    run(protocol, roz, key, task.id, S.STATE_QUEUED, S.STATE_RUNNING)
    time.sleep(seconds)
    return run(protocol, roz, key, task.id, end)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_numbers_on_a_fresh_tenant(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("metrics")
    empty = ok(call(protocol, roz, metrics(), key))
    assert counts(empty) == {}
    assert empty.total == 0
    for field in ("average_duration", "p50_duration", "p95_duration"):
        assert not empty.HasField(field)

    lab, line = environment(roz, key), environment(roz, key)
    finished = [
        run_for(protocol, roz, key, lab, S.STATE_SUCCEEDED, 0.05),
        run_for(protocol, roz, key, lab, S.STATE_FAILED, 0.15),
        run_for(protocol, roz, key, lab, S.STATE_SUCCEEDED, 0.0),
        run_for(protocol, roz, key, line, S.STATE_CANCELLED, 0.1),
        run_for(protocol, roz, key, line, S.STATE_SAFETY_STOPPED, 0.02),
    ]
    never_ran = ok(call(protocol, roz, create(prompt="p", environment_id=line), key))
    run(protocol, roz, key, never_ran.id, S.STATE_CANCELLED)
    queued = ok(call(protocol, roz, create(prompt="p", environment_id=line), key))
    run(protocol, roz, key, queued.id, S.STATE_QUEUED)
    ok(call(protocol, roz, create(prompt="p", environment_id=lab), key))
    running = ok(call(protocol, roz, create(prompt="p", environment_id=lab), key))
    run(protocol, roz, key, running.id, S.STATE_QUEUED, S.STATE_RUNNING)

    result = ok(call(protocol, roz, metrics(), key))
    assert counts(result) == {
        S.STATE_PENDING: 1,
        S.STATE_QUEUED: 1,
        S.STATE_RUNNING: 1,
        S.STATE_SUCCEEDED: 2,
        S.STATE_FAILED: 1,
        S.STATE_CANCELLED: 2,
        S.STATE_SAFETY_STOPPED: 1,
    }
    assert result.total == 9
    durations = [t.end_time.ToDatetime() - t.start_time.ToDatetime() for t in finished]
    assert close(result.average_duration, sum(durations, timedelta()) / len(durations))
    assert close(result.p50_duration, percentile(durations, 0.5))
    assert close(result.p95_duration, percentile(durations, 0.95))
    # The runs slept 0 … 0.15 s: p95 lies between the two longest.
    assert timedelta(seconds=0.1) <= result.p95_duration.ToTimedelta() <= max(durations)

    in_lab = ok(call(protocol, roz, metrics(environment_id=lab), key))
    assert counts(in_lab) == {
        S.STATE_PENDING: 1,
        S.STATE_RUNNING: 1,
        S.STATE_SUCCEEDED: 2,
        S.STATE_FAILED: 1,
    }
    assert in_lab.total == 5
    assert close(in_lab.average_duration, sum(durations[:3], timedelta()) / 3)

    # The window is on create_time, [start_time, end_time).
    second, last = finished[1], running
    window = ok(
        call(protocol, roz, metrics(start_time=second.create_time, end_time=last.create_time), key)
    )
    assert window.total == 7  # from the second task up to, not including, the last
    assert close(window.p50_duration, percentile(durations[1:], 0.5))
    after = ok(call(protocol, roz, metrics(start_time=last.create_time), key))
    assert (counts(after), after.total) == ({S.STATE_RUNNING: 1}, 1)
    assert not after.HasField("average_duration")


def test_metrics_over_rest(roz: Roz) -> None:
    key = roz.new_tenant("metrics-rest")
    env = environment(roz, key)
    done = run_for("rest", roz, key, env, S.STATE_SUCCEEDED, 0.01)
    with roz.rest(key) as client:
        response = client.get("/api/v1/metrics/tasks", params={"environment_id": env})
        empty_window = client.get(
            "/api/v1/metrics/tasks",
            params={"start_time": "2030-01-01T00:00:00Z", "end_time": "2030-01-01T00:00:00Z"},
        )
        bad_id = client.get("/api/v1/metrics/tasks", params={"environment_id": "nope"})
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == "1"  # int64 as a string
    assert body["state_counts"][0] == {"state": "STATE_PENDING", "count": "0"}
    assert {"state": "STATE_SUCCEEDED", "count": "1"} in body["state_counts"]
    assert len(body["state_counts"]) == 8
    ran = done.end_time.ToDatetime() - done.start_time.ToDatetime()
    assert body["average_duration"] == body["p50_duration"] == body["p95_duration"]
    assert body["average_duration"].endswith("s")
    assert abs(float(body["average_duration"][:-1]) - ran.total_seconds()) < 1e-6
    assert empty_window.status_code == 400
    assert empty_window.json()["details"][0]["field_violations"][0]["field"] == "end_time"
    assert bad_id.status_code == 400


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_filters_are_field_violations(roz: Roz, protocol: str) -> None:
    assert violations(call(protocol, roz, metrics(environment_id="x"), roz.admin_key)) == [
        "environment_id"
    ]
    assert violations(call(protocol, roz, metrics(host_id="x"), roz.admin_key)) == ["host_id"]
    at = timestamp_pb2.Timestamp(seconds=1_900_000_000)
    outcome = call(protocol, roz, metrics(start_time=at, end_time=at), roz.admin_key)
    assert violations(outcome) == ["end_time"]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_metrics_need_their_scope(roz: Roz, protocol: str) -> None:
    admin = roz.new_tenant("metrics-scope")
    with roz.rest(admin) as client:
        secrets = {
            scope: client.post("/api/v1/auth-keys", json={"name": scope, "scopes": [scope]}).json()[
                "secret"
            ]
            for scope in ("metrics:read", "tasks:admin")
        }
    assert ok(call(protocol, roz, metrics(), secrets["metrics:read"])).total == 0
    denied = call(protocol, roz, metrics(), secrets["tasks:admin"])
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.detail(error_details_pb2.ErrorInfo).metadata["required_scope"] == "metrics:read"
    if protocol == "rest":
        assert denied.http_status == 403
    # And metrics:read reads nothing else.
    assert call(protocol, roz, get(str(uuid.uuid4())), secrets["metrics:read"]).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_another_tenants_tasks_are_never_counted(roz: Roz, protocol: str) -> None:
    a, b = roz.new_tenant("counted"), roz.new_tenant("counting")
    a_env = environment(roz, a)
    run_for("rest", roz, a, a_env, S.STATE_SUCCEEDED, 0.0)
    ok(call("rest", roz, create(prompt="p", environment_id=a_env), a))
    a_host = host(roz, a, a_env) if hosts_served(roz) else ""
    b_env = environment(roz, b)
    ok(call("rest", roz, create(prompt="p", environment_id=b_env), b))
    before = ok(call("rest", roz, metrics(), a))

    for filters in ({}, {"environment_id": a_env}, *([{"host_id": a_host}] if a_host else [])):
        theirs = ok(call(protocol, roz, metrics(**filters), b))
        expected = {S.STATE_PENDING: 1} if not filters else {}
        assert counts(theirs) == expected, filters
        assert theirs.total == len(expected)
        assert not theirs.HasField("average_duration")
    assert ok(call("rest", roz, metrics(), a)) == before
    assert before.total == 2


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_metrics_by_host(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("metrics-host")
    env = environment(roz, key)
    arm, other = host(roz, key, env), host(roz, key, env)
    on_arm = ok(call(protocol, roz, create(prompt="p", environment_id=env, host_id=arm), key))
    run(protocol, roz, key, on_arm.id, S.STATE_QUEUED, S.STATE_RUNNING, S.STATE_FAILED)
    ok(call(protocol, roz, create(prompt="p", environment_id=env, host_id=other), key))
    ok(call(protocol, roz, create(prompt="p", environment_id=env), key))
    by_arm = ok(call(protocol, roz, metrics(host_id=arm), key))
    assert (counts(by_arm), by_arm.total) == ({S.STATE_FAILED: 1}, 1)
    both = ok(call(protocol, roz, metrics(environment_id=env, host_id=other), key))
    assert (counts(both), both.total) == ({S.STATE_PENDING: 1}, 1)
