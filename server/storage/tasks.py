"""Task rows and their history: create (idempotent), get, list, transition, and the timeout sweep.

Every method runs in a tenant transaction and no statement filters by tenant: row-level
security does, so another tenant's task, environment, host or parent behaves exactly like a
missing one. A transition reads its task under FOR UPDATE, asks the domain's transition table,
then writes the new state and its history row in one statement, so two racing transitions of
one task are serialised and the second is judged against the state the first left.

A task with a host enters that host's delivery log (server/storage/robot_deliveries.py) in the
transaction that makes it QUEUED; a CANCELLED or SAFETY_STOPPED one that was in the log gets a
cancellation there too. A task without a host is not for any robot's link.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID, uuid4

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain.errors import (
    AlreadyExists,
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.domain.pagination import Page
from server.domain.robot_deliveries import DeliveryKind
from server.domain.robot_link import Judgement, judge_report
from server.domain.tasks import (
    ROBOT_REPORTS,
    TRANSITIONS,
    Task,
    TaskDraft,
    TaskFields,
    TaskState,
    TaskTransition,
    check_reason,
    check_target,
    check_transition,
    resolve_tools,
)
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.estop_checks import check_host, lock_host_for_start
from server.storage.listing import Listing
from server.storage.robot_deliveries import enqueue, enqueue_cancellation
from server.storage.tenancy import tenant_transaction

RESOURCE = "task"
_COLUMNS = (
    "id, tenant_id, prompt, environment_id, host_id, timeout, allowed_tools, parent_task_id,"
    " labels, state, result, create_time, update_time, start_time, end_time, deliver_time,"
    " acknowledge_time, output, trigger_id, trigger_fire_id"
)
# What the tenant holds that a new task refers to, in one round trip. FOR SHARE keeps the
# environment's tools and the host's environment as checked until the task is committed.
_REFERENCES = """
SELECT (SELECT e.allowed_tools FROM roz.environments AS e
         WHERE e.id = %(environment)s FOR SHARE) AS environment_tools,
       (SELECT ARRAY[h.environment_id] FROM roz.hosts AS h
         WHERE h.id = %(host)s FOR SHARE) AS host_placement,
       EXISTS (SELECT 1 FROM roz.tasks AS t WHERE t.id = %(parent)s) AS parent_exists
"""
# Tasks and their creation in the history, any number in one statement (a trigger's batch of
# fires; CreateTask is a batch of one); a key already taken (a concurrent create with the same
# key committed first) inserts nothing for that task and the caller replays the winner.
_INSERT = (
    "WITH created AS ("
    " INSERT INTO roz.tasks (id, tenant_id, environment_id, host_id, parent_task_id, prompt,"
    " timeout, allowed_tools, labels, idempotency_key, request_fingerprint, trigger_id,"
    " trigger_fire_id, trigger_depth)"
    " SELECT n.id, %(tenant)s, n.environment, n.host, n.parent, n.prompt, n.timeout,"
    " ARRAY(SELECT jsonb_array_elements_text(n.tools)), n.labels, n.key, n.fingerprint,"
    " n.trigger, n.fire, n.depth"
    " FROM unnest(%(id)s::uuid[], %(environment)s::uuid[], %(host)s::uuid[],"
    " %(parent)s::uuid[], %(prompt)s::text[], %(timeout)s::interval[], %(tools)s::jsonb[],"
    " %(labels)s::jsonb[], %(key)s::text[], %(fingerprint)s::bytea[], %(trigger)s::uuid[],"
    " %(fire)s::uuid[], %(depth)s::smallint[])"
    " AS n (id, environment, host, parent, prompt, timeout, tools, labels, key, fingerprint,"
    " trigger, fire, depth)"
    " ON CONFLICT ON CONSTRAINT tasks_tenant_id_idempotency_key_key DO NOTHING"
    " RETURNING " + _COLUMNS + "), recorded AS ("
    " INSERT INTO roz.task_transitions"
    " (tenant_id, task_id, from_state, to_state, reason, actor_key_id, transition_time)"
    " SELECT tenant_id, id, NULL, state, '', %(actor)s, create_time FROM created)"
    " SELECT " + _COLUMNS + " FROM created"
)
_BY_KEY = "SELECT " + _COLUMNS + ", request_fingerprint FROM roz.tasks WHERE idempotency_key = %s"
_GET = "SELECT " + _COLUMNS + " FROM roz.tasks WHERE id = %s"
_LOCK = "SELECT state, host_id FROM roz.tasks WHERE id = %s FOR UPDATE"
_HOST_OF = "SELECT host_id FROM roz.tasks WHERE id = %s"
# statement_timestamp(), not now(): this statement runs after the row lock was granted, so the
# times of one task's transitions follow the order in which they took the lock.
_MOVE = (
    "WITH moved AS ("
    " UPDATE roz.tasks SET state = %(to)s, result = %(reason)s,"
    " output = coalesce(%(output)s::jsonb, output),"
    " update_time = greatest(statement_timestamp(), create_time),"
    " start_time = CASE WHEN %(starts)s THEN statement_timestamp() ELSE start_time END,"
    " run_deadline = CASE WHEN %(starts)s THEN statement_timestamp() + timeout END,"
    " end_time = CASE WHEN %(ends)s"
    "  THEN greatest(statement_timestamp(), start_time, create_time) END"
    " WHERE id = %(id)s AND state = %(from)s"
    " RETURNING " + _COLUMNS + "), recorded AS ("
    " INSERT INTO roz.task_transitions"
    " (tenant_id, task_id, from_state, to_state, reason, actor_key_id, transition_time)"
    " SELECT tenant_id, id, %(from)s, %(to)s, %(reason)s, %(actor)s, update_time FROM moved)"
    " SELECT " + _COLUMNS + " FROM moved"
)
_HISTORY = (
    "SELECT from_state, to_state, reason, actor_key_id AS actor, transition_time"
    " FROM roz.task_transitions WHERE task_id = %s ORDER BY id"
)
_MANY = "SELECT " + _COLUMNS + " FROM roz.tasks WHERE id = ANY(%s)"
_HISTORIES = (
    "SELECT task_id, from_state, to_state, reason, actor_key_id AS actor, transition_time"
    " FROM roz.task_transitions WHERE task_id = ANY(%s) ORDER BY task_id, id"
)
_TIME_OUT = "SELECT roz.time_out_tasks(%s)"


def _task(*, state: str, allowed_tools: list[str], labels: dict[str, str], **columns: Any) -> Task:
    return Task(
        state=TaskState(state), allowed_tools=tuple(allowed_tools), labels=labels, **columns
    )


def _transition(*, from_state: str | None, to_state: str, **columns: Any) -> TaskTransition:
    return TaskTransition(
        from_state=None if from_state is None else TaskState(from_state),
        to_state=TaskState(to_state),
        **columns,
    )


def _keyed_task(*, request_fingerprint: bytes, **columns: Any) -> tuple[Task, bytes]:
    return _task(**columns), bytes(request_fingerprint)


def _missing(field: str, what: str) -> InvalidArgument:
    return InvalidArgument(
        "the task refers to things it may not use",
        [FieldViolation(f"task.{field}", f"there is no such {what}")],
    )


# Backstops for rows that vanish between the check and the insert, on the field they concern.
_CONSTRAINTS: ConstraintErrors = {
    "tasks_environment_fkey": lambda: _missing("environment_id", "environment"),
    "tasks_host_fkey": lambda: _missing("host_id", "host"),
    "tasks_parent_fkey": lambda: _missing("parent_task_id", "task"),
}

_LISTING = Listing("roz.tasks", _COLUMNS, _task, filters=("state", "environment_id", "host_id"))


class TaskRepository:
    """The tasks of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(
        self,
        tenant_id: UUID,
        draft: TaskDraft,
        *,
        actor: UUID | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """A new PENDING task, or with a known `idempotency_key` the task that key created.

        The same key with a request of another meaning is AlreadyExists. A replay returns the
        original task as it is now, even if its environment has changed since.
        """
        fields = draft.validate()
        with database_errors(RESOURCE, _CONSTRAINTS):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                return await create_task(
                    conn, tenant_id, fields, actor=actor, idempotency_key=idempotency_key
                )

    async def get(self, tenant_id: UUID, task_id: str | UUID) -> Task:
        """The task with its whole history, oldest first."""
        task_uuid = resource_id(task_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            task = await _one(conn, _GET, (task_uuid,))
            if task is None:
                raise NotFound(RESOURCE, str(task_uuid))
            return await _with_history(conn, task)

    async def list(
        self,
        tenant_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: TaskState | None = None,
        environment_id: UUID | None = None,
        host_id: UUID | None = None,
    ) -> Page[Task]:
        """Newest first, without history; the token only continues the same filters."""
        return await _LISTING.page(
            self._pool,
            tenant_id,
            page_size=page_size,
            page_token=page_token,
            filters={
                "state": None if state is None else state.value,
                "environment_id": environment_id,
                "host_id": host_id,
            },
        )

    async def transition(
        self,
        tenant_id: UUID,
        task_id: str | UUID,
        target: TaskState | None,
        *,
        reason: str = "",
        actor: UUID | None = None,
    ) -> Task:
        """Moves the task if the transition table allows it; returns it with its history."""
        task_uuid = resource_id(task_id, RESOURCE)
        check_target(target)
        check_reason(reason)
        with database_errors(RESOURCE):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                if target is TaskState.RUNNING:
                    await _hold_host_to_start(conn, task_uuid)
                row = await (await conn.execute(_LOCK, (task_uuid,))).fetchone()
                if row is None:
                    raise NotFound(RESOURCE, str(task_uuid))
                current = TaskState(row[0])
                target = check_transition(current, target)
                moved = await _one(
                    conn,
                    _MOVE,
                    {
                        "id": task_uuid,
                        "from": current.value,
                        "to": target.value,
                        "reason": reason,
                        "actor": actor,
                        "starts": target is TaskState.RUNNING,
                        "ends": target.terminal,
                        "output": None,
                    },
                )
                assert moved is not None, "the row is locked; its state cannot have changed"
                await _tell_robot(conn, moved)
                return await _with_history(conn, moved)

    async def report(
        self,
        tenant_id: UUID,
        host_id: UUID,
        task_id: str | UUID,
        reported: TaskState,
        *,
        reason: str = "",
        output: Mapping[str, Any] | None = None,
        actor: UUID | None,
    ) -> tuple[Judgement, Task]:
        """A robot's report on a task of its host: the move is made if the transition table
        allows it (with `output` kept on the task); otherwise nothing changes. Returns the
        verdict and the task as it is now. A task of another host (or none) is NotFound."""
        task_uuid = resource_id(task_id, RESOURCE)
        check_reason(reason)
        with database_errors(RESOURCE):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                if reported is TaskState.RUNNING:
                    await _hold_host_to_start(conn, task_uuid)
                row = await (await conn.execute(_LOCK, (task_uuid,))).fetchone()
                if row is None or row[1] != host_id:
                    raise NotFound(RESOURCE, str(task_uuid))
                current = TaskState(row[0])
                judgement = judge_report(current, reported, TRANSITIONS, ROBOT_REPORTS)
                if not judgement.applies:
                    found = await _one(conn, _GET, (task_uuid,))
                    assert found is not None
                    return judgement, await _with_history(conn, found)
                moved = await _one(
                    conn,
                    _MOVE,
                    {
                        "id": task_uuid,
                        "from": current.value,
                        "to": reported.value,
                        "reason": reason,
                        "actor": actor,
                        "starts": reported is TaskState.RUNNING,
                        "ends": reported.terminal,
                        "output": None if output is None else Jsonb(dict(output)),
                    },
                )
                assert moved is not None, "the row is locked; its state cannot have changed"
                await _tell_robot(conn, moved)
                return judgement, await _with_history(conn, moved)


@dataclass(frozen=True)
class TaskOrigin:
    """The trigger fire a task is created by: `task_id` is the id the fire already recorded,
    `depth` how deep in a chain of event triggers the new task is."""

    trigger_id: UUID
    fire_id: UUID
    task_id: UUID
    depth: int


@dataclass(frozen=True)
class TaskRequest:
    """One task to create: its validated fields, its idempotency key, the fire it is for."""

    fields: TaskFields
    idempotency_key: str | None = None
    origin: TaskOrigin | None = None


async def create_task(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    fields: TaskFields,
    *,
    actor: UUID | None = None,
    idempotency_key: str | None = None,
) -> Task:
    """CreateTask, in the caller's tenant transaction: a known key's task replayed, else the
    task created by `create_tasks`, with its history."""
    fingerprint = fields.fingerprint() if idempotency_key is not None else None
    if idempotency_key is not None:
        replayed = await _replay(conn, idempotency_key, fingerprint)
        if replayed is not None:
            return replayed
    (outcome,) = await create_tasks(
        conn, tenant_id, [TaskRequest(fields, idempotency_key)], actor=actor
    )
    if isinstance(outcome, DomainError):
        raise outcome
    if outcome is None:
        assert idempotency_key is not None
        replayed = await _replay(conn, idempotency_key, fingerprint)
        assert replayed is not None, "a conflicting key is visible once committed"
        return replayed
    return await _with_history(conn, outcome)


async def create_tasks(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    requests: Sequence[TaskRequest],
    *,
    actor: UUID | None = None,
) -> list[Task | DomainError | None]:
    """The one way tasks are created, in the caller's tenant transaction: each request's
    references checked against the tenant's rows (once per distinct environment, host, parent
    and tools), its host's e-stop respected, then every task that passed inserted in one
    statement. Per request, in order: the task (without its history), the refusal, or None when
    its idempotency key was taken meanwhile.

    Refusals are found before anything is written, so the caller may record them and carry on
    in the same transaction.
    """
    outcomes: list[Task | DomainError | None] = [None] * len(requests)
    checked: dict[tuple[Any, ...], tuple[str, ...] | DomainError] = {}
    passed: list[tuple[int, TaskRequest, tuple[str, ...], UUID]] = []
    for index, request in enumerate(requests):
        fields = request.fields
        group = (fields.environment_id, fields.host_id, fields.parent_task_id, fields.allowed_tools)
        if group not in checked:
            try:
                tools = await _checked_tools(conn, fields)
                if fields.host_id is not None:
                    await check_host(conn, fields.host_id, "new tasks")
                checked[group] = tools
            except DomainError as exc:
                checked[group] = exc
        verdict = checked[group]
        if isinstance(verdict, DomainError):
            outcomes[index] = verdict
            continue
        task_id = request.origin.task_id if request.origin is not None else uuid4()
        passed.append((index, request, verdict, task_id))
    if not passed:
        return outcomes
    created = await _insert(conn, tenant_id, passed, actor)
    for index, _request, _tools, task_id in passed:
        outcomes[index] = created.get(task_id)
    return outcomes


async def time_out_tasks(pool: Pool, batch_size: int = 500) -> int:
    """The sweep: every RUNNING task past its deadline, in every tenant, becomes TIMED_OUT.

    Each batch is one statement (its own transaction) of roz.time_out_tasks, which skips rows
    another process is moving; returns how many tasks this call moved.
    """
    moved = 0
    while True:
        async with pool.connection() as conn:
            row = await (await conn.execute(_TIME_OUT, (batch_size,))).fetchone()
        assert row is not None
        moved += int(row[0])
        if row[0] < batch_size:
            return moved


# Moves that stop work already handed to a robot.
_STOPS = frozenset({TaskState.CANCELLED, TaskState.SAFETY_STOPPED})


async def _hold_host_to_start(conn: AsyncConnection[TupleRow], task_id: UUID) -> None:
    """Before a task moves to RUNNING: its host (if it has one) held against an e-stop, and
    the move refused while the host is stopped (server/storage/estop_checks.py)."""
    row = await (await conn.execute(_HOST_OF, (task_id,))).fetchone()
    if row is not None and row[0] is not None:
        await lock_host_for_start(conn, row[0], "tasks starting")


async def stop_tasks(
    conn: AsyncConnection[TupleRow],
    stopped: Sequence[tuple[UUID, UUID, TaskState, str]],
    actor: UUID | None,
) -> None:
    """An e-stop's engage, in its transaction: each (task, host, state, reason), RUNNING or
    QUEUED and sent, locked by the caller, becomes SAFETY_STOPPED with the reason, and its robot
    is sent a cancellation."""
    for task_id, _host_id, current, reason in stopped:
        check_transition(current, TaskState.SAFETY_STOPPED)
        moved = await _one(
            conn,
            _MOVE,
            {
                "id": task_id,
                "from": current.value,
                "to": TaskState.SAFETY_STOPPED.value,
                "reason": reason,
                "actor": actor,
                "starts": False,
                "ends": True,
                "output": None,
            },
        )
        assert moved is not None, "the caller holds the row"
        await _tell_robot(conn, moved)


async def _tell_robot(conn: AsyncConnection[TupleRow], task: Task) -> None:
    """Puts what the move means for the task's robot in its delivery log, in the same
    transaction."""
    if task.host_id is None:
        return
    if task.state is TaskState.QUEUED:
        await enqueue(conn, task.host_id, DeliveryKind.TASK, task.id)
    elif task.state in _STOPS:
        await enqueue_cancellation(conn, task.host_id, DeliveryKind.TASK, task.id)


async def _checked_tools(conn: AsyncConnection[TupleRow], fields: TaskFields) -> tuple[str, ...]:
    cursor = await conn.execute(
        _REFERENCES,
        {
            "environment": fields.environment_id,
            "host": fields.host_id,
            "parent": fields.parent_task_id,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    environment_tools, host_placement, parent_exists = row
    return resolve_tools(
        fields,
        environment_tools=environment_tools,
        host_exists=host_placement is not None,
        host_environment=host_placement[0] if host_placement else None,
        parent_exists=bool(parent_exists),
    )


async def _insert(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    passed: Sequence[tuple[int, TaskRequest, tuple[str, ...], UUID]],
    actor: UUID | None,
) -> dict[UUID, Task]:
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "id",
            "environment",
            "host",
            "parent",
            "prompt",
            "timeout",
            "tools",
            "labels",
            "key",
            "fingerprint",
            "trigger",
            "fire",
            "depth",
        )
    }
    for _index, request, tools, task_id in passed:
        fields, origin, key = request.fields, request.origin, request.idempotency_key
        columns["id"].append(task_id)
        columns["environment"].append(fields.environment_id)
        columns["host"].append(fields.host_id)
        columns["parent"].append(fields.parent_task_id)
        columns["prompt"].append(fields.prompt)
        columns["timeout"].append(fields.timeout)
        columns["tools"].append(Jsonb(list(tools)))
        columns["labels"].append(Jsonb(dict(fields.labels)))
        columns["key"].append(key)
        columns["fingerprint"].append(None if key is None else fields.fingerprint())
        columns["trigger"].append(None if origin is None else origin.trigger_id)
        columns["fire"].append(None if origin is None else origin.fire_id)
        columns["depth"].append(0 if origin is None else origin.depth)
    async with conn.cursor(row_factory=kwargs_row(_task)) as cursor:
        await cursor.execute(_INSERT, {**columns, "tenant": tenant_id, "actor": actor})
        return {task.id: task for task in await cursor.fetchall()}


async def _replay(
    conn: AsyncConnection[TupleRow], idempotency_key: str, fingerprint: bytes | None
) -> Task | None:
    async with conn.cursor(row_factory=kwargs_row(_keyed_task)) as cursor:
        await cursor.execute(_BY_KEY, (idempotency_key,))
        found = await cursor.fetchone()
    if found is None:
        return None
    task, stored = found
    if stored != fingerprint:
        raise AlreadyExists(
            f"idempotency key {idempotency_key!r} was already used for a different task",
            resource=RESOURCE,
        )
    return await _with_history(conn, task)


async def tasks_by_id(
    conn: AsyncConnection[TupleRow], task_ids: Sequence[UUID]
) -> dict[UUID, Task]:
    """In the caller's tenant transaction: the tasks with these ids that exist, by id, each
    with its history (two queries, however many)."""
    async with conn.cursor(row_factory=kwargs_row(_task)) as cursor:
        await cursor.execute(_MANY, (list(task_ids),))
        tasks = await cursor.fetchall()
    history: dict[UUID, list[TaskTransition]] = {task.id: [] for task in tasks}
    async with conn.cursor(row_factory=kwargs_row(_owned_transition)) as cursor:
        await cursor.execute(_HISTORIES, (list(history),))
        for task_id, transition in await cursor.fetchall():
            history[task_id].append(transition)
    return {task.id: replace(task, transitions=tuple(history[task.id])) for task in tasks}


def _owned_transition(*, task_id: UUID, **columns: Any) -> tuple[UUID, TaskTransition]:
    return task_id, _transition(**columns)


async def _with_history(conn: AsyncConnection[TupleRow], task: Task) -> Task:
    async with conn.cursor(row_factory=kwargs_row(_transition)) as cursor:
        await cursor.execute(_HISTORY, (task.id,))
        history = await cursor.fetchall()
    return replace(task, transitions=tuple(history))


async def _one(conn: AsyncConnection[TupleRow], query: str, params: Any) -> Task | None:
    async with conn.cursor(row_factory=kwargs_row(_task)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()
