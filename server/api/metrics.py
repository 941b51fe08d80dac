"""MetricsService: proto ⇄ domain for task metrics, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roz.v1 import metrics_pb2 as pb
from roz.v1 import metrics_pb2_grpc

from server.api.convert import datetime_of, duration
from server.api.principal import current_principal
from server.api.tasks import STATE_TO_PROTO
from server.domain.metrics import TaskMetrics, TaskMetricsQuery
from server.domain.tasks import parse_optional_id
from server.storage.metrics import MetricsRepository


def metrics_to_proto(metrics: TaskMetrics) -> pb.TaskMetrics:
    return pb.TaskMetrics(
        state_counts=[
            pb.StateCount(state=STATE_TO_PROTO[state], count=count)
            for state, count in metrics.state_counts
        ],
        total=metrics.total,
        average_duration=duration(metrics.average_duration),
        p50_duration=duration(metrics.p50_duration),
        p95_duration=duration(metrics.p95_duration),
    )


def query_from_proto(request: pb.GetTaskMetricsRequest) -> TaskMetricsQuery:
    return TaskMetricsQuery(
        environment_id=parse_optional_id(request.environment_id, "environment_id"),
        host_id=parse_optional_id(request.host_id, "host_id"),
        start_time=datetime_of(request.start_time, "start_time")
        if request.HasField("start_time")
        else None,
        end_time=datetime_of(request.end_time, "end_time")
        if request.HasField("end_time")
        else None,
    )


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], MetricsRepository]) -> None:
        self._repository = repository

    async def GetTaskMetrics(
        self, request: pb.GetTaskMetricsRequest, context: Any
    ) -> pb.TaskMetrics:
        tenant = current_principal().tenant_id
        metrics = await self._repository().task_metrics(tenant, query_from_proto(request))
        return metrics_to_proto(metrics)
