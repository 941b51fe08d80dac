"""Tasks in the database: references, idempotency, transitions under races, history, the sweep."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
from psycopg import AsyncConnection, errors

from server.domain.environments import EnvironmentDraft
from server.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from server.domain.tasks import Task, TaskDraft, TaskState
from server.storage.database import Database, Pool
from server.storage.environments import EnvironmentRepository
from server.storage.errors import database_errors
from server.storage.hosts import HostRepository
from server.storage.sweeps import Sweeper
from server.storage.tasks import TaskRepository, time_out_tasks
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey, make_tenant

S = TaskState
DATABASE_WORDS = ("violates", "constraint", "tasks_", "ERROR", "DETAIL", "roz.")


@pytest.fixture
def tasks(database: Database) -> TaskRepository:
    return TaskRepository(database.pool)


@pytest.fixture
async def owner(database: Database) -> AsyncIterator[AsyncConnection[tuple[object, ...]]]:
    async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as conn:
        yield conn


async def _environment(
    environments: EnvironmentRepository, tenant: TenantWithKey, tools: tuple[str, ...] = ()
) -> uuid.UUID:
    created = await environments.create(
        tenant.id,
        EnvironmentDraft(name=f"env-{uuid.uuid4().hex[:8]}", allowed_tools=tools),
    )
    return created.id


async def _host(
    database: Database, tenant: TenantWithKey, environment: uuid.UUID | None
) -> uuid.UUID:
    """A host row as the hosts repository would write it (its own API is tested elsewhere)."""
    async with tenant_transaction(database.pool, tenant.id) as conn:
        row = await (
            await conn.execute(
                "INSERT INTO roz.hosts (tenant_id, name, environment_id) VALUES (%s, %s, %s)"
                " RETURNING id",
                (tenant.id, f"host-{uuid.uuid4().hex[:8]}", environment),
            )
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


async def _warm(database: Database, connections: int) -> None:
    """Opens `connections` pooled connections at once, so racing calls really run in parallel
    (a cold pool opens connections one by one, and the first call would finish alone)."""
    all_open = asyncio.Event()
    held: list[object] = []

    async def hold() -> None:
        async with database.pool.connection() as conn:
            held.append(conn)
            if len(held) == connections:
                all_open.set()
            await all_open.wait()

    await asyncio.wait_for(asyncio.gather(*(hold() for _ in range(connections))), timeout=30)


def _draft(environment: uuid.UUID, **fields: object) -> TaskDraft:
    return TaskDraft(prompt="pick the red cube", environment_id=environment, **fields)  # type: ignore[arg-type]


async def _run_to(
    tasks: TaskRepository, tenant: TenantWithKey, task: Task, *states: TaskState
) -> Task:
    for state in states:
        task = await tasks.transition(tenant.id, task.id, state, reason=f"to {state.name}")
    return task


async def test_create_and_get_with_history(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    environment = await _environment(environments, tenant_a, ("camera", "gripper"))
    host = await _host(database, tenant_a, environment)
    parent = await tasks.create(tenant_a.id, _draft(environment))
    actor = uuid.uuid4()
    created = await tasks.create(
        tenant_a.id,
        _draft(
            environment,
            host_id=str(host),
            timeout=timedelta(minutes=5),
            allowed_tools=("gripper",),
            parent_task_id=str(parent.id),
            labels={"zone": "cell-1"},
        ),
        actor=actor,
    )
    assert (created.tenant_id, created.environment_id, created.host_id) == (
        tenant_a.id,
        environment,
        host,
    )
    assert (created.state, created.result, created.timeout) == (S.PENDING, "", timedelta(minutes=5))
    assert (created.allowed_tools, created.parent_task_id) == (("gripper",), parent.id)
    assert dict(created.labels) == {"zone": "cell-1"}
    assert (created.start_time, created.end_time) == (None, None)
    assert [(t.from_state, t.to_state, t.actor) for t in created.transitions] == [
        (None, S.PENDING, actor)
    ]
    assert created.transitions[0].transition_time == created.create_time
    assert await tasks.get(tenant_a.id, created.id) == created
    # No tools named: the environment's tools, as they were at creation.
    assert parent.allowed_tools == ("camera", "gripper")
    assert parent.timeout == timedelta(hours=1)


async def test_references_must_be_the_tenants_own(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    mine = await _environment(environments, tenant_b, ("camera",))
    other_env = await _environment(environments, tenant_b)
    theirs = await _environment(environments, tenant_a, ("camera",))
    their_host = await _host(database, tenant_a, theirs)
    their_task = await tasks.create(tenant_a.id, _draft(theirs))
    host_elsewhere = await _host(database, tenant_b, other_env)
    host_nowhere = await _host(database, tenant_b, None)

    async def violations(draft: TaskDraft) -> list[str]:
        with pytest.raises(InvalidArgument) as raised:
            await tasks.create(tenant_b.id, draft)
        for word in DATABASE_WORDS:
            assert all(word not in v.description for v in raised.value.violations)
        return [v.field for v in raised.value.violations]

    assert await violations(_draft(theirs)) == ["task.environment_id"]
    assert await violations(_draft(uuid.uuid4())) == ["task.environment_id"]
    for host in (their_host, host_elsewhere, host_nowhere, uuid.uuid4()):
        assert await violations(_draft(mine, host_id=host)) == ["task.host_id"]
    assert await violations(_draft(mine, parent_task_id=their_task.id)) == ["task.parent_task_id"]
    assert await violations(_draft(mine, allowed_tools=("camera", "laser"))) == [
        "task.allowed_tools[1]"
    ]
    assert (await tasks.list(tenant_b.id)).items == ()
    assert await tasks.get(tenant_a.id, their_task.id) == their_task


async def test_another_tenants_task_is_not_found_and_untouched(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    theirs = await tasks.create(tenant_a.id, _draft(await _environment(environments, tenant_a)))
    with pytest.raises(NotFound) as raised:
        await tasks.get(tenant_b.id, theirs.id)
    assert raised.value.resource == "task"
    with pytest.raises(NotFound):
        await tasks.transition(tenant_b.id, theirs.id, S.CANCELLED)
    assert theirs.id not in {t.id for t in (await tasks.list(tenant_b.id)).items}
    assert (await tasks.list(tenant_b.id, environment_id=theirs.environment_id)).items == ()
    assert await tasks.get(tenant_a.id, theirs.id) == theirs


async def test_the_whole_life_of_a_task(
    tasks: TaskRepository, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    created = await tasks.create(tenant_a.id, _draft(await _environment(environments, tenant_a)))
    actor = uuid.uuid4()
    queued = await tasks.transition(tenant_a.id, created.id, S.QUEUED, actor=actor)
    assert (queued.state, queued.start_time, queued.end_time) == (S.QUEUED, None, None)
    running = await tasks.transition(tenant_a.id, created.id, S.RUNNING, reason="picked up")
    assert running.start_time is not None
    assert running.end_time is None
    assert running.result == "picked up"
    done = await tasks.transition(tenant_a.id, created.id, S.SUCCEEDED, reason="cube in bin")
    assert done.end_time is not None
    assert done.start_time == running.start_time
    assert done.end_time >= done.start_time
    assert (done.state, done.result) == (S.SUCCEEDED, "cube in bin")
    assert [(t.from_state, t.to_state, t.reason, t.actor) for t in done.transitions] == [
        (None, S.PENDING, "", None),
        (S.PENDING, S.QUEUED, "", actor),
        (S.QUEUED, S.RUNNING, "picked up", None),
        (S.RUNNING, S.SUCCEEDED, "cube in bin", None),
    ]
    times = [t.transition_time for t in done.transitions]
    assert times == sorted(times)
    assert times[2] == done.start_time
    assert times[3] == done.end_time == done.update_time
    assert await tasks.get(tenant_a.id, created.id) == done


async def test_illegal_transitions_change_nothing(
    tasks: TaskRepository, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    environment = await _environment(environments, tenant_a)
    running = await _run_to(
        tasks, tenant_a, await tasks.create(tenant_a.id, _draft(environment)), S.QUEUED, S.RUNNING
    )
    with pytest.raises(FailedPrecondition) as raised:
        await tasks.transition(tenant_a.id, running.id, S.QUEUED)
    assert (raised.value.reason, raised.value.metadata) == (
        "INVALID_TRANSITION",
        {"from": "RUNNING", "to": "QUEUED"},
    )
    for target in (None, S.TIMED_OUT):
        with pytest.raises(InvalidArgument):
            await tasks.transition(tenant_a.id, running.id, target)
    with pytest.raises(InvalidArgument):
        await tasks.transition(tenant_a.id, running.id, S.FAILED, reason="x" * 4097)
    assert await tasks.get(tenant_a.id, running.id) == running

    cancelled = await tasks.transition(tenant_a.id, running.id, S.CANCELLED)
    for target in TaskState:
        with pytest.raises((FailedPrecondition, InvalidArgument)):
            await tasks.transition(tenant_a.id, running.id, target)
    assert await tasks.get(tenant_a.id, running.id) == cancelled

    pending = await tasks.create(tenant_a.id, _draft(environment))
    stopped = await tasks.transition(tenant_a.id, pending.id, S.SAFETY_STOPPED, reason="e-stop")
    assert (stopped.start_time, stopped.end_time is not None) == (None, True)


@pytest.mark.parametrize("bad_id", ["nope", "", str(uuid.uuid4())])
async def test_a_malformed_or_unknown_id_is_not_found(
    tasks: TaskRepository, tenant_a: TenantWithKey, bad_id: str
) -> None:
    with pytest.raises(NotFound):
        await tasks.get(tenant_a.id, bad_id)
    with pytest.raises(NotFound):
        await tasks.transition(tenant_a.id, bad_id, S.QUEUED)


async def test_racing_transitions_have_one_winner(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    running = await _run_to(
        tasks,
        tenant_a,
        await tasks.create(tenant_a.id, _draft(await _environment(environments, tenant_a))),
        S.QUEUED,
        S.RUNNING,
    )
    targets = [S.SUCCEEDED, S.FAILED] * 5
    await _warm(database, len(targets))
    results = await asyncio.gather(
        *(tasks.transition(tenant_a.id, running.id, target) for target in targets),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Task)]
    assert len(winners) == 1
    assert all(isinstance(r, FailedPrecondition) for r in results if not isinstance(r, Task))
    final = await tasks.get(tenant_a.id, running.id)
    assert final.state is winners[0].state
    assert [t.to_state for t in final.transitions if t.to_state.terminal] == [final.state]


async def test_idempotent_creates(
    tasks: TaskRepository, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    environment = await _environment(environments, tenant_a)
    first = await tasks.create(tenant_a.id, _draft(environment), idempotency_key="order-1")
    again = await tasks.create(tenant_a.id, _draft(environment), idempotency_key="order-1")
    assert again == first
    # The replay is the task as it is now.
    moved = await tasks.transition(tenant_a.id, first.id, S.QUEUED)
    assert await tasks.create(tenant_a.id, _draft(environment), idempotency_key="order-1") == moved
    with pytest.raises(AlreadyExists) as raised:
        await tasks.create(
            tenant_a.id,
            TaskDraft(prompt="another", environment_id=environment),
            idempotency_key="order-1",
        )
    assert "order-1" in raised.value.message
    assert "tasks_" not in raised.value.message
    other = await tasks.create(tenant_a.id, _draft(environment), idempotency_key="order-2")
    unkeyed = [await tasks.create(tenant_a.id, _draft(environment)) for _ in range(2)]
    listed = {t.id for t in (await tasks.list(tenant_a.id, environment_id=environment)).items}
    assert listed == {first.id, other.id, *(t.id for t in unkeyed)}


async def test_keys_are_per_tenant(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    a = await tasks.create(
        tenant_a.id, _draft(await _environment(environments, tenant_a)), idempotency_key="k"
    )
    # The same key (even the same body but for the environment) in another tenant is unrelated.
    b = await tasks.create(
        tenant_b.id, _draft(await _environment(environments, tenant_b)), idempotency_key="k"
    )
    assert a.id != b.id


async def test_concurrent_creates_with_one_key_make_one_task(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    environment = await _environment(environments, tenant_a)
    await _warm(database, 8)
    results = await asyncio.gather(
        *(tasks.create(tenant_a.id, _draft(environment), idempotency_key="once") for _ in range(8))
    )
    assert len({task.id for task in results}) == 1
    assert len((await tasks.list(tenant_a.id, environment_id=environment)).items) == 1
    assert len(results[0].transitions) == 1


async def test_lists_filter_and_page(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    first_env = await _environment(environments, tenant_a)
    second_env = await _environment(environments, tenant_a)
    host = await _host(database, tenant_a, second_env)
    in_first = [await tasks.create(tenant_a.id, _draft(first_env)) for _ in range(5)]
    on_host = [await tasks.create(tenant_a.id, _draft(second_env, host_id=host)) for _ in range(3)]
    queued = [await tasks.transition(tenant_a.id, t.id, S.QUEUED) for t in in_first[:2]]

    async def walk(**filters: object) -> list[uuid.UUID]:
        seen: list[uuid.UUID] = []
        token = ""
        while True:
            page = await tasks.list(tenant_a.id, page_size=2, page_token=token, **filters)  # type: ignore[arg-type]
            assert len(page.items) <= 2
            assert all(t.transitions == () for t in page.items)
            seen.extend(t.id for t in page.items)
            token = page.next_page_token
            if not token:
                return seen

    assert await walk(environment_id=first_env) == [t.id for t in reversed(in_first)]
    assert await walk(host_id=host) == [t.id for t in reversed(on_host)]
    assert await walk(environment_id=second_env, host_id=host) == [t.id for t in reversed(on_host)]
    assert await walk(state=S.QUEUED, environment_id=first_env) == [t.id for t in reversed(queued)]
    assert await walk(environment_id=first_env, state=S.RUNNING) == []
    token = (await tasks.list(tenant_a.id, page_size=1, environment_id=first_env)).next_page_token
    with pytest.raises(InvalidArgument) as raised:
        await tasks.list(tenant_a.id, page_token=token, environment_id=second_env)
    assert [v.field for v in raised.value.violations] == ["page_token"]


async def test_rls_hides_and_refuses_other_tenants_rows(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    theirs = await tasks.create(tenant_a.id, _draft(await _environment(environments, tenant_a)))
    mine_env = await _environment(environments, tenant_b)
    async with tenant_transaction(database.pool, tenant_b.id) as conn:
        for table, column in (("tasks", "id"), ("task_transitions", "task_id")):
            # No tenant filter of ours: only row-level security stands in the way.
            seen = await (
                await conn.execute(
                    f"SELECT count(*) FROM roz.{table} WHERE {column} = %s", (theirs.id,)
                )
            ).fetchone()
            assert seen == (0,)
            tenants = await (
                await conn.execute(f"SELECT DISTINCT tenant_id FROM roz.{table}")
            ).fetchall()
            assert tenant_a.id not in {row[0] for row in tenants}
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.task_transitions (tenant_id, task_id, to_state)"
                " VALUES (%s, %s, 'failed')",
                (tenant_a.id, theirs.id),
            )
    # A composite foreign key: even with its own tenant id, B cannot hang a row on A's task.
    with pytest.raises(errors.ForeignKeyViolation):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.task_transitions (tenant_id, task_id, to_state)"
                " VALUES (%s, %s, 'failed')",
                (tenant_b.id, theirs.id),
            )
    with pytest.raises(errors.ForeignKeyViolation):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.tasks (tenant_id, environment_id, prompt, timeout)"
                " VALUES (%s, %s, 'p', '1 hour')",
                (tenant_b.id, theirs.environment_id),
            )
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        updated = await conn.execute(
            "UPDATE roz.tasks SET tenant_id = tenant_id WHERE environment_id = %s", (mine_env,)
        )
    assert updated.rowcount == 0
    assert await tasks.get(tenant_a.id, theirs.id) == theirs


async def test_history_is_append_only_for_everyone(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    owner: AsyncConnection[tuple[object, ...]],
    tenant_a: TenantWithKey,
) -> None:
    task = await _run_to(
        tasks,
        tenant_a,
        await tasks.create(tenant_a.id, _draft(await _environment(environments, tenant_a))),
        S.QUEUED,
    )
    statements = (
        "UPDATE roz.task_transitions SET reason = 'rewritten' WHERE task_id = %s",
        "DELETE FROM roz.task_transitions WHERE task_id = %s",
    )
    for statement in statements:
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            async with tenant_transaction(database.pool, tenant_a.id) as conn:
                await conn.execute(statement, (task.id,))
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            await owner.execute(statement, (task.id,))
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        await owner.execute("TRUNCATE roz.task_transitions")
    assert await tasks.get(tenant_a.id, task.id) == task


async def test_an_environment_with_unfinished_tasks_cannot_be_deleted(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    environment = await _environment(environments, tenant_a)
    task = await tasks.create(tenant_a.id, _draft(environment))
    with pytest.raises(FailedPrecondition) as raised:
        await environments.delete(tenant_a.id, environment)
    assert raised.value.metadata.get("referenced_by") == "tasks"
    assert await tasks.get(tenant_a.id, task.id) == task
    # Finished tasks go with their environment, history and all.
    await tasks.transition(tenant_a.id, task.id, S.CANCELLED)
    await environments.delete(tenant_a.id, environment)
    with pytest.raises(NotFound):
        await tasks.get(tenant_a.id, task.id)
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        left = await (
            await conn.execute(
                "SELECT count(*) FROM roz.task_transitions WHERE task_id = %s", (task.id,)
            )
        ).fetchone()
    assert left == (0,)


async def test_a_host_with_unfinished_tasks_cannot_be_deleted(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    environment = await _environment(environments, tenant_a)
    arm = await _host(database, tenant_a, environment)
    hosts = HostRepository(database.pool)
    task = await tasks.create(tenant_a.id, _draft(environment, host_id=arm))
    with pytest.raises(FailedPrecondition) as raised:
        await hosts.delete(tenant_a.id, arm)
    assert raised.value.metadata.get("referenced_by") == "tasks"
    assert (await tasks.get(tenant_a.id, task.id)).host_id == arm
    # A finished task keeps its record; only the host reference goes.
    done = await tasks.transition(tenant_a.id, task.id, S.CANCELLED)
    await hosts.delete(tenant_a.id, arm)
    after = await tasks.get(tenant_a.id, task.id)
    assert after.host_id is None
    assert after.transitions == done.transitions


async def test_constraint_violations_become_domain_errors(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    environment = await _environment(environments, tenant_a)
    insert = (
        "INSERT INTO roz.tasks (tenant_id, environment_id, prompt, timeout, state,"
        " idempotency_key, request_fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    )
    good = [tenant_a.id, environment, "p", timedelta(minutes=1), "pending", "dup", b"x" * 32]
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        await conn.execute(insert, good)
    cases: list[tuple[list[object], type[DomainError]]] = [
        (good, AlreadyExists),  # the idempotency key again
        ([*good[:4], "exploded", None, None], InvalidArgument),  # not a state
        ([*good[:3], timedelta(days=2), "pending", None, None], InvalidArgument),  # timeout
        ([*good[:4], "running", None, None], InvalidArgument),  # running without a start
        ([tenant_a.id, uuid.uuid4(), *good[2:5], None, None], InvalidArgument),  # no such env
    ]
    for params, expected in cases:
        with pytest.raises(DomainError) as raised, database_errors("task"):
            async with tenant_transaction(database.pool, tenant_a.id) as conn:
                await conn.execute(insert, params)
        assert isinstance(raised.value, expected), params
        assert isinstance(raised.value.__cause__, psycopg.Error)
        for word in DATABASE_WORDS:
            assert word not in str(raised.value)


async def _drain(database: Database) -> None:
    """Other tests' overdue tasks, swept first, so counts below are this test's own."""
    await time_out_tasks(database.pool)


async def test_the_sweep_times_out_overdue_running_tasks_once(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    await _drain(database)
    quick = timedelta(seconds=1)
    overdue = []
    for tenant in (tenant_a, tenant_b):
        environment = await _environment(environments, tenant)
        for _ in range(3):
            task = await tasks.create(tenant.id, _draft(environment, timeout=quick))
            overdue.append((tenant, await _run_to(tasks, tenant, task, S.QUEUED, S.RUNNING)))
    environment = await _environment(environments, tenant_a)
    not_running = await tasks.create(tenant_a.id, _draft(environment, timeout=quick))
    queued = await _run_to(
        tasks,
        tenant_a,
        await tasks.create(tenant_a.id, _draft(environment, timeout=quick)),
        S.QUEUED,
    )
    slow = await _run_to(
        tasks, tenant_a, await tasks.create(tenant_a.id, _draft(environment)), S.QUEUED, S.RUNNING
    )
    await asyncio.sleep(1.1)
    await _warm(database, 4)

    # Several processes sweeping at once: every overdue task is moved exactly once.
    counts = await asyncio.gather(*(time_out_tasks(database.pool, batch_size=2) for _ in range(4)))
    assert sum(counts) == len(overdue)
    assert await time_out_tasks(database.pool) == 0
    for tenant, task in overdue:
        swept = await tasks.get(tenant.id, task.id)
        assert (swept.state, swept.result) == (S.TIMED_OUT, "timeout")
        assert swept.end_time is not None
        assert task.start_time is not None
        assert swept.end_time - task.start_time >= quick
        last = swept.transitions[-1]
        assert (last.from_state, last.to_state, last.reason, last.actor) == (
            S.RUNNING,
            S.TIMED_OUT,
            "timeout",
            None,
        )
        assert [t.to_state for t in swept.transitions].count(S.TIMED_OUT) == 1
    for untouched in (not_running, queued, slow):
        assert await tasks.get(tenant_a.id, untouched.id) == untouched


async def test_a_client_racing_the_sweep_either_wins_or_loses_cleanly(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    tenant_a: TenantWithKey,
) -> None:
    await _drain(database)
    environment = await _environment(environments, tenant_a)
    racing = [
        await _run_to(
            tasks,
            tenant_a,
            await tasks.create(tenant_a.id, _draft(environment, timeout=timedelta(seconds=1))),
            S.QUEUED,
            S.RUNNING,
        )
        for _ in range(5)
    ]
    await asyncio.sleep(1.1)
    await _warm(database, len(racing) + 1)
    outcomes = await asyncio.gather(
        time_out_tasks(database.pool, batch_size=1),
        *(tasks.transition(tenant_a.id, t.id, S.SUCCEEDED) for t in racing),
        return_exceptions=True,
    )
    swept, *client = outcomes
    assert all(isinstance(r, Task | FailedPrecondition) for r in client)
    won_by_client = sum(isinstance(r, Task) for r in client)
    assert isinstance(swept, int)
    assert swept + won_by_client == len(racing)
    for task in racing:
        final = await tasks.get(tenant_a.id, task.id)
        assert len([t for t in final.transitions if t.to_state.terminal]) == 1


async def test_the_sweeper_runs_every_sweep_and_survives_a_failing_one(
    database: Database,
) -> None:
    calls: list[str] = []
    three_rounds = asyncio.Event()

    async def counting(pool: object) -> int:
        calls.append("counting")
        if calls.count("counting") >= 3:
            three_rounds.set()
        return 2

    async def failing(pool: object) -> int:
        calls.append("failing")
        raise RuntimeError("boom")

    sweeper = Sweeper(interval_seconds=0.05).add("failing", failing).add("counting", counting)
    assert sweeper.names == ("failing", "counting")
    with pytest.raises(ValueError, match="already"):
        sweeper.add("counting", counting)
    assert await sweeper.run_once(database.pool) == {"failing": -1, "counting": 2}
    # What /metrics reads: each sweep's runs, failures and rows moved.
    failing_stats, counting_stats = sweeper.stats["failing"], sweeper.stats["counting"]
    assert (failing_stats.runs, failing_stats.failures, failing_stats.moved) == (1, 1, 0)
    assert (counting_stats.runs, counting_stats.failures, counting_stats.moved) == (1, 0, 2)
    calls.clear()
    sweeper.start(database.pool)
    try:
        await asyncio.wait_for(three_rounds.wait(), timeout=10)
    finally:
        await sweeper.stop()
    stopped_at = len(calls)
    await asyncio.sleep(0.15)
    assert len(calls) == stopped_at
    with pytest.raises(ValueError, match="positive"):
        Sweeper(interval_seconds=0)


async def test_a_tenant_with_unfinished_tasks_can_still_be_deleted(
    tasks: TaskRepository,
    environments: EnvironmentRepository,
    database: Database,
    owner: AsyncConnection[tuple[object, ...]],
) -> None:
    """The owner removing a whole tenant is not refused by the guards of its environments
    and hosts: they protect running work from a client's delete, not from the tenant's end."""
    tenant = await make_tenant(database, "doomed")
    environment = await _environment(environments, tenant)
    arm = await _host(database, tenant, environment)
    task = await tasks.create(tenant.id, _draft(environment, host_id=arm))
    await _run_to(tasks, tenant, task, S.QUEUED, S.RUNNING)
    await owner.execute("DELETE FROM roz.tenants WHERE id = %s", (tenant.id,))
    for table in ("tasks", "task_transitions", "environments", "hosts"):
        row = await (
            await owner.execute(
                f"SELECT count(*) FROM roz.{table} WHERE tenant_id = %s", (tenant.id,)
            )
        ).fetchone()
        assert row == (0,), table


async def test_a_sweep_cut_off_by_the_database_is_retried_without_a_traceback(
    database: Database,
    owner: AsyncConnection[tuple[object, ...]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restart or a terminated backend mid-sweep is an outage, which availability logs once;
    the sweeper itself stays quiet about it, and the next round runs as usual."""
    started = asyncio.Event()

    async def sleeping(pool: Pool) -> int:
        async with pool.connection() as conn:
            started.set()
            await conn.execute("SELECT pg_sleep(10)")
        return 1

    async def terminate() -> None:
        await started.wait()
        while True:  # until the sweep's query is under way
            cursor = await owner.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'"
            )
            if await cursor.fetchone() == (1,):
                return
            await asyncio.sleep(0.01)

    sweeper = Sweeper(interval_seconds=3600).add("sleeping", sleeping)
    with caplog.at_level(logging.DEBUG, logger="server.storage.sweeps"):
        moved, _ = await asyncio.gather(sweeper.run_once(database.pool), terminate())
    assert moved == {"sleeping": -1}
    assert [r for r in caplog.records if r.name == "server.storage.sweeps"] == []
    async with database.pool.connection() as conn:  # the broken connection was not kept
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
