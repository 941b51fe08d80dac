"""The audit trail in the database: events written by triggers at commit with who and how,
sealed after it without gaps and without making writers wait, append-only, isolated per tenant,
listed in keyset pages, and a hash chain whose verification names the first entry an owner
altered, deleted or moved.

Changes are made with plain SQL on the request role (under RLS), the way the repositories make
them, so these tests depend on the tables and their triggers, not on the repositories.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection, errors
from psycopg.types.json import Jsonb

from server.domain.audit import Actor, AuditEvent, AuditQuery, Break, Protocol, entry_hash
from server.domain.environments import EnvironmentDraft
from server.domain.errors import InvalidArgument
from server.services.sealing import AuditSealer
from server.storage.audit import AuditRepository, seal, seal_all
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.tasks import time_out_tasks
from server.storage.tenancy import owner_tenant_transaction, set_actor, tenant_transaction
from tests.server.conftest import TenantWithKey, make_tenant, new_environment, new_host, sql

KEY = uuid.uuid4()
OPERATOR = Actor(key_id=KEY, host_id=None, protocol=Protocol.REST, request_id="req-operator-1")


@pytest.fixture
def audit(database: Database) -> AuditRepository:
    return AuditRepository(database.pool)


@pytest.fixture(autouse=True)
def no_actor() -> Iterator[None]:
    set_actor(None)
    yield
    set_actor(None)


async def trail(audit: AuditRepository, tenant: TenantWithKey, **query: Any) -> list[AuditEvent]:
    page = await audit.list(tenant.id, AuditQuery(ascending=True, **query), page_size=1000)
    return list(page.items)


def kinds(events: list[AuditEvent]) -> list[str]:
    return [event.kind for event in events]


async def append(
    database: Database, tenant: TenantWithKey, kind: str, detail: dict[str, Any] | None = None
) -> None:
    """One event, committed and sealed (as a server process does on the notification)."""
    await sql(
        database,
        tenant,
        "SELECT roz.append_audit_event(%s, NULL, NULL, NULL, %s)",
        (kind, Jsonb(detail or {})),
    )
    await seal(database.pool, tenant.id)


async def unsealed(database: Database, tenant: TenantWithKey | None = None) -> int:
    """Events waiting to be sealed, the tenant's or every tenant's (the table is the owner's
    alone; other tests of the session leave theirs for the sweep)."""
    query = "SELECT count(*) FROM roz.audit_unsealed"
    params: tuple[object, ...] = ()
    if tenant is not None:
        query += " WHERE tenant_id = %s"
        params = (tenant.id,)
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])


# -- what is recorded -------------------------------------------------------------------------


async def new_command(database: Database, tenant: TenantWithKey, host_id: uuid.UUID) -> uuid.UUID:
    rows = await sql(
        database,
        tenant,
        "WITH c AS (INSERT INTO roz.commands (tenant_id, host_id, type, state)"
        " VALUES (%s, %s, 'move_to', 'awaiting_approval') RETURNING tenant_id, id, create_time)"
        " INSERT INTO roz.command_transitions (tenant_id, command_id, from_state, to_state,"
        " actor_key_id, transition_time) SELECT tenant_id, id, NULL, 'awaiting_approval', %s,"
        " create_time FROM c RETURNING command_id",
        (tenant.id, host_id, KEY),
    )
    return rows[0][0]  # type: ignore[no-any-return]


async def move_command(
    database: Database, tenant: TenantWithKey, command_id: uuid.UUID, old: str, new: str
) -> None:
    await sql(
        database,
        tenant,
        "WITH m AS (UPDATE roz.commands SET state = %(new)s,"
        " start_time = CASE WHEN %(new)s = 'running' THEN now() ELSE start_time END"
        " WHERE id = %(id)s RETURNING tenant_id, id)"
        " INSERT INTO roz.command_transitions (tenant_id, command_id, from_state, to_state, reason)"
        " SELECT tenant_id, id, %(old)s, %(new)s, %(reason)s FROM m",
        {"id": command_id, "old": old, "new": new, "reason": f"to {new}"},
    )


async def test_a_commands_life_is_recorded_with_who_how_and_what(
    database: Database, environments: EnvironmentRepository, audit: AuditRepository,
    tenant_a: TenantWithKey,
) -> None:  # fmt: skip
    environment_id = await new_environment(environments, tenant_a)
    host_id = await new_host(database, tenant_a, environment_id)
    set_actor(OPERATOR)
    command_id = await new_command(database, tenant_a, host_id)
    await move_command(database, tenant_a, command_id, "awaiting_approval", "pending")
    robot = Actor(key_id=uuid.uuid4(), host_id=host_id, protocol=Protocol.GRPC, request_id="r-2")
    set_actor(robot)
    await sql(
        database,
        tenant_a,
        "UPDATE roz.commands SET deliver_time = now() WHERE id = %s",
        (command_id,),
    )
    await sql(
        database,
        tenant_a,
        "UPDATE roz.commands SET acknowledge_time = now() WHERE id = %s",
        (command_id,),
    )
    # A later write of the same time is no second delivery.
    await sql(
        database,
        tenant_a,
        "UPDATE roz.commands SET deliver_time = now() WHERE id = %s",
        (command_id,),
    )
    await move_command(database, tenant_a, command_id, "pending", "running")
    await move_command(database, tenant_a, command_id, "running", "completed")

    events = await trail(audit, tenant_a, subject_id=command_id)
    assert kinds(events) == [
        "command.created",
        "command.approved",
        "command.delivered",
        "command.acknowledged",
        "command.running",
        "command.ended",
    ]
    assert [event.sequence for event in events] == [1, 2, 3, 4, 5, 6]
    created, approved, delivered = events[0], events[1], events[2]
    assert (created.actor_key_id, created.actor_host_id) == (KEY, None)
    assert (created.protocol, created.request_id) == (Protocol.REST, "req-operator-1")
    assert (created.host_id, created.environment_id) == (host_id, environment_id)
    assert '"type": "move_to"' in created.detail_json
    assert '"reason": "to pending"' in approved.detail_json
    assert (delivered.actor_key_id, delivered.actor_host_id) == (robot.key_id, host_id)
    assert (delivered.protocol, delivered.request_id) == (Protocol.GRPC, "r-2")
    assert '"to_state": "completed"' in events[-1].detail_json


async def test_a_tasks_life_and_the_servers_timeout_are_recorded(
    database: Database, environments: EnvironmentRepository, audit: AuditRepository,
    tenant_a: TenantWithKey,
) -> None:  # fmt: skip
    environment_id = await new_environment(environments, tenant_a)
    host_id = await new_host(database, tenant_a, environment_id)
    set_actor(OPERATOR)
    rows = await sql(
        database,
        tenant_a,
        "WITH t AS (INSERT INTO roz.tasks (tenant_id, environment_id, host_id, prompt, timeout)"
        " VALUES (%s, %s, %s, 'tidy up', interval '1 minute') RETURNING tenant_id, id, create_time)"
        " INSERT INTO roz.task_transitions (tenant_id, task_id, from_state, to_state,"
        " transition_time) SELECT tenant_id, id, NULL, 'pending', create_time FROM t"
        " RETURNING task_id",
        (tenant_a.id, environment_id, host_id),
    )
    task_id = rows[0][0]
    await sql(
        database,
        tenant_a,
        "WITH m AS (UPDATE roz.tasks SET state = 'queued' WHERE id = %s"
        " RETURNING tenant_id, id) INSERT INTO roz.task_transitions (tenant_id, task_id,"
        " from_state, to_state) SELECT tenant_id, id, 'pending', 'queued' FROM m",
        (task_id,),
    )
    await sql(
        database, tenant_a, "UPDATE roz.tasks SET deliver_time = now() WHERE id = %s", (task_id,)
    )
    await sql(
        database,
        tenant_a,
        "WITH m AS (UPDATE roz.tasks SET state = 'running',"
        " start_time = now() - interval '2 minutes', run_deadline = now() - interval '1 minute'"
        " WHERE id = %s RETURNING tenant_id, id)"
        " INSERT INTO roz.task_transitions (tenant_id, task_id, from_state, to_state)"
        " SELECT tenant_id, id, 'queued', 'running' FROM m",
        (task_id,),
    )
    set_actor(None)
    # The sweep writes every tenant's transitions in one statement, as the owner and with no
    # tenant set; its entries are chained at its commit all the same, as the server's.
    assert await time_out_tasks(database.pool) >= 1

    events = await trail(audit, tenant_a, subject_id=task_id)
    assert kinds(events) == [
        "task.created",
        "task.queued",
        "task.delivered",
        "task.running",
        "task.ended",
    ]
    assert all(e.environment_id == environment_id and e.host_id == host_id for e in events)
    ended = events[-1]
    assert (ended.actor_key_id, ended.actor_host_id, ended.protocol, ended.request_id) == (
        None,
        None,
        Protocol.SERVER,
        "",
    )
    assert '"to_state": "timed_out"' in ended.detail_json
    assert events[0].actor_key_id == KEY


async def new_policy(database: Database, tenant: TenantWithKey) -> uuid.UUID:
    async with tenant_transaction(database.pool, tenant.id) as conn:
        row = await (
            await conn.execute(
                "INSERT INTO roz.safety_policies (tenant_id, name) VALUES (%s, %s) RETURNING id",
                (tenant.id, f"policy-{uuid.uuid4().hex[:8]}"),
            )
        ).fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name)"
            " VALUES (%s, %s, 1, 'p')",
            (tenant.id, row[0]),
        )
    return row[0]  # type: ignore[no-any-return]


async def test_policies_created_changed_attached_detached_and_deleted_are_recorded(
    database: Database, environments: EnvironmentRepository, audit: AuditRepository,
    tenant_a: TenantWithKey,
) -> None:  # fmt: skip
    set_actor(OPERATOR)
    first = await new_policy(database, tenant_a)
    second = await new_policy(database, tenant_a)
    await sql(
        database,
        tenant_a,
        "WITH v AS (UPDATE roz.safety_policies SET current_version = 2 WHERE id = %s RETURNING id)"
        " INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name)"
        " SELECT %s, id, 2, 'p' FROM v",
        (first, tenant_a.id),
    )
    made = await environments.create(
        tenant_a.id, EnvironmentDraft(name=f"env-{uuid.uuid4().hex[:8]}", safety_policy_ids=[first])
    )
    # An update rewrites the whole list; only what changed is an event.
    await environments.update(
        tenant_a.id, made.id, EnvironmentDraft(name=made.name, safety_policy_ids=[first, second])
    )
    await environments.update(
        tenant_a.id, made.id, EnvironmentDraft(name="renamed", safety_policy_ids=[first, second])
    )
    await environments.update(
        tenant_a.id, made.id, EnvironmentDraft(name="renamed", safety_policy_ids=[second])
    )
    await environments.delete(tenant_a.id, made.id)
    await sql(database, tenant_a, "DELETE FROM roz.safety_policies WHERE id = %s", (first,))

    seen = [(e.kind, e.subject_id, e.environment_id) for e in await trail(audit, tenant_a)]
    assert seen == [
        ("safety_policy.created", first, None),
        ("safety_policy.created", second, None),
        ("safety_policy.changed", first, None),
        ("safety_policy.attached", first, made.id),
        ("safety_policy.attached", second, made.id),
        ("safety_policy.detached", first, made.id),
        ("safety_policy.detached", second, made.id),
        ("safety_policy.deleted", first, None),
    ]
    changed = (await trail(audit, tenant_a, kind="safety_policy.changed"))[0]
    assert '"version": 2' in changed.detail_json
    assert changed.actor_key_id == KEY


async def test_a_robot_connecting_being_taken_over_and_going_is_recorded(
    database: Database, environments: EnvironmentRepository, audit: AuditRepository,
    tenant_a: TenantWithKey,
) -> None:  # fmt: skip
    environment_id = await new_environment(environments, tenant_a)
    host_id = await new_host(database, tenant_a, environment_id)
    claim = (
        "INSERT INTO roz.robot_links (tenant_id, host_id, link_id, link_epoch, connect_time)"
        " VALUES (%(tenant)s, %(host)s, %(link)s, 1, now()) ON CONFLICT (host_id) DO UPDATE"
        " SET link_id = excluded.link_id, link_epoch = robot_links.link_epoch + 1"
    )
    params = {"tenant": tenant_a.id, "host": host_id}
    await sql(database, tenant_a, claim, {**params, "link": uuid.uuid4()})
    await sql(database, tenant_a, claim, {**params, "link": uuid.uuid4()})  # a takeover
    await sql(database, tenant_a, "UPDATE roz.robot_links SET seen_time = now()")  # a pulse
    await sql(database, tenant_a, "UPDATE roz.robot_links SET link_id = NULL")

    events = await trail(audit, tenant_a, host_id=host_id)
    assert kinds(events) == [
        "robot.connected",
        "robot.disconnected",
        "robot.connected",
        "robot.disconnected",
    ]
    assert all(event.environment_id == environment_id for event in events)
    assert '"took_over": true' in events[2].detail_json
    assert '"link_epoch": 2' in events[3].detail_json
    assert "link_id" not in "".join(event.detail_json for event in events)  # a holder's secret


async def test_the_sql_function_appends_at_commit_with_the_hosts_environment(
    database: Database, environments: EnvironmentRepository, audit: AuditRepository,
    tenant_a: TenantWithKey,
) -> None:  # fmt: skip
    environment_id = await new_environment(environments, tenant_a)
    host_id = await new_host(database, tenant_a, environment_id)
    set_actor(OPERATOR)
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        await conn.execute(
            "SELECT roz.append_audit_event('estop.engaged', %s, NULL, %s, %s)",
            (host_id, host_id, Jsonb({"reason": "arrêt d'urgence ✋"})),
        )
        inside = await (await conn.execute("SELECT count(*) FROM roz.audit_events")).fetchone()
        assert inside == (0,)  # sealed once the transaction has committed, not before
    (event,) = await trail(audit, tenant_a)
    assert (event.kind, event.host_id, event.environment_id) == (
        "estop.engaged",
        host_id,
        environment_id,
    )
    assert (event.actor_key_id, event.protocol, event.request_id) == (
        KEY,
        Protocol.REST,
        "req-operator-1",
    )
    assert (await audit.verify(tenant_a.id)).intact  # non-ASCII hashed alike on both sides
    assert await unsealed(database, tenant_a) == 0


@pytest.mark.parametrize("kind", ["EStop.engaged", "estop", "estop.", "estop.engaged; drop", ""])
async def test_the_sql_function_refuses_a_kind_that_is_not_noun_dot_verb(
    database: Database, tenant_a: TenantWithKey, kind: str
) -> None:
    with pytest.raises(errors.InvalidParameterValue):
        await append(database, tenant_a, kind)


async def test_the_sql_function_needs_a_tenant(database: Database) -> None:
    async with database.pool.connection() as conn:
        # Never set on this connection, or left '' by an earlier transaction: refused either way.
        with pytest.raises((errors.UndefinedObject, errors.InvalidTextRepresentation)):
            await conn.execute(
                "SELECT roz.append_audit_event('estop.engaged', NULL, NULL, NULL, '{}')"
            )


class ChangedMyMind(Exception):
    pass


async def test_a_rolled_back_change_leaves_no_entry_and_no_gap(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    await append(database, tenant_a, "estop.engaged")
    with contextlib.suppress(ChangedMyMind):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute(
                "SELECT roz.append_audit_event('estop.cleared', NULL, NULL, NULL, '{}')"
            )
            raise ChangedMyMind
    await append(database, tenant_a, "estop.cleared")
    events = await trail(audit, tenant_a)
    assert [(e.sequence, e.kind) for e in events] == [(1, "estop.engaged"), (2, "estop.cleared")]


async def test_concurrent_appends_are_numbered_without_gap_or_repeat(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    await asyncio.gather(
        *(append(database, tenant_a, "estop.engaged", {"n": n}) for n in range(20))
    )
    events = await trail(audit, tenant_a)
    assert [event.sequence for event in events] == list(range(1, 21))
    assert sorted(e.detail_json for e in events) == sorted(f'{{"n": {n}}}' for n in range(20))
    assert (await audit.verify(tenant_a.id)).intact


async def test_writers_never_wait_for_each_other_and_entries_follow_their_commits(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    """A transaction holding events uncommitted keeps no other writer of its tenant waiting;
    the entries are numbered in the order their transactions committed, without a gap, so a
    reader that has seen entry n has seen every entry before it."""
    async with tenant_transaction(database.pool, tenant_a.id) as first:
        await first.execute(
            "SELECT roz.append_audit_event('estop.engaged', NULL, NULL, NULL, '{}')"
        )
        await first.execute("SET CONSTRAINTS ALL IMMEDIATE")
        # Another writer of the same tenant commits and is sealed while `first` is open.
        await asyncio.wait_for(append(database, tenant_a, "estop.cleared"), timeout=5)
        assert [(e.sequence, e.kind) for e in await trail(audit, tenant_a)] == [
            (1, "estop.cleared")
        ]
    assert await seal(database.pool, tenant_a.id) == 1
    events = await trail(audit, tenant_a)
    assert [(e.sequence, e.kind) for e in events] == [(1, "estop.cleared"), (2, "estop.engaged")]
    assert (await audit.verify(tenant_a.id)).intact


async def test_a_sealer_is_woken_once_per_commit_and_watchers_once_per_seal(
    database: Database, tenant_a: TenantWithKey
) -> None:
    async with await AsyncConnection.connect(database.pool.conninfo, autocommit=True) as listener:
        await listener.execute("LISTEN roz_audit_unsealed")
        await listener.execute("LISTEN roz_audit")
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            for kind in ("estop.engaged", "estop.cleared"):
                await conn.execute(
                    "SELECT roz.append_audit_event(%s, NULL, NULL, NULL, '{}')", (kind,)
                )
        await sql(
            database,
            tenant_a,
            "SELECT roz.append_audit_event('estop.engaged', NULL, NULL, NULL, '{}')",
        )
        assert await seal(database.pool, tenant_a.id) == 3
        assert await seal(database.pool, tenant_a.id) == 0  # nothing left: no wake-up either
        woken = [n async for n in listener.notifies(timeout=1, stop_after=4)]
    tenant = str(tenant_a.id)
    assert [(n.channel, n.payload) for n in woken] == [
        ("roz_audit_unsealed", tenant),
        ("roz_audit_unsealed", tenant),
        ("roz_audit", tenant),
    ]


async def test_the_sweep_seals_what_every_tenant_left_waiting(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    for tenant in (tenant_a, tenant_b):
        await sql(
            database,
            tenant,
            "SELECT roz.append_audit_event('estop.engaged', NULL, NULL, NULL, '{}')",
        )
    assert await unsealed(database) >= 2
    assert await seal_all(database.pool) >= 2
    assert await unsealed(database) == 0
    for tenant in (tenant_a, tenant_b):
        assert kinds(await trail(audit, tenant)) == ["estop.engaged"]


# -- append-only, isolated ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE roz.audit_events SET kind = 'estop.cleared'",
        "UPDATE roz.audit_events SET detail = '{}'",
        "DELETE FROM roz.audit_events",
        "TRUNCATE roz.audit_events",
    ],
)
async def test_the_request_role_can_neither_change_nor_delete_an_entry(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey, statement: str
) -> None:
    await append(database, tenant_a, "estop.engaged", {"reason": "test"})
    with pytest.raises(errors.InsufficientPrivilege):
        await sql(database, tenant_a, statement)
    assert kinds(await trail(audit, tenant_a)) == ["estop.engaged"]


async def test_a_tenant_sees_and_writes_only_its_own_trail(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    await append(database, tenant_a, "estop.engaged")
    await append(database, tenant_a, "estop.cleared")
    await append(database, tenant_b, "estop.engaged")
    assert [e.sequence for e in await trail(audit, tenant_a)] == [1, 2]
    (seen,) = await trail(audit, tenant_b)
    assert (seen.tenant_id, seen.sequence) == (tenant_b.id, 1)  # each tenant its own chain
    # Even a query that forgets the tenant sees only its own rows.
    assert await sql(database, tenant_b, "SELECT count(*) FROM roz.audit_events") == [(1,)]
    with pytest.raises(errors.InsufficientPrivilege):
        await sql(
            database,
            tenant_b,
            "INSERT INTO roz.audit_events (tenant_id, sequence, kind, event_time, hash)"
            " VALUES (%s, 3, 'estop.cleared', now(), sha256(''))",
            (tenant_a.id,),
        )
    assert (await audit.verify(tenant_a.id)).intact
    assert (await audit.verify(tenant_b.id)).intact


async def test_deleting_a_tenant_deletes_its_trail(database: Database) -> None:
    doomed = await make_tenant(database, "doomed")
    await new_policy(database, doomed)  # its deletion cascades: no entry for a tenant gone
    await append(database, doomed, "estop.engaged")
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        await conn.execute("DELETE FROM roz.tenants WHERE id = %s", (doomed.id,))
        await conn.commit()
        left = await (
            await conn.execute(
                "SELECT (SELECT count(*) FROM roz.audit_events WHERE tenant_id = %(t)s)"
                " + (SELECT count(*) FROM roz.audit_chains WHERE tenant_id = %(t)s)",
                {"t": doomed.id},
            )
        ).fetchone()
    assert left == (0,)


# -- listing ------------------------------------------------------------------------------------


async def test_pages_follow_the_sequence_both_ways_with_filters(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    for n in range(7):
        await append(database, tenant_a, "estop.engaged" if n % 2 == 0 else "estop.cleared")

    async def every(query: AuditQuery, size: int) -> list[int]:
        sequences: list[int] = []
        token = ""
        while True:
            page = await audit.list(tenant_a.id, query, page_size=size, page_token=token)
            sequences += [event.sequence for event in page.items]
            if not page.next_page_token:
                return sequences
            token = page.next_page_token

    assert await every(AuditQuery(), 3) == [7, 6, 5, 4, 3, 2, 1]
    assert await every(AuditQuery(ascending=True), 2) == [1, 2, 3, 4, 5, 6, 7]
    assert await every(AuditQuery(ascending=True, after_sequence=4), 2) == [5, 6, 7]
    assert await every(AuditQuery(kind="estop.cleared"), 2) == [6, 4, 2]
    now = datetime.now(UTC)
    assert await every(AuditQuery(start_time=now - timedelta(hours=1), end_time=now), 5) == [
        7, 6, 5, 4, 3, 2, 1,
    ]  # fmt: skip
    assert await every(AuditQuery(start_time=now), 5) == []

    page = await audit.list(tenant_a.id, AuditQuery(), page_size=2)
    with pytest.raises(InvalidArgument, match="different query"):
        await audit.list(tenant_a.id, AuditQuery(ascending=True), page_token=page.next_page_token)
    with pytest.raises(InvalidArgument):
        await audit.list(tenant_a.id, AuditQuery(kind="Estop"))


# -- the hash chain -----------------------------------------------------------------------------


async def tampered(database: Database, tenant: TenantWithKey, *statements: str) -> None:
    """What an owner of the database can do: switch the guard off, change rows, switch it on."""
    async with (
        await AsyncConnection.connect(database.owner_dsn) as conn,
        owner_tenant_transaction(conn, tenant.id),
    ):
        await conn.execute("ALTER TABLE roz.audit_events DISABLE TRIGGER USER")
        for statement in statements:
            await conn.execute(statement, {"tenant": tenant.id})
        await conn.execute("ALTER TABLE roz.audit_events ENABLE TRIGGER USER")


async def five_entries(database: Database, tenant: TenantWithKey) -> None:
    for n in range(1, 6):
        await append(database, tenant, "estop.engaged", {"n": n})


async def test_an_untouched_chain_verifies_and_its_head_is_the_last_entry(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    empty = await audit.verify(tenant_a.id)
    assert (empty.intact, empty.entries, empty.head.last_sequence) == (True, 0, 0)
    await five_entries(database, tenant_a)
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.intact, verdict.entries, verdict.broken) == (True, 5, None)
    last = (await trail(audit, tenant_a))[-1]
    assert (verdict.head.last_sequence, verdict.head.last_hash) == (5, last.hash)
    # Python's canonical form is the database's: every entry's hash recomputed here agrees.
    for event in await trail(audit, tenant_a):
        assert entry_hash(event, event.previous_hash) == event.hash


async def test_an_altered_entry_is_named(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    await five_entries(database, tenant_a)
    await tampered(
        database,
        tenant_a,
        "UPDATE roz.audit_events SET detail = '{\"n\": 33}'"
        " WHERE tenant_id = %(tenant)s AND sequence = 3",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.intact, verdict.broken, verdict.broken_sequence) == (False, Break.ALTERED, 3)
    assert verdict.entries == 2
    assert "entry 3 was altered" in verdict.description


async def test_an_altered_actor_is_named_too(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    set_actor(OPERATOR)
    await five_entries(database, tenant_a)
    await tampered(
        database,
        tenant_a,
        "UPDATE roz.audit_events SET actor_key_id = gen_random_uuid()"
        " WHERE tenant_id = %(tenant)s AND sequence = 4",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.broken, verdict.broken_sequence) == (Break.ALTERED, 4)


async def test_a_deleted_entry_is_named_as_missing(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    await five_entries(database, tenant_a)
    await tampered(
        database,
        tenant_a,
        "DELETE FROM roz.audit_events WHERE tenant_id = %(tenant)s AND sequence = 2",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.broken, verdict.broken_sequence, verdict.entries) == (Break.MISSING, 2, 1)
    assert "entry 2 is missing" in verdict.description


async def test_deleted_last_entries_are_named_against_the_head(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    await five_entries(database, tenant_a)
    await tampered(
        database,
        tenant_a,
        "DELETE FROM roz.audit_events WHERE tenant_id = %(tenant)s AND sequence >= 4",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.broken, verdict.broken_sequence, verdict.entries) == (Break.TRUNCATED, 4, 3)


async def test_reordered_entries_are_named(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    await five_entries(database, tenant_a)
    where = " WHERE tenant_id = %(tenant)s AND sequence = "
    await tampered(
        database,
        tenant_a,
        "UPDATE roz.audit_events SET sequence = 1000" + where + "2",
        "UPDATE roz.audit_events SET sequence = 2" + where + "3",
        "UPDATE roz.audit_events SET sequence = 3" + where + "1000",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.broken, verdict.broken_sequence) == (Break.UNLINKED, 2)


async def test_an_entry_rehashed_alone_still_breaks_the_next_link(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    """Altering content and recomputing that entry's hash moves the break to the next entry."""
    await five_entries(database, tenant_a)
    await tampered(
        database,
        tenant_a,
        "UPDATE roz.audit_events SET detail = '{\"n\": 33}', hash = roz.audit_hash(tenant_id,"
        " sequence, kind, event_time, actor_key_id, actor_host_id, protocol, request_id,"
        " host_id, environment_id, subject_id, '{\"n\": 33}', previous_hash)"
        " WHERE tenant_id = %(tenant)s AND sequence = 3",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.broken, verdict.broken_sequence) == (Break.UNLINKED, 4)


async def test_verification_reads_past_one_batch(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("server.storage.audit.VERIFY_BATCH", 2)
    await five_entries(database, tenant_a)
    assert (await audit.verify(tenant_a.id)).entries == 5
    await tampered(
        database,
        tenant_a,
        "DELETE FROM roz.audit_events WHERE tenant_id = %(tenant)s AND sequence = 5",
    )
    verdict = await audit.verify(tenant_a.id)
    assert (verdict.broken, verdict.broken_sequence) == (Break.TRUNCATED, 5)


async def test_each_entry_of_a_transaction_is_chained_to_the_one_before(
    database: Database, audit: AuditRepository, tenant_a: TenantWithKey
) -> None:
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        for kind in ("estop.engaged", "estop.acknowledged", "estop.cleared"):
            await conn.execute("SELECT roz.append_audit_event(%s, NULL, NULL, NULL, '{}')", (kind,))
    events = await trail(audit, tenant_a)
    assert kinds(events) == ["estop.engaged", "estop.acknowledged", "estop.cleared"]
    assert events[0].previous_hash is None
    assert [e.previous_hash for e in events[1:]] == [e.hash for e in events[:-1]]


def test_the_canonical_form_separates_fields_unambiguously() -> None:
    base = AuditEvent(
        tenant_id=uuid.uuid4(),
        sequence=1,
        kind="estop.engaged",
        event_time=datetime(2025, 1, 1, tzinfo=UTC),
        actor_key_id=None,
        actor_host_id=None,
        protocol=Protocol.REST,
        request_id="ab",
        host_id=None,
        environment_id=None,
        subject_id=None,
        detail_json="{}",
        previous_hash=None,
        hash=b"",
    )
    # Joined without lengths, protocol "rest" + request id "ab" would read as "" + "restab".
    moved = AuditEvent(**{**base.__dict__, "request_id": "restab", "protocol": Protocol.SERVER})
    assert entry_hash(base, None) != entry_hash(moved, None)
    later = AuditEvent(
        **{**base.__dict__, "event_time": base.event_time + timedelta(microseconds=1)}
    )
    assert entry_hash(base, None) != entry_hash(later, None)


async def test_a_commits_wake_up_names_the_writing_session_so_only_its_process_seals(
    database: Database, tenant_a: TenantWithKey
) -> None:
    async with await AsyncConnection.connect(database.pool.conninfo, autocommit=True) as listener:
        await listener.execute("LISTEN roz_audit_unsealed")
        await sql(
            database,
            tenant_a,
            "SELECT roz.append_audit_event('estop.engaged', NULL, NULL, NULL, '{}')",
        )
        (woken,) = [n async for n in listener.notifies(timeout=1, stop_after=1)]
        assert database.is_pool_session(woken.pid)  # this process's pool wrote it
        assert not database.is_pool_session(listener.info.backend_pid)  # a session of no pool
    await seal(database.pool, tenant_a.id)

    sealed: list[uuid.UUID] = []

    async def record(tenant: uuid.UUID) -> int:
        sealed.append(tenant)
        return 1

    sealer = AuditSealer(record, ours=lambda pid: pid == woken.pid)
    sealer.on_unsealed_by(str(tenant_a.id), woken.pid + 1)  # another process's session
    await asyncio.sleep(0.05)
    assert sealed == []
    sealer.on_unsealed_by(str(tenant_a.id), woken.pid)
    await asyncio.sleep(0.05)
    assert sealed == [tenant_a.id]
    await sealer.stop()
