"""Task metrics in the database: exact numbers, filters, tenancy, one index scan on 100k tasks."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection

from server.domain.environments import EnvironmentDraft
from server.domain.metrics import TaskMetricsQuery
from server.domain.tasks import TaskState
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.metrics import MetricsRepository, metrics_query
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import NewDatabaseUrl, TenantWithKey

S = TaskState
_INSERT = (
    "INSERT INTO roz.tasks (tenant_id, environment_id, host_id, prompt, timeout, state,"
    " create_time, update_time, start_time, run_deadline, end_time)"
    " VALUES (%s, %s, %s, 'p', '1 hour', %s, %s, %s, %s, %s, %s)"
)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def metrics(database: Database) -> MetricsRepository:
    return MetricsRepository(database.pool)


async def _insert(
    database: Database,
    tenant: TenantWithKey,
    environment: uuid.UUID,
    state: TaskState,
    *,
    created: datetime = T0,
    ran: timedelta | None = None,
    host: uuid.UUID | None = None,
) -> None:
    """A task row in `state`, created at `created`; `ran` is how long it ran before it ended."""
    started = created + timedelta(seconds=1) if ran is not None or state is S.RUNNING else None
    ended = None
    if state.terminal:
        ended = (started + ran) if started is not None and ran is not None else created
    deadline = started + timedelta(hours=1) if state is S.RUNNING and started else None
    async with tenant_transaction(database.pool, tenant.id) as conn:
        await conn.execute(
            _INSERT,
            (
                tenant.id,
                environment,
                host,
                state.value,
                created,
                ended or started or created,
                started,
                deadline,
                ended,
            ),
        )


async def _environment(environments: EnvironmentRepository, tenant: TenantWithKey) -> uuid.UUID:
    created = await environments.create(
        tenant.id, EnvironmentDraft(name=f"m-{uuid.uuid4().hex[:8]}")
    )
    return created.id


async def test_every_state_is_counted_and_durations_are_exact(
    metrics: MetricsRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    environment = await _environment(environments, tenant_a)
    empty = await metrics.task_metrics(tenant_a.id, TaskMetricsQuery())
    assert empty.state_counts == tuple((state, 0) for state in TaskState)
    assert (empty.total, empty.average_duration, empty.p50_duration, empty.p95_duration) == (
        0,
        None,
        None,
        None,
    )

    # Ten finished runs of 1 s … 10 s, across the terminal states that come from RUNNING.
    finishing = [S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED, S.SAFETY_STOPPED]
    for seconds in range(1, 11):
        state = finishing[seconds % len(finishing)]
        await _insert(database, tenant_a, environment, state, ran=timedelta(seconds=seconds))
    # Never ran, so no duration: cancelled and stopped before RUNNING, and unfinished ones.
    for state in (S.CANCELLED, S.SAFETY_STOPPED, S.PENDING, S.PENDING, S.QUEUED, S.RUNNING):
        await _insert(database, tenant_a, environment, state)

    result = await metrics.task_metrics(tenant_a.id, TaskMetricsQuery())
    assert result.state_counts == (
        (S.PENDING, 2),
        (S.QUEUED, 1),
        (S.RUNNING, 1),
        (S.SUCCEEDED, 2),
        (S.FAILED, 2),
        (S.CANCELLED, 3),
        (S.TIMED_OUT, 2),
        (S.SAFETY_STOPPED, 3),
    )
    assert result.total == 16
    assert result.average_duration == timedelta(seconds=5.5)
    assert result.p50_duration == timedelta(seconds=5.5)
    # percentile_cont interpolates: 9 s + 0.55 * (10 s - 9 s).
    assert result.p95_duration == timedelta(seconds=9.55)


async def test_filters_narrow_the_tasks_counted(
    metrics: MetricsRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    lab = await _environment(environments, tenant_a)
    line = await _environment(environments, tenant_a)
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        row = await (
            await conn.execute(
                "INSERT INTO roz.hosts (tenant_id, name, environment_id) VALUES (%s, %s, %s)"
                " RETURNING id",
                (tenant_a.id, f"arm-{uuid.uuid4().hex[:6]}", line),
            )
        ).fetchone()
    assert row is not None
    arm = row[0]
    await _insert(database, tenant_a, lab, S.SUCCEEDED, ran=timedelta(seconds=2))
    await _insert(database, tenant_a, line, S.FAILED, ran=timedelta(seconds=4), host=arm)
    await _insert(database, tenant_a, line, S.PENDING, created=T0 + timedelta(hours=1), host=arm)
    await _insert(database, tenant_a, line, S.QUEUED, created=T0 + timedelta(hours=2))

    async def counted(**filters: Any) -> tuple[int, dict[TaskState, int], timedelta | None]:
        got = await metrics.task_metrics(tenant_a.id, TaskMetricsQuery(**filters))
        assert [state for state, _ in got.state_counts] == list(TaskState)
        nonzero = {state: count for state, count in got.state_counts if count}
        return got.total, nonzero, got.average_duration

    assert await counted(environment_id=lab) == (1, {S.SUCCEEDED: 1}, timedelta(seconds=2))
    assert await counted(host_id=arm) == (2, {S.FAILED: 1, S.PENDING: 1}, timedelta(seconds=4))
    assert await counted(environment_id=line, host_id=arm) == (
        2,
        {S.FAILED: 1, S.PENDING: 1},
        timedelta(seconds=4),
    )
    # The window is on create_time: [start, end).
    assert await counted(start_time=T0 + timedelta(hours=1)) == (
        2,
        {S.PENDING: 1, S.QUEUED: 1},
        None,
    )
    assert await counted(end_time=T0 + timedelta(hours=1)) == (
        2,
        {S.SUCCEEDED: 1, S.FAILED: 1},
        timedelta(seconds=3),
    )
    assert await counted(start_time=T0 + timedelta(hours=1), end_time=T0 + timedelta(hours=2)) == (
        1,
        {S.PENDING: 1},
        None,
    )
    assert await counted(environment_id=uuid.uuid4()) == (0, {}, None)

    # Tenant B sees none of it, even naming A's environment and host.
    for filters in ({}, {"environment_id": line}, {"host_id": arm}):
        theirs = await metrics.task_metrics(tenant_b.id, TaskMetricsQuery(**filters))
        assert theirs.total == 0
        assert all(count == 0 for _, count in theirs.state_counts)


_SEED_TENANT = """
WITH t AS (INSERT INTO roz.tenants (name) VALUES (%s) RETURNING id),
     e AS (INSERT INTO roz.environments (tenant_id, name)
           SELECT t.id, 'env-' || g FROM t, generate_series(1, 4) AS g RETURNING id),
     h AS (INSERT INTO roz.hosts (tenant_id, name, environment_id)
           SELECT t.id, 'host', (SELECT min(id::text)::uuid FROM e) FROM t RETURNING id)
SELECT (SELECT id FROM t), (SELECT array_agg(id ORDER BY id) FROM e), (SELECT id FROM h)
"""
# Realistic rows: a prompt of a few hundred bytes, every state, four environments, a quarter
# of the tasks on the one host.
_SEED_TASKS = """
INSERT INTO roz.tasks (tenant_id, environment_id, host_id, prompt, timeout, state,
                       create_time, update_time, start_time, run_deadline, end_time)
SELECT %(tenant)s, (%(envs)s::uuid[])[1 + g %% 4], CASE WHEN g %% 4 = 0 THEN %(host)s::uuid END,
       repeat('pick the red cube and place it in the bin; ', 5), '1 hour', s.state,
       c.t, c.t,
       CASE WHEN s.state IN ('running', 'succeeded', 'failed', 'timed_out')
            THEN c.t + interval '1 second' END,
       CASE WHEN s.state = 'running' THEN c.t + interval '1 hour' END,
       CASE WHEN s.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'safety_stopped')
            THEN c.t + interval '1 second' * (1 + g %% 100) END
  FROM generate_series(1, %(count)s) AS g,
       LATERAL (SELECT (ARRAY['pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled',
                              'timed_out', 'safety_stopped'])[1 + g %% 8] AS state) AS s,
       LATERAL (SELECT now() - interval '1 second' * g AS t) AS c
"""


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="roz-metrics-") as path:
        yield Path(path)


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Relation Name") == "tasks" else []
    for child in plan.get("Plans", ()):
        found += _scans(child)
    return found


async def test_metrics_of_100k_tasks_are_one_index_scan(
    new_database_url: NewDatabaseUrl, scratch_dir: Path
) -> None:
    """The tenant's whole history in one pass over an index that carries what is aggregated:
    never a table scan, never one scan per state; with each filter, its own index."""
    async with Database(database_url=await new_database_url(), data_dir=scratch_dir) as db:
        async with await AsyncConnection.connect(db.owner_dsn, autocommit=True) as owner:
            seeded = {}
            for name, count in (("big", 100_000), ("small", 1_000)):
                row = await (await owner.execute(_SEED_TENANT, (name,))).fetchone()
                assert row is not None
                tenant, envs, host = row
                await owner.execute(
                    _SEED_TASKS,
                    {"tenant": tenant, "envs": envs, "host": host, "count": count},
                )
                seeded[name] = (tenant, envs, host)
            await owner.execute("VACUUM ANALYZE roz.tasks")
        since = datetime.now(UTC) - timedelta(hours=3)
        for name, (tenant, envs, host) in seeded.items():
            for query, index in (
                (TaskMetricsQuery(), "tasks_page"),
                (TaskMetricsQuery(start_time=since), "tasks_page"),
                (TaskMetricsQuery(environment_id=envs[1]), "tasks_environment_page"),
                (TaskMetricsQuery(host_id=host), "tasks_host_page"),
                (
                    TaskMetricsQuery(
                        environment_id=envs[1], start_time=since, end_time=datetime.now(UTC)
                    ),
                    "tasks_environment_page",
                ),
            ):
                statement, params = metrics_query(query)
                async with tenant_transaction(db.pool, tenant) as conn:
                    row = await (
                        await conn.execute("EXPLAIN (FORMAT JSON) " + statement, params)
                    ).fetchone()
                assert row is not None
                document = row[0] if isinstance(row[0], list) else json.loads(row[0])
                scans = _scans(document[0]["Plan"])
                assert len(scans) == 1, (name, query, scans)
                assert scans[0]["Node Type"] == "Index Only Scan", (name, query, scans[0])
                assert scans[0]["Index Name"] == index, (name, query, scans[0])
            # And the numbers are those of the tenant's rows only.
            result = await MetricsRepository(db.pool).task_metrics(tenant, TaskMetricsQuery())
            expected = 100_000 if name == "big" else 1_000
            assert result.total == expected
            assert sum(count for _, count in result.state_counts) == expected
