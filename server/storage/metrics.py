"""Task metrics in one SQL statement: counts per state, total, and run-time average and percentiles.

One pass over the tenant's tasks (row-level security scopes it; the filters narrow it), read
from an index that carries state, start_time and end_time (tasks_page, tasks_environment_page,
tasks_host_page in 0005_tasks.sql), so the count of every state, the total and the durations
come from one index range scan instead of a scan per state.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from server.domain.metrics import TaskMetrics, TaskMetricsQuery
from server.domain.tasks import TaskState
from server.storage.database import Pool
from server.storage.tenancy import tenant_transaction

# From RUNNING to the terminal state: NULL for tasks that never ran or have not finished, which
# avg and percentile_cont skip.
_DURATION = "end_time - start_time"
# Built from the enum's constant values, never from input.
_COUNTS = ", ".join(f"count(*) FILTER (WHERE state = '{state.value}')" for state in TaskState)
_SELECT = (
    f"SELECT {_COUNTS}, count(*), avg({_DURATION}),"
    f" percentile_cont(0.5) WITHIN GROUP (ORDER BY {_DURATION}),"
    f" percentile_cont(0.95) WITHIN GROUP (ORDER BY {_DURATION})"
    " FROM roz.tasks"
)
_FILTERS = (
    ("environment_id", "environment_id = %s"),
    ("host_id", "host_id = %s"),
    ("start_time", "create_time >= %s"),
    ("end_time", "create_time < %s"),
)


def metrics_query(query: TaskMetricsQuery) -> tuple[str, list[Any]]:
    """The statement and its parameters (also what the EXPLAIN test plans)."""
    conditions: list[str] = []
    params: list[Any] = []
    for name, condition in _FILTERS:
        value = getattr(query, name)
        if value is not None:
            conditions.append(condition)
            params.append(value)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return _SELECT + where, params


class MetricsRepository:
    """Aggregates over each tenant's tasks, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def task_metrics(self, tenant_id: UUID, query: TaskMetricsQuery) -> TaskMetrics:
        statement, params = metrics_query(query)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (await conn.execute(statement, params)).fetchone()
        assert row is not None
        states = len(TaskState)
        counts = tuple(int(count) for count in row[:states])
        total, average, p50, p95 = row[states:]
        return TaskMetrics(
            state_counts=tuple(zip(TaskState, counts, strict=True)),
            total=int(total),
            average_duration=average,
            p50_duration=p50,
            p95_duration=p95,
        )
