"""The delivery log in the database: what enters it and when, gap-free numbering under
concurrency, reading after a sequence, cumulative acknowledgement, tenancy, the wake-up NOTIFY
and the host's deletion.

Hosts, environments and approval policies are written with plain SQL on the request role (under
RLS); commands and tasks go through their repositories, which do the enqueueing.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from server.domain.commands import CommandDraft, CommandState
from server.domain.errors import InvalidArgument, NotFound
from server.domain.robot_deliveries import Delivery, DeliveryKind
from server.domain.tasks import TaskDraft, TaskState
from server.storage.commands import CommandRepository
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.hosts import HostRepository
from server.storage.robot_deliveries import CHANNEL, RobotDeliveryRepository, enqueue
from server.storage.robot_links import RobotLinkRepository
from server.storage.tasks import TaskRepository
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey, new_environment, new_host, sql

K = DeliveryKind
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def deliveries(database: Database) -> RobotDeliveryRepository:
    return RobotDeliveryRepository(database.pool)


@pytest.fixture
def links(database: Database) -> RobotLinkRepository:
    return RobotLinkRepository(database.pool)


@pytest.fixture
def commands(database: Database) -> CommandRepository:
    return CommandRepository(database.pool)


@pytest.fixture
def tasks(database: Database) -> TaskRepository:
    return TaskRepository(database.pool)


async def require_approval(
    database: Database, tenant: TenantWithKey, environment_id: uuid.UUID, command_type: str
) -> None:
    async with tenant_transaction(database.pool, tenant.id) as conn:
        row = await (
            await conn.execute(
                "INSERT INTO roz.safety_policies (tenant_id, name) VALUES (%s, %s) RETURNING id",
                (tenant.id, f"policy-{uuid.uuid4().hex[:8]}"),
            )
        ).fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name,"
            " workspace, approval_command_types) VALUES (%s, %s, 1, 'p', %s, %s)",
            (tenant.id, row[0], Jsonb({"boxes": [], "prisms": []}), [command_type]),
        )
        await conn.execute(
            "INSERT INTO roz.environment_safety_policies"
            " (tenant_id, environment_id, safety_policy_id, position) VALUES (%s, %s, %s, 0)",
            (tenant.id, environment_id, row[0]),
        )


def command(host_id: uuid.UUID, type_: str = "move_to") -> CommandDraft:
    return CommandDraft(host_id=host_id, type=type_)


def task(environment_id: uuid.UUID, host_id: uuid.UUID | None) -> TaskDraft:
    return TaskDraft(
        prompt="tidy up",
        environment_id=environment_id,
        host_id=host_id or "",
        timeout=timedelta(minutes=5),
    )


async def after(
    links: RobotLinkRepository,
    tenant_id: uuid.UUID,
    host_id: uuid.UUID,
    sequence: int,
    limit: int = 100,
) -> list[Delivery]:
    """The host's log above `sequence`, as a robot's stream reads it (with the items)."""
    return [delivery for delivery, _ in await links.outgoing(tenant_id, host_id, sequence, limit)]


async def log_of(
    links: RobotLinkRepository, tenant: TenantWithKey, host_id: uuid.UUID
) -> list[tuple[int, DeliveryKind, uuid.UUID]]:
    return [
        (d.sequence, d.kind, d.item_id)
        for d in await after(links, tenant.id, host_id, 0, limit=1000)
    ]


async def test_pending_commands_are_numbered_from_one_in_order(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    first = await commands.create(tenant_a.id, command(host), actor=None)
    second = await commands.create(tenant_a.id, command(host), actor=None)

    assert first.state is CommandState.PENDING
    assert await log_of(links, tenant_a, host) == [
        (1, K.COMMAND, first.id),
        (2, K.COMMAND, second.id),
    ]
    assert await deliveries.last_sequence(tenant_a.id, host) == 2


async def test_a_command_awaiting_approval_is_enqueued_when_approved(
    database: Database,
    tenant_a: TenantWithKey,
    environments: EnvironmentRepository,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    environment = await new_environment(environments, tenant_a)
    await require_approval(database, tenant_a, environment, "lift")
    host = await new_host(database, tenant_a, environment)

    waiting = await commands.create(tenant_a.id, command(host, "lift"), actor=None)
    assert waiting.state is CommandState.AWAITING_APPROVAL
    assert await log_of(links, tenant_a, host) == []
    assert await deliveries.last_sequence(tenant_a.id, host) == 0

    await commands.transition(tenant_a.id, waiting.id, CommandState.PENDING, actor=None)
    assert await log_of(links, tenant_a, host) == [(1, K.COMMAND, waiting.id)]


async def test_a_rejected_or_cancelled_unapproved_command_is_never_enqueued(
    database: Database,
    tenant_a: TenantWithKey,
    environments: EnvironmentRepository,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    environment = await new_environment(environments, tenant_a)
    await require_approval(database, tenant_a, environment, "lift")
    host = await new_host(database, tenant_a, environment)
    rejected = await commands.create(tenant_a.id, command(host, "lift"), actor=None)
    cancelled = await commands.create(tenant_a.id, command(host, "lift"), actor=None)

    await commands.transition(tenant_a.id, rejected.id, CommandState.REJECTED, actor=None)
    await commands.delete(tenant_a.id, cancelled.id, actor=None)

    assert await log_of(links, tenant_a, host) == []


async def test_cancelling_a_delivered_command_enqueues_its_cancellation(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    by_transition = await commands.create(tenant_a.id, command(host), actor=None)
    by_delete = await commands.create(tenant_a.id, command(host), actor=None)

    await commands.transition(tenant_a.id, by_transition.id, CommandState.CANCELLED, actor=None)
    await commands.delete(tenant_a.id, by_delete.id, actor=None)

    assert await log_of(links, tenant_a, host) == [
        (1, K.COMMAND, by_transition.id),
        (2, K.COMMAND, by_delete.id),
        (3, K.CANCEL_COMMAND, by_transition.id),
        (4, K.CANCEL_COMMAND, by_delete.id),
    ]


async def test_a_queued_task_with_a_host_is_enqueued_and_one_without_is_not(
    database: Database,
    tenant_a: TenantWithKey,
    environments: EnvironmentRepository,
    tasks: TaskRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    placed = await tasks.create(tenant_a.id, task(environment, host))
    unplaced = await tasks.create(tenant_a.id, task(environment, None))
    assert await log_of(links, tenant_a, host) == []  # PENDING is not for the robot yet

    await tasks.transition(tenant_a.id, placed.id, TaskState.QUEUED)
    await tasks.transition(tenant_a.id, unplaced.id, TaskState.QUEUED)
    assert await log_of(links, tenant_a, host) == [(1, K.TASK, placed.id)]
    rows = await sql(database, tenant_a, "SELECT count(*) FROM roz.robot_deliveries")
    assert rows == [(1,)]

    await tasks.transition(tenant_a.id, placed.id, TaskState.CANCELLED)
    assert await log_of(links, tenant_a, host) == [
        (1, K.TASK, placed.id),
        (2, K.CANCEL_TASK, placed.id),
    ]


async def test_ten_concurrent_creates_for_one_host_get_one_to_ten(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    created = await asyncio.gather(
        *(commands.create(tenant_a.id, command(host), actor=None) for _ in range(10))
    )

    log = await log_of(links, tenant_a, host)
    assert [sequence for sequence, _, _ in log] == list(range(1, 11))
    assert {item for _, _, item in log} == {c.id for c in created}
    assert await deliveries.last_sequence(tenant_a.id, host) == 10


async def test_after_returns_the_deliveries_above_a_sequence_in_order_up_to_a_limit(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    for _ in range(5):
        await commands.create(tenant_a.id, command(host), actor=None)

    assert [d.sequence for d in await after(links, tenant_a.id, host, 2, limit=2)] == [3, 4]
    assert [d.sequence for d in await after(links, tenant_a.id, host, 3)] == [4, 5]
    assert await after(links, tenant_a.id, host, 5) == []
    with pytest.raises(InvalidArgument):
        await after(links, tenant_a.id, host, -1)
    with pytest.raises(InvalidArgument):
        await after(links, tenant_a.id, host, 0, limit=0)


async def test_acknowledge_is_cumulative_monotonic_and_refuses_the_never_sent(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    created = [await commands.create(tenant_a.id, command(host), actor=None) for _ in range(3)]

    assert await deliveries.acknowledge(tenant_a.id, host, 2, now=NOW) == 2
    later = NOW + timedelta(seconds=1)
    assert await deliveries.acknowledge(tenant_a.id, host, 1, now=later) == 2  # late: ignored
    assert await deliveries.acknowledge(tenant_a.id, host, 2, now=later) == 2  # repeated
    with pytest.raises(InvalidArgument):
        await deliveries.acknowledge(tenant_a.id, host, 4, now=later)  # never sent
    with pytest.raises(InvalidArgument):
        await deliveries.acknowledge(tenant_a.id, host, -1, now=later)

    log = await after(links, tenant_a.id, host, 0)
    assert [d.acknowledge_time for d in log] == [NOW, NOW, None]
    rows = await sql(
        database,
        tenant_a,
        "SELECT id, acknowledge_time FROM roz.commands WHERE host_id = %s",
        (host,),
    )
    assert dict(rows) == {created[0].id: NOW, created[1].id: NOW, created[2].id: None}
    assert await deliveries.acknowledged_sequence(tenant_a.id, host) == 2

    assert await deliveries.acknowledge(tenant_a.id, host, 3, now=later) == 3
    log = await after(links, tenant_a.id, host, 0)
    assert [d.acknowledge_time for d in log] == [NOW, NOW, later]


async def test_acknowledge_before_any_delivery_accepts_only_zero(
    database: Database, tenant_a: TenantWithKey, deliveries: RobotDeliveryRepository
) -> None:
    host = await new_host(database, tenant_a)
    assert await deliveries.acknowledge(tenant_a.id, host, 0, now=NOW) == 0
    with pytest.raises(InvalidArgument):
        await deliveries.acknowledge(tenant_a.id, host, 1, now=NOW)
    with pytest.raises(NotFound):
        await deliveries.acknowledge(tenant_a.id, uuid.uuid4(), 0, now=NOW)


async def test_mark_delivered_records_the_first_send_on_the_log_and_the_items(
    database: Database,
    tenant_a: TenantWithKey,
    environments: EnvironmentRepository,
    commands: CommandRepository,
    tasks: TaskRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    environment = await new_environment(environments, tenant_a)
    host = await new_host(database, tenant_a, environment)
    sent = await commands.create(tenant_a.id, command(host), actor=None)
    queued = await tasks.create(tenant_a.id, task(environment, host))
    await tasks.transition(tenant_a.id, queued.id, TaskState.QUEUED)
    unsent = await commands.create(tenant_a.id, command(host), actor=None)

    assert await deliveries.mark_delivered(tenant_a.id, host, 0, 2, now=NOW) == 2
    resend = NOW + timedelta(seconds=5)
    assert await deliveries.mark_delivered(tenant_a.id, host, 0, 2, now=resend) == 0

    log = await sql(
        database,
        tenant_a,
        "SELECT deliver_time FROM roz.robot_deliveries WHERE host_id = %s ORDER BY sequence",
        (host,),
    )
    assert [row[0] for row in log] == [NOW, NOW, None]
    times = await sql(
        database,
        tenant_a,
        "SELECT id, deliver_time FROM roz.commands UNION ALL"
        " SELECT id, deliver_time FROM roz.tasks",
    )
    assert dict(times) == {sent.id: NOW, queued.id: NOW, unsent.id: None}


async def test_another_tenant_sees_none_of_a_hosts_deliveries(
    database: Database,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    await commands.create(tenant_a.id, command(host), actor=None)

    assert await after(links, tenant_b.id, host, 0) == []
    with pytest.raises(NotFound):
        await deliveries.last_sequence(tenant_b.id, host)
    with pytest.raises(NotFound):
        await deliveries.acknowledge(tenant_b.id, host, 1, now=NOW)
    for table in ("robot_deliveries", "robot_links"):
        assert await sql(database, tenant_b, f"SELECT count(*) FROM roz.{table}") == [(0,)]
    # Nothing changed for the owner either.
    assert await deliveries.acknowledged_sequence(tenant_a.id, host) == 0
    assert len(await after(links, tenant_a.id, host, 0)) == 1


async def test_an_enqueue_notifies_listeners_with_only_the_host_id(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
) -> None:
    host = await new_host(database, tenant_a)
    async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        await commands.create(tenant_a.id, command(host), actor=None)
        received = [n async for n in listener.notifies(timeout=10, stop_after=1)]

    assert [(n.channel, n.payload) for n in received] == [(CHANNEL, str(host))]


async def enqueue_then_fail(database: Database, tenant: TenantWithKey, host: uuid.UUID) -> None:
    async with tenant_transaction(database.pool, tenant.id) as conn:
        assert await enqueue(conn, host, K.COMMAND, uuid.uuid4()) == 1
        raise RuntimeError("the item's change failed")


async def test_a_rolled_back_change_neither_numbers_nor_notifies(
    database: Database, tenant_a: TenantWithKey, commands: CommandRepository
) -> None:
    rolled_back, committed = await new_host(database, tenant_a), await new_host(database, tenant_a)
    async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        with pytest.raises(RuntimeError):
            await enqueue_then_fail(database, tenant_a, rolled_back)
        # Notifications arrive in commit order: the first one must be this later commit's.
        await commands.create(tenant_a.id, command(committed), actor=None)
        received = [n async for n in listener.notifies(timeout=10, stop_after=1)]

    assert [n.payload for n in received] == [str(committed)]
    assert await sql(database, tenant_a, "SELECT count(*) FROM roz.robot_deliveries") == [(1,)]


async def test_deleting_the_host_deletes_its_deliveries(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    deliveries: RobotDeliveryRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    created = await commands.create(tenant_a.id, command(host), actor=None)
    await commands.transition(tenant_a.id, created.id, CommandState.CANCELLED, actor=None)
    await commands.delete(tenant_a.id, created.id, actor=None)  # finished: removed
    assert len(await after(links, tenant_a.id, host, 0)) == 2

    await HostRepository(database.pool).delete(tenant_a.id, host)

    for table in ("robot_deliveries", "robot_links"):
        assert await sql(database, tenant_a, f"SELECT count(*) FROM roz.{table}") == [(0,)]
