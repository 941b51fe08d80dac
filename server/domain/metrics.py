"""Metrics: which tasks an aggregate covers, and what it reports about them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.tasks import TaskState


@dataclass(frozen=True)
class TaskMetricsQuery:
    """Which tasks metrics cover: filters by environment and host, a window on create_time."""

    environment_id: UUID | None = None
    host_id: UUID | None = None
    # Created at or after start_time and before end_time.
    start_time: datetime | None = None
    end_time: datetime | None = None

    def __post_init__(self) -> None:
        if (
            self.start_time is not None
            and self.end_time is not None
            and self.end_time <= self.start_time
        ):
            raise InvalidArgument(
                "the time window is empty",
                [FieldViolation("end_time", "end_time must be after start_time")],
            )


@dataclass(frozen=True)
class TaskMetrics:
    # Every state in TaskState's order, zeros included.
    state_counts: tuple[tuple[TaskState, int], ...]
    total: int
    # Over tasks that ran and finished (start_time and end_time set); None when there are none.
    average_duration: timedelta | None
    p50_duration: timedelta | None
    p95_duration: timedelta | None
