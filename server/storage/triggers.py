"""Trigger rows, their webhook secrets and fire ledger, and the fires themselves: schedules due,
events from the outbox, signed webhook deliveries.

Every method runs in a tenant transaction under row-level security; the only cross-tenant reads
are the definer functions of migration 0015 (which tenants have triggers due or events waiting,
and what an unsigned delivery may learn before its signature is checked).

Exactly once: a fire is a row of roz.trigger_fires, unique per (trigger, dedup key), inserted in
the transaction that creates its task through the same path as CreateTask
(server/storage/tasks.py `create_task`). Due schedule triggers are claimed FOR UPDATE SKIP
LOCKED, so processes share the work without waiting on each other; outbox events likewise, and
are deleted in the transaction that fires them. A process that dies mid-fire rolls back whole.
A task the template cannot make (the host e-stopped, say) leaves a FAILED fire, not a retry.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, kwargs_row

from server.domain.errors import DomainError, FieldViolation, InvalidArgument, NotFound
from server.domain.pagination import Page
from server.domain.schedules import CatchUp, MisfirePolicy, Schedule, catch_up
from server.domain.tasks import Task, TaskDraft, TaskFields
from server.domain.triggers import (
    MAX_TRIGGER_DEPTH,
    EventCondition,
    EventType,
    FireOutcome,
    FireSource,
    Trigger,
    TriggerEvent,
    TriggerFields,
    TriggerFire,
    TriggerKind,
    WebhookDelivery,
    new_webhook_secret,
)
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.listing import Listing
from server.storage.tasks import TaskOrigin, TaskRequest, create_tasks
from server.storage.tenancy import tenant_transaction

RESOURCE = "trigger"
# NOTIFY payloads: wake the schedulers (a trigger was created or changed), and the dispatchers
# (an event was written; the payload is its tenant).
CHANNEL = "roz_triggers"
EVENTS_CHANNEL = "roz_trigger_events"
BATCH_SIZE = 50
# Fires this process recorded, by (source, outcome), since it started: read by the metrics when
# scraped. Counted once their transaction has committed, so a rolled-back batch counts nothing.
FIRES_RECORDED: Counter[tuple[str, str]] = Counter()


def _count(fires: Sequence[TriggerFire | None]) -> None:
    FIRES_RECORDED.update((f.source.value, f.outcome.value) for f in fires if f is not None)


_COLUMNS = (
    "id, tenant_id, name, environment_id, host_id, task_prompt, task_timeout, enabled, kind,"
    " cron, time_zone, misfire_policy, catchup_window, max_catchup_runs, next_fire_time,"
    " event_type, event_states, event_host_id, create_time, update_time,"
    " (SELECT max(f.create_time) FROM roz.trigger_fires AS f"
    "   WHERE f.trigger_id = roz.triggers.id AND f.outcome = 'created') AS last_fire_time,"
    " (SELECT min(s.expire_time) FROM roz.trigger_webhook_secrets AS s"
    "   WHERE s.trigger_id = roz.triggers.id AND s.expire_time > now())"
    " AS previous_secret_expire_time"
)
_FIRE_COLUMNS = (
    "id, trigger_id, source, outcome, create_time, scheduled_time, task_id, error, webhook_id,"
    " event_type, event_subject_id, event_state, missed_count, first_missed_time,"
    " last_missed_time"
)
_INSERT = (
    "INSERT INTO roz.triggers (tenant_id, name, environment_id, host_id, task_prompt,"
    " task_timeout, enabled, kind, cron, time_zone, misfire_policy, catchup_window,"
    " max_catchup_runs, next_fire_time, event_type, event_states, event_host_id)"
    " VALUES (%(tenant)s, %(name)s, %(environment)s, %(host)s, %(prompt)s, %(timeout)s,"
    " %(enabled)s, %(kind)s, %(cron)s, %(zone)s, %(policy)s, %(window)s, %(runs)s, %(next)s,"
    " %(event_type)s, %(event_states)s::text[], %(event_host)s)"
    " RETURNING " + _COLUMNS
)
_UPDATE = (
    "UPDATE roz.triggers SET name = %(name)s, environment_id = %(environment)s,"
    " host_id = %(host)s, task_prompt = %(prompt)s, task_timeout = %(timeout)s,"
    " enabled = %(enabled)s, cron = %(cron)s, time_zone = %(zone)s,"
    " misfire_policy = %(policy)s, catchup_window = %(window)s, max_catchup_runs = %(runs)s,"
    " next_fire_time = CASE WHEN %(replan)s THEN %(next)s ELSE next_fire_time END,"
    " event_type = %(event_type)s, event_states = %(event_states)s::text[],"
    " event_host_id = %(event_host)s, update_time = greatest(now(), create_time)"
    " WHERE id = %(id)s RETURNING " + _COLUMNS
)
_GET = "SELECT " + _COLUMNS + " FROM roz.triggers WHERE id = %s"
_LOCK = "SELECT " + _COLUMNS + " FROM roz.triggers WHERE id = %s FOR UPDATE"
_DELETE = "DELETE FROM roz.triggers WHERE id = %s RETURNING id"
_WAKE = "SELECT pg_notify('" + CHANNEL + "', '')"
# The environment's existence and the host's placement, in one round trip, held until commit.
_REFERENCES = """
SELECT EXISTS (SELECT 1 FROM roz.environments AS e WHERE e.id = %(environment)s FOR SHARE),
       (SELECT ARRAY[h.environment_id] FROM roz.hosts AS h WHERE h.id = %(host)s FOR SHARE),
       EXISTS (SELECT 1 FROM roz.hosts AS h WHERE h.id = %(event_host)s FOR SHARE)
"""
_ADD_SIGNING_KEY = (
    "INSERT INTO roz.trigger_webhook_secrets (tenant_id, trigger_id, secret) VALUES (%s, %s, %s)"
)
# A rotation: the current secret expires after the overlap, older ones at once.
_RETIRE_SECRETS = (
    "UPDATE roz.trigger_webhook_secrets SET expire_time = CASE"
    " WHEN expire_time IS NULL THEN %(until)s ELSE least(expire_time, %(now)s) END"
    " WHERE trigger_id = %(id)s AND (expire_time IS NULL OR expire_time > %(now)s)"
)
_PURGE_SECRETS = (
    "DELETE FROM roz.trigger_webhook_secrets WHERE trigger_id = %s AND expire_time <= %s"
)
_SCHEDULE = "SELECT due_tenants, next_fire_time FROM roz.trigger_schedule(%s)"
_CLAIM_DUE = (
    "SELECT " + _COLUMNS + " FROM roz.triggers WHERE next_fire_time <= %s"
    " ORDER BY next_fire_time LIMIT %s FOR UPDATE SKIP LOCKED"
)
# Every claimed trigger of a batch to its next time, in one statement.
_ADVANCE = (
    "UPDATE roz.triggers AS t SET next_fire_time = a.next"
    " FROM unnest(%s::uuid[], %s::timestamptz[]) AS a (id, next) WHERE t.id = a.id"
)
# A batch of fires, each inserted unless its (trigger, dedup key) has fired before.
_RECORD_FIRES = (
    "INSERT INTO roz.trigger_fires (id, tenant_id, trigger_id, source, outcome, dedup_key,"
    " scheduled_time, task_id, error, webhook_id, event_type, event_subject_id, event_state,"
    " missed_count, first_missed_time, last_missed_time, create_time)"
    " SELECT f.id, %(tenant)s, f.trigger, f.source, f.outcome, f.key, f.scheduled, f.task,"
    " f.error, f.webhook, f.event_type, f.subject, f.state, f.missed, f.first, f.last, %(at)s"
    " FROM unnest(%(id)s::uuid[], %(trigger)s::uuid[], %(source)s::text[], %(outcome)s::text[],"
    " %(key)s::text[], %(scheduled)s::timestamptz[], %(task)s::uuid[], %(error)s::text[],"
    " %(webhook)s::text[], %(event_type)s::text[], %(subject)s::uuid[], %(state)s::text[],"
    " %(missed)s::integer[], %(first)s::timestamptz[], %(last)s::timestamptz[])"
    " AS f (id, trigger, source, outcome, key, scheduled, task, error, webhook, event_type,"
    " subject, state, missed, first, last)"
    " ON CONFLICT ON CONSTRAINT trigger_fires_once DO NOTHING RETURNING " + _FIRE_COLUMNS
)
_FAIL_FIRES = (
    "UPDATE roz.trigger_fires AS f SET outcome = 'failed', task_id = NULL, error = r.error"
    " FROM unnest(%s::uuid[], %s::text[]) AS r (id, error) WHERE f.id = r.id"
    " RETURNING " + ", ".join("f." + c.strip() for c in _FIRE_COLUMNS.split(","))
)
_FIRE_BY_KEY = (
    "SELECT " + _FIRE_COLUMNS + " FROM roz.trigger_fires WHERE trigger_id = %s AND dedup_key = %s"
)
_EVENT_TENANTS = "SELECT roz.trigger_event_tenants()"
_CLAIM_EVENTS = (
    "SELECT id, tenant_id, type, subject_id, state, host_id, depth FROM roz.trigger_events"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
_EVENT_TRIGGERS = (
    "SELECT " + _COLUMNS + " FROM roz.triggers WHERE event_type = ANY(%s) AND enabled"
    " ORDER BY create_time, id"
)
_DONE_EVENTS = "DELETE FROM roz.trigger_events WHERE id = ANY(%s)"
_WEBHOOK_TRIGGER = "SELECT tenant_id, enabled, secrets FROM roz.webhook_trigger(%s, %s)"
_ERROR_LENGTH = 1024


def _trigger(
    *,
    kind: str,
    cron: str | None,
    time_zone: str | None,
    misfire_policy: str | None,
    catchup_window: timedelta | None,
    max_catchup_runs: int | None,
    event_type: str | None,
    event_states: list[str],
    event_host_id: UUID | None,
    **columns: Any,
) -> Trigger:
    schedule = None
    if cron is not None:
        assert time_zone is not None
        assert misfire_policy is not None
        assert catchup_window is not None
        assert max_catchup_runs is not None
        schedule = Schedule(
            cron, time_zone, MisfirePolicy(misfire_policy), catchup_window, max_catchup_runs
        )
    event = None
    if event_type is not None:
        event = EventCondition(EventType(event_type), tuple(event_states), event_host_id)
    return Trigger(kind=TriggerKind(kind), schedule=schedule, event=event, **columns)


def _fire_row(*, source: str, outcome: str, **columns: Any) -> TriggerFire:
    return TriggerFire(source=FireSource(source), outcome=FireOutcome(outcome), **columns)


def _missing(field: str, what: str) -> InvalidArgument:
    return InvalidArgument(
        "the trigger refers to things it may not use",
        [FieldViolation(f"trigger.{field}", f"there is no such {what}")],
    )


_CONSTRAINTS: ConstraintErrors = {
    "triggers_environment_fkey": lambda: _missing("environment_id", "environment"),
    "triggers_host_fkey": lambda: _missing("host_id", "host"),
    "triggers_event_host_fkey": lambda: _missing("event.host_id", "host"),
}
_LISTING = Listing("roz.triggers", _COLUMNS, _trigger)
_FIRES = Listing("roz.trigger_fires", _FIRE_COLUMNS, _fire_row, filters=("trigger_id",))


@dataclass(frozen=True)
class WebhookTarget:
    """What a delivery learns of its trigger before the signature is checked."""

    tenant_id: UUID
    enabled: bool
    secrets: tuple[str, ...]


class TriggerRepository:
    """The triggers of each tenant, as the request role sees them, and their fires."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: UUID, fields: TriggerFields, now: datetime) -> Trigger:
        """A new trigger; a webhook trigger comes back with its secret, this once."""
        with database_errors(RESOURCE, _CONSTRAINTS):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                await _check_references(conn, fields)
                trigger = await _one(
                    conn,
                    _INSERT,
                    _values(fields) | {"tenant": tenant_id, "next": _next(fields, now)},
                )
                assert trigger is not None
                if fields.kind is TriggerKind.WEBHOOK:
                    secret = new_webhook_secret()
                    await conn.execute(_ADD_SIGNING_KEY, (tenant_id, trigger.id, secret))
                    trigger = replace(trigger, webhook_secret=secret)
                if trigger.next_fire_time is not None:
                    await conn.execute(_WAKE)
                return trigger

    async def get(self, tenant_id: UUID, trigger_id: str | UUID) -> Trigger:
        trigger_uuid = resource_id(trigger_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            trigger = await _one(conn, _GET, (trigger_uuid,))
        if trigger is None:
            raise NotFound(RESOURCE, str(trigger_uuid))
        return trigger

    async def list(
        self, tenant_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[Trigger]:
        return await _LISTING.page(
            self._pool, tenant_id, page_size=page_size, page_token=page_token
        )

    async def update(
        self,
        tenant_id: UUID,
        trigger_id: str | UUID,
        change: Callable[[Trigger], TriggerFields],
        now: datetime,
    ) -> Trigger:
        """`change(current) -> TriggerFields` says what the trigger becomes; it runs with the row
        locked. A changed schedule, or enabling, plans the next fire from `now`."""
        trigger_uuid = resource_id(trigger_id, RESOURCE)
        with database_errors(RESOURCE, _CONSTRAINTS):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                current = await _one(conn, _LOCK, (trigger_uuid,))
                if current is None:
                    raise NotFound(RESOURCE, str(trigger_uuid))
                fields = change(current)
                if fields.kind is not current.kind:
                    raise InvalidArgument(
                        "a trigger's kind never changes",
                        [
                            FieldViolation(
                                "trigger",
                                f"this is a {current.kind.value} trigger; create a new trigger"
                                f" for a {fields.kind.value} condition",
                            )
                        ],
                    )
                await _check_references(conn, fields)
                replan = fields.schedule != current.schedule or fields.enabled != current.enabled
                updated = await _one(
                    conn,
                    _UPDATE,
                    _values(fields)
                    | {"id": trigger_uuid, "replan": replan, "next": _next(fields, now)},
                )
                assert updated is not None
                if replan:
                    await conn.execute(_WAKE)
                return updated

    async def delete(self, tenant_id: UUID, trigger_id: str | UUID) -> None:
        trigger_uuid = resource_id(trigger_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (await conn.execute(_DELETE, (trigger_uuid,))).fetchone()
        if row is None:
            raise NotFound(RESOURCE, str(trigger_uuid))

    async def fires(
        self, tenant_id: UUID, trigger_id: str | UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[TriggerFire]:
        """Newest first; another tenant's trigger (or none) is NotFound."""
        trigger = await self.get(tenant_id, trigger_id)
        return await _FIRES.page(
            self._pool,
            tenant_id,
            page_size=page_size,
            page_token=page_token,
            filters={"trigger_id": trigger.id},
        )

    async def rotate_secret(
        self, tenant_id: UUID, trigger_id: str | UUID, overlap: timedelta, now: datetime
    ) -> Trigger:
        """A new current secret, returned this once; the previous one verifies until
        now + overlap; any older one stops at once."""
        trigger_uuid = resource_id(trigger_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            current = await _one(conn, _LOCK, (trigger_uuid,))
            if current is None:
                raise NotFound(RESOURCE, str(trigger_uuid))
            if current.kind is not TriggerKind.WEBHOOK:
                raise InvalidArgument(
                    "only a webhook trigger has a signing secret",
                    [
                        FieldViolation(
                            "id", f"trigger {trigger_uuid} is a {current.kind.value} trigger"
                        )
                    ],
                )
            await conn.execute(_PURGE_SECRETS, (trigger_uuid, now))
            await conn.execute(
                _RETIRE_SECRETS, {"id": trigger_uuid, "until": now + overlap, "now": now}
            )
            secret = new_webhook_secret()
            await conn.execute(_ADD_SIGNING_KEY, (tenant_id, trigger_uuid, secret))
            rotated = await _one(conn, _GET, (trigger_uuid,))
        assert rotated is not None
        return replace(rotated, webhook_secret=secret)

    async def webhook_target(self, trigger_id: str | UUID, now: datetime) -> WebhookTarget:
        """Before any signature is checked: the webhook trigger's tenant and the secrets that
        verify at `now`. Any other trigger, or none, is NotFound."""
        trigger_uuid = resource_id(trigger_id, RESOURCE)
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_WEBHOOK_TRIGGER, (trigger_uuid, now))).fetchone()
        if row is None:
            raise NotFound(RESOURCE, str(trigger_uuid))
        return WebhookTarget(row[0], bool(row[1]), tuple(row[2]))

    async def deliver(
        self, tenant_id: UUID, trigger_id: UUID, delivery: WebhookDelivery, now: datetime
    ) -> tuple[TriggerFire, bool]:
        """The fire of a verified delivery, and whether its webhook-id had fired before (then
        nothing new happens and the first fire is returned)."""
        with database_errors(RESOURCE):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                # No row lock: the fire's foreign key holds the trigger against deletion.
                trigger = await _one(conn, _GET, (trigger_id,))
                if trigger is None or trigger.kind is not TriggerKind.WEBHOOK:
                    raise NotFound(RESOURCE, str(trigger_id))
                key = f"webhook:{delivery.id}"
                (fired,) = await _fire(
                    conn,
                    tenant_id,
                    [
                        Shot(
                            trigger,
                            FireSource.WEBHOOK,
                            FireOutcome.CREATED,
                            key,
                            webhook=delivery.id,
                        )
                    ],
                    now,
                )
                if fired is None:
                    async with conn.cursor(row_factory=kwargs_row(_fire_row)) as cursor:
                        await cursor.execute(_FIRE_BY_KEY, (trigger_id, key))
                        first = await cursor.fetchone()
                    assert first is not None, "a conflicting fire is visible once committed"
                    return first, True
        _count([fired])
        return fired, False


async def schedule_overview(pool: Pool, now: datetime) -> tuple[list[UUID], datetime | None]:
    """Across tenants: those with a schedule trigger due at `now`, and the earliest next fire
    time of all (for the scheduler to sleep until)."""
    async with pool.connection() as conn:
        row = await (await conn.execute(_SCHEDULE, (now,))).fetchone()
    assert row is not None
    return list(row[0]), row[1]


async def fire_due(
    pool: Pool,
    tenant_id: UUID,
    now: datetime,
    *,
    clock: Callable[[], datetime] | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """One batch of the tenant's schedule triggers due at `now`, claimed SKIP LOCKED: each fires
    what its misfire policy says and moves to its next time. Each fire records the `clock`'s
    time as it is written (`now` without one). Returns how many triggers it claimed (a full
    batch: call again)."""
    async with tenant_transaction(pool, tenant_id) as conn:
        async with conn.cursor(row_factory=kwargs_row(_trigger)) as cursor:
            await cursor.execute(_CLAIM_DUE, (now, batch_size))
            due = await cursor.fetchall()
        if not due:
            return 0
        shots: list[Shot] = []
        plans: dict[tuple[Schedule, datetime], CatchUp] = {}
        for trigger in due:
            assert trigger.schedule is not None
            assert trigger.next_fire_time is not None
            plan_key = (trigger.schedule, trigger.next_fire_time)
            if plan_key not in plans:  # a burst of triggers often shares one schedule
                plans[plan_key] = catch_up(trigger.schedule, trigger.next_fire_time, now)
            plan = plans[plan_key]
            if plan.missed:
                assert plan.first_missed is not None
                assert plan.last_missed is not None
                span = f"{plan.first_missed.isoformat()}/{plan.last_missed.isoformat()}"
                shots.append(
                    Shot(
                        trigger,
                        FireSource.SCHEDULE,
                        FireOutcome.MISSED,
                        f"missed:{span}",
                        missed=plan.missed,
                        first=plan.first_missed,
                        last=plan.last_missed,
                    )
                )
            shots += [
                Shot(
                    trigger,
                    FireSource.SCHEDULE,
                    FireOutcome.CREATED,
                    f"schedule:{scheduled.isoformat()}",
                    scheduled=scheduled,
                )
                for scheduled in plan.due
            ]
        fired = await _fire(conn, tenant_id, shots, now if clock is None else clock())
        next_times = []
        for trigger in due:
            assert trigger.schedule is not None
            assert trigger.next_fire_time is not None
            next_times.append(plans[(trigger.schedule, trigger.next_fire_time)].next_fire_time)
        await conn.execute(_ADVANCE, ([trigger.id for trigger in due], next_times))
    _count(fired)
    return len(due)


async def event_tenants(pool: Pool) -> list[UUID]:
    async with pool.connection() as conn:
        rows = await (await conn.execute(_EVENT_TENANTS)).fetchall()
    return [row[0] for row in rows]


async def dispatch_events(
    pool: Pool, tenant_id: UUID, now: datetime, batch_size: int = BATCH_SIZE
) -> int:
    """One batch of the tenant's outbox events, claimed SKIP LOCKED: each fires every enabled
    event trigger it matches, once, and leaves the outbox in the same transaction. Returns how
    many events it took (a full batch: call again)."""
    async with tenant_transaction(pool, tenant_id) as conn:
        cursor = await conn.execute(_CLAIM_EVENTS, (batch_size,))
        events = [
            TriggerEvent(row[0], row[1], EventType(row[2]), row[3], row[4], row[5], row[6])
            for row in await cursor.fetchall()
        ]
        if not events:
            return 0
        types = sorted({event.type.value for event in events})
        async with conn.cursor(row_factory=kwargs_row(_trigger)) as trigger_cursor:
            await trigger_cursor.execute(_EVENT_TRIGGERS, (types,))
            triggers = await trigger_cursor.fetchall()
        shots: list[Shot] = []
        for event in events:
            for trigger in triggers:
                assert trigger.event is not None
                if not trigger.event.matches(event):
                    continue
                depth = event.depth + 1
                deep = depth > MAX_TRIGGER_DEPTH
                shots.append(
                    Shot(
                        trigger,
                        FireSource.EVENT,
                        FireOutcome.SUPPRESSED if deep else FireOutcome.CREATED,
                        f"event:{event.id}",
                        depth=depth,
                        event_type=event.type.value,
                        subject=event.subject_id,
                        state=event.state,
                        error=f"a chain of {MAX_TRIGGER_DEPTH} triggers firing on their own"
                        " tasks is as deep as chains go"
                        if deep
                        else "",
                    )
                )
        fired = await _fire(conn, tenant_id, shots, now)
        await conn.execute(_DONE_EVENTS, ([event.id for event in events],))
    _count(fired)
    return len(events)


@dataclass(frozen=True)
class Shot:
    """One fire to record: CREATED ones get their task, MISSED and SUPPRESSED ones only say
    why not."""

    trigger: Trigger
    source: FireSource
    outcome: FireOutcome
    key: str
    depth: int = 0
    scheduled: datetime | None = None
    webhook: str | None = None
    event_type: str | None = None
    subject: UUID | None = None
    state: str | None = None
    missed: int = 0
    first: datetime | None = None
    last: datetime | None = None
    error: str = ""


async def _fire(
    conn: AsyncConnection[TupleRow], tenant_id: UUID, shots: Sequence[Shot], at: datetime
) -> list[TriggerFire | None]:
    """Records each shot once, at `at`: None for those whose key has fired before. A CREATED
    fire's task is made by `create_tasks`, the way CreateTask makes one, with the fire's id in
    its idempotency key; a task the template cannot make leaves the fire FAILED, with why.
    However many shots, a handful of statements."""
    if not shots:
        return []
    fire_ids = [uuid.uuid4() for _ in shots]
    task_ids = [uuid.uuid4() if s.outcome is FireOutcome.CREATED else None for s in shots]
    params: dict[str, Any] = {
        "tenant": tenant_id,
        "at": at,
        "id": fire_ids,
        "trigger": [s.trigger.id for s in shots],
        "source": [s.source.value for s in shots],
        "outcome": [s.outcome.value for s in shots],
        "key": [s.key for s in shots],
        "scheduled": [s.scheduled for s in shots],
        "task": task_ids,
        "error": [s.error for s in shots],
        "webhook": [s.webhook for s in shots],
        "event_type": [s.event_type for s in shots],
        "subject": [s.subject for s in shots],
        "state": [s.state for s in shots],
        "missed": [s.missed for s in shots],
        "first": [s.first for s in shots],
        "last": [s.last for s in shots],
    }
    async with conn.cursor(row_factory=kwargs_row(_fire_row)) as cursor:
        await cursor.execute(_RECORD_FIRES, params)
        fired = {fire.id: fire for fire in await cursor.fetchall()}
    requests: list[TaskRequest] = []
    templates: dict[UUID, TaskFields] = {}
    for shot, fire_id, task_id in zip(shots, fire_ids, task_ids, strict=True):
        if task_id is None or fire_id not in fired:
            continue
        trigger = shot.trigger
        if trigger.id not in templates:
            templates[trigger.id] = TaskDraft(
                prompt=trigger.task_prompt,
                environment_id=trigger.environment_id,
                host_id=trigger.host_id or "",
                timeout=trigger.task_timeout,
            ).validate()
        origin = TaskOrigin(trigger.id, fire_id, task_id, shot.depth)
        requests.append(TaskRequest(templates[trigger.id], f"trigger-fire:{fire_id}", origin))
    outcomes = await create_tasks(conn, tenant_id, requests)
    refused = [
        (request.origin.fire_id, _refusal(outcome))
        for request, outcome in zip(requests, outcomes, strict=True)
        if request.origin is not None and not isinstance(outcome, Task)
    ]
    if refused:
        async with conn.cursor(row_factory=kwargs_row(_fire_row)) as cursor:
            await cursor.execute(
                _FAIL_FIRES, ([fire for fire, _ in refused], [why for _, why in refused])
            )
            for fire in await cursor.fetchall():
                fired[fire.id] = fire
    return [fired.get(fire_id) for fire_id in fire_ids]


def _refusal(outcome: DomainError | None) -> str:
    if outcome is None:  # its key was taken: impossible for a fire inserted just now
        return "the fire's task already exists"
    return outcome.message[:_ERROR_LENGTH]


async def _one(conn: AsyncConnection[TupleRow], query: str, params: Any) -> Trigger | None:
    async with conn.cursor(row_factory=kwargs_row(_trigger)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def _check_references(conn: AsyncConnection[TupleRow], fields: TriggerFields) -> None:
    """The environment exists, the host is in it, the event's host exists — in this tenant."""
    template = fields.template
    event_host = None if fields.event is None else fields.event.host_id
    row = await (
        await conn.execute(
            _REFERENCES,
            {
                "environment": template.environment_id,
                "host": template.host_id,
                "event_host": event_host,
            },
        )
    ).fetchone()
    assert row is not None
    environment_exists, host_placement, event_host_exists = row
    violations: list[FieldViolation] = []
    if not environment_exists:
        violations.append(
            FieldViolation(
                "trigger.environment_id", f"there is no environment {template.environment_id}"
            )
        )
    if template.host_id is not None:
        if host_placement is None:
            violations.append(
                FieldViolation("trigger.host_id", f"there is no host {template.host_id}")
            )
        elif host_placement[0] != template.environment_id:
            violations.append(
                FieldViolation(
                    "trigger.host_id",
                    f"host {template.host_id} does not belong to environment"
                    f" {template.environment_id}",
                )
            )
    if event_host is not None and not event_host_exists:
        violations.append(FieldViolation("trigger.event.host_id", f"there is no host {event_host}"))
    if violations:
        raise InvalidArgument("the trigger refers to things it may not use", violations)


def _next(fields: TriggerFields, now: datetime) -> datetime | None:
    if fields.schedule is None or not fields.enabled:
        return None
    return fields.schedule.next_after(now)


def _values(fields: TriggerFields) -> dict[str, Any]:
    schedule, event, template = fields.schedule, fields.event, fields.template
    return {
        "name": fields.name,
        "environment": template.environment_id,
        "host": template.host_id,
        "prompt": template.prompt,
        "timeout": template.timeout if fields.explicit_timeout else None,
        "enabled": fields.enabled,
        "kind": fields.kind.value,
        "cron": None if schedule is None else schedule.cron,
        "zone": None if schedule is None else schedule.time_zone,
        "policy": None if schedule is None else schedule.misfire_policy.value,
        "window": None if schedule is None else schedule.catchup_window,
        "runs": None if schedule is None else schedule.max_catchup_runs,
        "event_type": None if event is None else event.type.value,
        "event_states": [] if event is None else list(event.states),
        "event_host": None if event is None else event.host_id,
    }
