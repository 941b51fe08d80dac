"""Commands in the database: the safety check at creation, transitions under a row lock, the
append-only history, idempotency keys, the sweep, isolation and error mapping.

Hosts and safety policies are written with plain SQL on the request role (under RLS), so these
tests depend on their tables, not on their repositories.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from psycopg import AsyncConnection, errors
from psycopg.types.json import Jsonb

from server.domain.commands import INVALID_TRANSITION, CommandDraft, CommandState
from server.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from server.domain.safety import PolicyVersion
from server.storage.commands import CONSTRAINTS, RESOURCE, CommandRepository
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.errors import database_errors
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey, new_environment, new_host, sql

S = CommandState
ACTOR = uuid.uuid4()
TABLES = ("commands", "command_transitions")


@pytest.fixture
def commands(database: Database) -> CommandRepository:
    return CommandRepository(database.pool)


_VERSION = (
    "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name,"
    " max_linear_velocity, max_force, workspace, allowed_command_types, denied_command_types,"
    " approval_command_types) VALUES (%s, %s, %s, 'p', %s, %s, %s, %s, %s, %s)"
)


def version_values(
    tenant: TenantWithKey, policy_id: uuid.UUID, version: int, **rules: Any
) -> tuple[Any, ...]:
    return (
        tenant.id,
        policy_id,
        version,
        rules.get("max_linear_velocity"),
        rules.get("max_force"),
        Jsonb(rules.get("workspace", {"boxes": [], "prisms": []})),
        rules.get("allowed", []),
        rules.get("denied", []),
        rules.get("approval", []),
    )


async def attach_policy(
    database: Database, tenant: TenantWithKey, environment_id: uuid.UUID, **rules: Any
) -> uuid.UUID:
    async with tenant_transaction(database.pool, tenant.id) as conn:
        row = await (
            await conn.execute(
                "INSERT INTO roz.safety_policies (tenant_id, name) VALUES (%s, %s) RETURNING id",
                (tenant.id, f"policy-{uuid.uuid4().hex[:8]}"),
            )
        ).fetchone()
        assert row is not None
        policy_id: uuid.UUID = row[0]
        await conn.execute(_VERSION, version_values(tenant, policy_id, 1, **rules))
        position = await (
            await conn.execute(
                "SELECT count(*) FROM roz.environment_safety_policies WHERE environment_id = %s",
                (environment_id,),
            )
        ).fetchone()
        assert position is not None
        await conn.execute(
            "INSERT INTO roz.environment_safety_policies"
            " (tenant_id, environment_id, safety_policy_id, position) VALUES (%s, %s, %s, %s)",
            (tenant.id, environment_id, policy_id, position[0]),
        )
    return policy_id


async def new_version(
    conn: AsyncConnection[Any], tenant: TenantWithKey, policy_id: uuid.UUID, **rules: Any
) -> None:
    """What a policy update does: lock the head row, write version n + 1, advance the head."""
    row = await (
        await conn.execute(
            "SELECT current_version FROM roz.safety_policies WHERE id = %s FOR UPDATE",
            (policy_id,),
        )
    ).fetchone()
    assert row is not None
    version = row[0] + 1
    await conn.execute(_VERSION, version_values(tenant, policy_id, version, **rules))
    await conn.execute(
        "UPDATE roz.safety_policies SET current_version = %s WHERE id = %s", (version, policy_id)
    )


async def counts(database: Database, tenant: TenantWithKey) -> tuple[int, int]:
    rows = await sql(
        database,
        tenant,
        "SELECT (SELECT count(*) FROM roz.commands),"
        " (SELECT count(*) FROM roz.command_transitions)",
    )
    return rows[0]  # type: ignore[return-value]


BOX = {"boxes": [{"min": {"x": 0, "y": 0, "z": 0}, "max": {"x": 1, "y": 1, "z": 1}}], "prisms": []}


async def test_a_command_within_limits_is_stored_pending_with_its_policy_versions(
    database: Database,
    commands: CommandRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    limits = await attach_policy(database, tenant_a, environment, max_linear_velocity=1.0)
    cell = await attach_policy(database, tenant_a, environment, workspace=BOX)

    created = await commands.create(
        tenant_a.id,
        CommandDraft(
            host_id=str(host),
            type="move_to",
            params={"velocity": 1.0, "target": {"x": 0.5, "y": 0.5, "z": 1}, "note": "pick"},
            timeout=timedelta(seconds=30),
        ),
        actor=ACTOR,
    )
    assert created.state is S.PENDING
    assert created.stored
    assert created.applied_policies == (PolicyVersion(limits, 1), PolicyVersion(cell, 1))
    assert created.params["note"] == "pick"
    assert created.timeout == timedelta(seconds=30)
    (creation,) = created.transitions
    assert (creation.from_state, creation.to_state, creation.actor) == (None, S.PENDING, ACTOR)
    assert creation.reason == "created"
    assert await commands.get(tenant_a.id, created.id) == created
    assert (await commands.list(tenant_a.id)).items == (created,)


async def test_a_violation_stores_nothing_and_names_every_constraint(
    database: Database,
    commands: CommandRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    policy = await attach_policy(
        database, tenant_a, environment, max_linear_velocity=1.0, max_force=10, workspace=BOX
    )
    for validate_only in (False, True):
        with pytest.raises(FailedPrecondition) as raised:
            await commands.create(
                tenant_a.id,
                CommandDraft(
                    host_id=host,
                    type="move_to",
                    params={"velocity": 3, "force": 11, "target": {"x": 2, "y": 0, "z": 0}},
                    idempotency_key="never-stored",
                ),
                actor=ACTOR,
                validate_only=validate_only,
            )
        causes = raised.value.causes
        assert [c.metadata["constraint"] for c in causes] == [
            "max_linear_velocity",
            "max_force",
            "workspace",
        ]
        assert {c.metadata["policy_id"] for c in causes} == {str(policy)}
        assert [c.metadata["value"] for c in causes] == ["3", "11", "(2, 0, 0)"]
    assert await counts(database, tenant_a) == (0, 0)


async def test_a_host_without_environment_has_no_policies(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(
        tenant_a.id,
        CommandDraft(host_id=host, type="anything", params={"velocity": 1e6}),
        actor=None,
    )
    assert created.applied_policies == ()
    assert created.state is S.PENDING
    assert created.transitions[0].actor is None


async def test_another_tenants_host_is_an_invalid_host_id(
    database: Database,
    commands: CommandRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    theirs = await new_host(database, tenant_a)
    for host in (theirs, uuid.uuid4()):
        with pytest.raises(InvalidArgument) as raised:
            await commands.create(tenant_b.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR)
        assert [v.field for v in raised.value.violations] == ["command.host_id"]
        assert str(theirs) not in raised.value.message
    assert await counts(database, tenant_b) == (0, 0)
    assert await counts(database, tenant_a) == (0, 0)


async def test_a_wrongly_typed_param_is_invalid_before_any_lookup(
    commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await commands.create(
            tenant_a.id,
            CommandDraft(host_id=uuid.uuid4(), type="move_to", params={"velocity": "fast"}),
            actor=ACTOR,
        )
    assert [v.field for v in raised.value.violations] == ["command.params.velocity"]


async def test_validate_only_answers_like_a_create_and_stores_nothing(
    database: Database,
    commands: CommandRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    policy = await attach_policy(database, tenant_a, environment, approval=["home"])
    dry = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="home"), actor=ACTOR, validate_only=True
    )
    assert dry.stored is False
    assert dry.state is S.AWAITING_APPROVAL
    assert dry.applied_policies == (PolicyVersion(policy, 1),)
    assert dry.transitions == ()
    assert await counts(database, tenant_a) == (0, 0)


async def test_approval_then_approve_records_who_approved(
    database: Database,
    commands: CommandRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    await attach_policy(database, tenant_a, environment, approval=["home"])
    waiting = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="home"), actor=ACTOR
    )
    assert waiting.state is S.AWAITING_APPROVAL
    with pytest.raises(FailedPrecondition) as raised:
        await commands.transition(tenant_a.id, waiting.id, S.RUNNING, actor=ACTOR)
    assert raised.value.metadata == {"from": "AWAITING_APPROVAL", "to": "RUNNING"}
    approver = uuid.uuid4()
    approved = await commands.transition(
        tenant_a.id, waiting.id, S.PENDING, reason="looked at the cell", actor=approver
    )
    assert approved.state is S.PENDING
    last = approved.transitions[-1]
    assert (last.from_state, last.to_state, last.actor, last.reason) == (
        S.AWAITING_APPROVAL,
        S.PENDING,
        approver,
        "looked at the cell",
    )

    denied = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="home"), actor=ACTOR
    )
    rejected = await commands.transition(tenant_a.id, denied.id, S.REJECTED, actor=approver)
    assert [t.to_state for t in rejected.transitions] == [S.AWAITING_APPROVAL, S.REJECTED]


async def test_transitions_are_recorded_in_order_and_terminal_states_are_final(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    running = await commands.transition(tenant_a.id, created.id, S.RUNNING, actor=ACTOR)
    assert running.start_time is not None
    done = await commands.transition(tenant_a.id, created.id, S.COMPLETED, reason="ok", actor=ACTOR)
    assert [(t.from_state, t.to_state) for t in done.transitions] == [
        (None, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    times = [t.transition_time for t in done.transitions]
    assert times == sorted(times)
    assert done.update_time >= running.update_time >= created.update_time
    for target in (S.RUNNING, S.FAILED, S.CANCELLED, S.PENDING):
        with pytest.raises(FailedPrecondition) as raised:
            await commands.transition(tenant_a.id, created.id, target, actor=ACTOR)
        assert raised.value.reason == INVALID_TRANSITION
    assert await commands.get(tenant_a.id, created.id) == done


async def test_racing_transitions_never_both_win(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    for _ in range(5):
        created = await commands.create(
            tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
        )
        targets = [S.RUNNING, S.CANCELLED] * 4
        results = await asyncio.gather(
            *(commands.transition(tenant_a.id, created.id, t, actor=ACTOR) for t in targets),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        # RUNNING then CANCELLED is legal, so at most one of each kind wins, in that order.
        final = await commands.get(tenant_a.id, created.id)
        moves = [(t.from_state, t.to_state) for t in final.transitions[1:]]
        assert moves in (
            [(S.PENDING, S.RUNNING)],
            [(S.PENDING, S.CANCELLED)],
            [(S.PENDING, S.RUNNING), (S.RUNNING, S.CANCELLED)],
        )
        assert len(winners) == len(moves)
        assert all(
            isinstance(r, FailedPrecondition) and r.reason == INVALID_TRANSITION for r in losers
        )


async def test_racing_the_same_transition_has_one_winner(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    await commands.transition(tenant_a.id, created.id, S.RUNNING, actor=ACTOR)
    targets = [S.COMPLETED, S.FAILED, S.CANCELLED] * 4
    results = await asyncio.gather(
        *(commands.transition(tenant_a.id, created.id, t, actor=ACTOR) for t in targets),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    final = await commands.get(tenant_a.id, created.id)
    assert len(final.transitions) == 3
    assert final.state is winners[0].state  # type: ignore[union-attr]


async def test_delete_cancels_pending_removes_finished_and_refuses_running(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    pending = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    await commands.delete(tenant_a.id, pending.id, actor=ACTOR)
    cancelled = await commands.get(tenant_a.id, pending.id)
    assert cancelled.state is S.CANCELLED
    assert (cancelled.transitions[-1].reason, cancelled.transitions[-1].actor) == ("deleted", ACTOR)
    # Now terminal: a second DELETE removes it and its history.
    await commands.delete(tenant_a.id, pending.id, actor=ACTOR)
    with pytest.raises(NotFound):
        await commands.get(tenant_a.id, pending.id)
    assert await counts(database, tenant_a) == (0, 0)

    running = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    await commands.transition(tenant_a.id, running.id, S.RUNNING, actor=ACTOR)
    with pytest.raises(FailedPrecondition) as raised:
        await commands.delete(tenant_a.id, running.id, actor=ACTOR)
    assert raised.value.reason == "COMMAND_RUNNING"
    assert (await commands.get(tenant_a.id, running.id)).state is S.RUNNING
    with pytest.raises(NotFound):
        await commands.delete(tenant_a.id, uuid.uuid4(), actor=ACTOR)


async def test_the_same_key_and_body_return_the_original(
    database: Database,
    commands: CommandRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    host = await new_host(database, tenant_a)
    draft = CommandDraft(host_id=host, type="grip", params={"force": 5}, idempotency_key="k-1")
    first = await commands.create(tenant_a.id, draft, actor=ACTOR)
    again = await commands.create(tenant_a.id, draft, actor=uuid.uuid4())
    assert again == first
    dry = await commands.create(tenant_a.id, draft, actor=ACTOR, validate_only=True)
    assert dry == first
    assert await counts(database, tenant_a) == (1, 1)

    other_body = CommandDraft(host_id=host, type="grip", params={"force": 6}, idempotency_key="k-1")
    for validate_only in (False, True):
        with pytest.raises(AlreadyExists, match="k-1"):
            await commands.create(tenant_a.id, other_body, actor=ACTOR, validate_only=validate_only)
    assert await counts(database, tenant_a) == (1, 1)

    # Keys are per tenant.
    their_host = await new_host(database, tenant_b)
    theirs = await commands.create(
        tenant_b.id,
        CommandDraft(host_id=their_host, type="grip", idempotency_key="k-1"),
        actor=ACTOR,
    )
    assert theirs.id != first.id


async def test_concurrent_creates_with_one_key_make_one_command(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    draft = CommandDraft(host_id=host, type="grip", idempotency_key="race")
    results = await asyncio.gather(
        *(commands.create(tenant_a.id, draft, actor=ACTOR) for _ in range(6))
    )
    assert len({r.id for r in results}) == 1
    assert await counts(database, tenant_a) == (1, 1)


async def test_the_database_keeps_idempotency_keys_unique_per_tenant(
    database: Database, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    insert = (
        "INSERT INTO roz.commands (tenant_id, host_id, type, idempotency_key,"
        " request_fingerprint, state) VALUES (%s, %s, 'grip', 'same', %s, 'pending')"
    )
    host_a = await new_host(database, tenant_a)
    host_b = await new_host(database, tenant_b)
    await sql(database, tenant_a, insert, (tenant_a.id, host_a, b"a" * 32))
    await sql(database, tenant_b, insert, (tenant_b.id, host_b, b"b" * 32))
    with pytest.raises(errors.UniqueViolation) as raised:
        await sql(database, tenant_a, insert, (tenant_a.id, host_a, b"c" * 32))
    assert raised.value.diag.constraint_name == "commands_tenant_id_idempotency_key_key"


async def test_constraint_violations_become_domain_errors_without_database_text(
    database: Database, tenant_a: TenantWithKey
) -> None:
    insert = (
        "INSERT INTO roz.commands (tenant_id, host_id, type, timeout, state)"
        " VALUES (%s, %s, %s, %s, 'pending')"
    )
    host = await new_host(database, tenant_a)
    cases = [
        ((tenant_a.id, uuid.uuid4(), "grip", None), "command.host_id"),
        ((tenant_a.id, host, "no spaces", None), "command.type"),
        ((tenant_a.id, host, "grip", timedelta(days=8)), "command.timeout"),
    ]
    for params, field in cases:
        with pytest.raises(InvalidArgument) as raised, database_errors(RESOURCE, CONSTRAINTS):
            await sql(database, tenant_a, insert, params)
        assert [v.field for v in raised.value.violations] == [field]
        text = raised.value.message + " ".join(v.description for v in raised.value.violations)
        assert "commands_" not in text
        assert "violates" not in text
    with pytest.raises(InvalidArgument) as raised, database_errors(RESOURCE, CONSTRAINTS):
        await sql(
            database,
            tenant_a,
            "INSERT INTO roz.commands (tenant_id, host_id, type, state) VALUES (%s, %s, 'g', 'x')",
            (tenant_a.id, host),
        )
    assert "commands_state_check" not in raised.value.message


async def test_history_is_append_only_even_for_the_owner(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    for statement in (
        "UPDATE roz.command_transitions SET reason = 'rewritten' WHERE command_id = %s",
        "DELETE FROM roz.command_transitions WHERE command_id = %s",
    ):
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            await sql(database, tenant_a, statement, (created.id,))
        async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as owner:
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                await owner.execute(statement, (created.id,))
    async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as owner:
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            await owner.execute("TRUNCATE roz.command_transitions CASCADE")
    assert await commands.get(tenant_a.id, created.id) == created


async def test_rls_keeps_commands_and_history_in_their_tenant(
    database: Database,
    commands: CommandRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    seen = await sql(
        database,
        tenant_b,
        "SELECT (SELECT count(*) FROM roz.commands WHERE id = %s),"
        " (SELECT count(*) FROM roz.command_transitions WHERE command_id = %s)",
        (created.id, created.id),
    )
    assert seen == [(0, 0)]
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        await sql(
            database,
            tenant_b,
            "INSERT INTO roz.command_transitions (tenant_id, command_id, to_state)"
            " VALUES (%s, %s, 'running')",
            (tenant_a.id, created.id),
        )
    # B's own row cannot point at A's host: the composite foreign key keeps it in B's tenant.
    with pytest.raises(errors.ForeignKeyViolation):
        await sql(
            database,
            tenant_b,
            "INSERT INTO roz.commands (tenant_id, host_id, type, state)"
            " VALUES (%s, %s, 'grip', 'pending')",
            (tenant_b.id, host),
        )
    async with database.pool.connection() as conn:
        forced = await (
            await conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_policy p ON p.polrelid = c.oid WHERE n.nspname = 'roz'"
                " AND c.relrowsecurity AND c.relforcerowsecurity AND p.polqual IS NOT NULL"
                " AND p.polwithcheck IS NOT NULL AND c.relname = ANY(%s) ORDER BY 1",
                (list(TABLES),),
            )
        ).fetchall()
    assert [row[0] for row in forced] == sorted(TABLES)
    assert (await commands.get(tenant_a.id, created.id)) == created


async def test_another_tenants_command_is_not_found_and_untouched(
    database: Database,
    commands: CommandRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    with pytest.raises(NotFound):
        await commands.get(tenant_b.id, created.id)
    with pytest.raises(NotFound):
        await commands.transition(tenant_b.id, created.id, S.CANCELLED, actor=ACTOR)
    with pytest.raises(NotFound):
        await commands.delete(tenant_b.id, created.id, actor=ACTOR)
    assert (await commands.list(tenant_b.id, host_id=host)).items == ()
    assert await commands.get(tenant_a.id, created.id) == created


async def test_lists_filter_by_host_and_state_and_page(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    first, second = await new_host(database, tenant_a), await new_host(database, tenant_a)
    made = [
        await commands.create(tenant_a.id, CommandDraft(host_id=host, type=f"t{i}"), actor=ACTOR)
        for i, host in enumerate([first, second, first, first, second])
    ]
    await commands.transition(tenant_a.id, made[2].id, S.RUNNING, actor=ACTOR)
    on_first = await commands.list(tenant_a.id, host_id=first)
    assert [c.id for c in on_first.items] == [made[3].id, made[2].id, made[0].id]
    running = await commands.list(tenant_a.id, state=S.RUNNING)
    assert [c.id for c in running.items] == [made[2].id]
    pending_first = await commands.list(tenant_a.id, host_id=first, state=S.PENDING)
    assert [c.id for c in pending_first.items] == [made[3].id, made[0].id]

    page = await commands.list(tenant_a.id, host_id=first, page_size=2)
    rest = await commands.list(
        tenant_a.id, host_id=first, page_size=2, page_token=page.next_page_token
    )
    assert [c.id for c in page.items + rest.items] == [c.id for c in on_first.items]
    assert rest.next_page_token == ""
    with pytest.raises(InvalidArgument) as raised:
        await commands.list(tenant_a.id, host_id=second, page_token=page.next_page_token)
    assert [v.field for v in raised.value.violations] == ["page_token"]


async def test_a_policy_update_waits_for_a_create_that_read_it(
    database: Database,
    commands: CommandRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    """A create checks and inserts against the versions current at commit, never a stale one."""
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    policy = await attach_policy(database, tenant_a, environment, max_linear_velocity=2.0)
    draft = CommandDraft(host_id=host, type="move_to", params={"velocity": 1.5})

    # A policy update is under way (head row locked, version 2 written, not yet committed).
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        await new_version(conn, tenant_a, policy, max_linear_velocity=1.0)
        create = asyncio.create_task(commands.create(tenant_a.id, draft, actor=ACTOR))
        await asyncio.sleep(0.5)
        assert not create.done(), "the create did not wait for the policy update"
    # Committed: the create now reads version 2, whose limit the command exceeds.
    with pytest.raises(FailedPrecondition) as raised:
        await create
    assert raised.value.causes[0].metadata["policy_version"] == "2"

    # And the other way round: while a create holds the policy, the update waits for it.
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        await conn.execute("SELECT 1 FROM roz.safety_policies WHERE id = %s FOR SHARE", (policy,))

        async def update() -> None:
            async with tenant_transaction(database.pool, tenant_a.id) as other:
                await new_version(other, tenant_a, policy, max_linear_velocity=5.0)

        updating = asyncio.create_task(update())
        await asyncio.sleep(0.5)
        assert not updating.done()
    await updating
    created = await commands.create(tenant_a.id, draft, actor=ACTOR)
    assert created.applied_policies == (PolicyVersion(policy, 3),)


async def test_the_sweep_times_out_running_commands_after_their_timeout(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    quick = timedelta(milliseconds=300)
    waiting = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip", timeout=quick), actor=ACTOR
    )
    running = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip", timeout=quick), actor=ACTOR
    )
    untimed = await commands.create(
        tenant_a.id, CommandDraft(host_id=host, type="grip"), actor=ACTOR
    )
    await commands.transition(tenant_a.id, untimed.id, S.RUNNING, actor=ACTOR)
    await asyncio.sleep(0.4)  # `waiting` is past its timeout, but it never started running
    await commands.transition(tenant_a.id, running.id, S.RUNNING, actor=ACTOR)
    await commands.transition(tenant_a.id, waiting.id, S.RUNNING, actor=ACTOR)
    await commands.time_out_overdue()
    assert (await commands.get(tenant_a.id, waiting.id)).state is S.RUNNING
    assert (await commands.get(tenant_a.id, running.id)).state is S.RUNNING

    await asyncio.sleep(0.4)
    await commands.transition(tenant_a.id, waiting.id, S.COMPLETED, actor=ACTOR)
    assert await commands.time_out_overdue() >= 1
    timed_out = await commands.get(tenant_a.id, running.id)
    assert timed_out.state is S.TIMED_OUT
    last = timed_out.transitions[-1]
    assert (last.from_state, last.to_state, last.actor) == (S.RUNNING, S.TIMED_OUT, None)
    assert (await commands.get(tenant_a.id, waiting.id)).state is S.COMPLETED
    assert (await commands.get(tenant_a.id, untimed.id)).state is S.RUNNING
    # Once is enough: nothing left for a second sweep (or another process) to do.
    assert await commands.time_out_overdue() == 0
    assert len((await commands.get(tenant_a.id, running.id)).transitions) == 3


async def test_concurrent_sweeps_time_out_each_command_once(
    database: Database, commands: CommandRepository, tenant_a: TenantWithKey
) -> None:
    host = await new_host(database, tenant_a)
    made = [
        await commands.create(
            tenant_a.id,
            CommandDraft(host_id=host, type="grip", timeout=timedelta(milliseconds=100)),
            actor=ACTOR,
        )
        for _ in range(6)
    ]
    for command in made:
        await commands.transition(tenant_a.id, command.id, S.RUNNING, actor=ACTOR)
    await asyncio.sleep(0.2)
    # Three "server processes" sweep at once, while a client completes one of the commands.
    results = await asyncio.gather(
        *(commands.time_out_overdue() for _ in range(3)),
        commands.transition(tenant_a.id, made[0].id, S.COMPLETED, actor=ACTOR),
        return_exceptions=True,
    )
    for command in made:
        final = await commands.get(tenant_a.id, command.id)
        assert final.state in (S.TIMED_OUT, S.COMPLETED)
        assert [t.to_state for t in final.transitions][:2] == [S.PENDING, S.RUNNING]
        assert len(final.transitions) == 3
    client = results[-1]
    first = await commands.get(tenant_a.id, made[0].id)
    if isinstance(client, BaseException):
        assert isinstance(client, FailedPrecondition)
        assert first.state is S.TIMED_OUT
    else:
        assert first.state is S.COMPLETED
