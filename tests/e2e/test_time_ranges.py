"""Timestamps and Durations outside their own ranges are field violations, never INTERNAL.

JSON cannot carry them (the REST transcoder refuses them while parsing); a binary client can,
over native gRPC and gRPC-web alike. Found by the fuzz tier (tests/fuzz).
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from roz.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)

from tests.e2e.conftest import Roz


def _violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


@pytest.mark.parametrize(
    ("stamp", "label"),
    [
        (timestamp_pb2.Timestamp(seconds=0, nanos=-1), "negative nanos"),
        (timestamp_pb2.Timestamp(seconds=0, nanos=10**9), "a whole second of nanos"),
        (timestamp_pb2.Timestamp(seconds=2**62), "beyond year 9999"),
    ],
)
def test_timestamps_out_of_range(roz: Roz, stamp: timestamp_pb2.Timestamp, label: str) -> None:
    auth = [("authorization", f"Bearer {roz.admin_key}")]
    with roz.channel() as channel:
        metrics = metrics_pb2_grpc.MetricsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as metrics_error:
            metrics.GetTaskMetrics(
                metrics_pb2.GetTaskMetricsRequest(start_time=stamp), metadata=auth, timeout=10
            )
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        with pytest.raises(grpc.RpcError) as key_error:
            keys.CreateApiKey(
                api_keys_pb2.CreateApiKeyRequest(
                    api_key=api_keys_pb2.ApiKey(
                        name=f"k-{uuid.uuid4().hex[:6]}",
                        scopes=["environments:read"],
                        expire_time=stamp,
                    )
                ),
                metadata=auth,
                timeout=10,
            )
    assert metrics_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
    assert _violations(metrics_error.value) == ["start_time"]
    assert key_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
    assert _violations(key_error.value) == ["api_key.expire_time"]


@pytest.mark.parametrize(
    "duration",
    [
        duration_pb2.Duration(seconds=10**15),
        duration_pb2.Duration(seconds=1, nanos=-5),
        duration_pb2.Duration(seconds=0, nanos=2 * 10**9),
    ],
)
def test_task_timeouts_out_of_range(roz: Roz, duration: duration_pb2.Duration) -> None:
    with roz.channel() as channel:
        tasks = tasks_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            tasks.CreateTask(
                tasks_pb2.CreateTaskRequest(
                    task=tasks_pb2.Task(
                        prompt="p", environment_id=str(uuid.uuid4()), timeout=duration
                    )
                ),
                metadata=[("authorization", f"Bearer {roz.admin_key}")],
                timeout=10,
            )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout" in _violations(error.value)
