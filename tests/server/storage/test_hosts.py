"""Hosts in the database: registration, status history (append-only), links, isolation, pages."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import psycopg
import pytest
from psycopg import AsyncConnection, errors

from server.domain.environments import EnvironmentDraft
from server.domain.errors import AlreadyExists, DomainError, InvalidArgument, NotFound
from server.domain.hosts import HostDraft, HostKind, HostStatus, StatusChange
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.errors import database_errors
from server.storage.hosts import HostRepository
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey

HOST_TABLES = ("hosts", "host_status_changes")


@pytest.fixture
def hosts(database: Database) -> HostRepository:
    return HostRepository(database.pool)


def _status(status: HostStatus, reason: str = "") -> StatusChange:
    return StatusChange.of(status, reason)


async def _all_changes(hosts: HostRepository, tenant: TenantWithKey, host_id: uuid.UUID) -> list:  # type: ignore[type-arg]
    changes = []
    token = ""
    while True:
        page = await hosts.list_status_changes(tenant.id, host_id, page_size=2, page_token=token)
        changes.extend(page.items)
        token = page.next_page_token
        if not token:
            return changes


async def test_a_new_host_is_offline_never_seen_and_its_registration_is_recorded(
    hosts: HostRepository, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    environment = await environments.create(tenant_a.id, EnvironmentDraft(name="cell"))
    actor = uuid.uuid4()
    created = await hosts.create(
        tenant_a.id,
        HostDraft(
            name="arm-1",
            kind=HostKind.CLOUD,
            environment_id=str(environment.id),
            capabilities=("arm", "camera:rgb"),
            labels={"site": "berlin"},
        ),
        changed_by_key_id=actor,
    )
    assert (created.status, created.last_seen_time, created.kind) == (
        HostStatus.OFFLINE,
        None,
        HostKind.CLOUD,
    )
    assert (created.environment_id, created.capabilities, created.labels) == (
        environment.id,
        ("arm", "camera:rgb"),
        {"site": "berlin"},
    )
    assert created.create_time == created.update_time
    assert await hosts.get(tenant_a.id, str(created.id)) == created
    (registration,) = (await hosts.list_status_changes(tenant_a.id, created.id)).items
    assert (registration.from_status, registration.to_status, registration.reason) == (
        None,
        HostStatus.OFFLINE,
        "registered",
    )
    assert registration.changed_by_key_id == actor
    assert registration.create_time == created.create_time


async def test_status_changes_are_recorded_in_order_with_who_and_why(
    hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    host = await hosts.create(tenant_a.id, HostDraft(name="rover"))
    operator = uuid.uuid4()
    online = await hosts.update_status(
        tenant_a.id, host.id, _status(HostStatus.ONLINE, "booted"), operator
    )
    assert online.status == HostStatus.ONLINE
    assert online.last_seen_time is not None
    assert online.update_time > host.update_time
    offline = await hosts.update_status(
        tenant_a.id, host.id, _status(HostStatus.OFFLINE, "battery"), operator
    )
    # Going offline keeps the last time it was seen.
    assert offline.last_seen_time == online.last_seen_time
    degraded = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.DEGRADED))
    assert degraded.last_seen_time is not None
    assert online.last_seen_time is not None
    assert degraded.last_seen_time > online.last_seen_time
    maintenance = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.MAINTENANCE))
    assert maintenance.last_seen_time == degraded.last_seen_time

    history = await _all_changes(hosts, tenant_a, host.id)
    assert [(c.from_status, c.to_status, c.reason) for c in reversed(history)] == [
        (None, HostStatus.OFFLINE, "registered"),
        (HostStatus.OFFLINE, HostStatus.ONLINE, "booted"),
        (HostStatus.ONLINE, HostStatus.OFFLINE, "battery"),
        (HostStatus.OFFLINE, HostStatus.DEGRADED, ""),
        (HostStatus.DEGRADED, HostStatus.MAINTENANCE, ""),
    ]
    assert [c.changed_by_key_id for c in reversed(history)][1:3] == [operator, operator]
    assert history[0].create_time == maintenance.update_time


async def test_reporting_the_same_status_is_a_heartbeat_not_a_change(
    hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    host = await hosts.create(tenant_a.id, HostDraft(name="beat"))
    online = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.ONLINE))
    again = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.ONLINE))
    assert again.last_seen_time is not None
    assert online.last_seen_time is not None
    assert again.last_seen_time > online.last_seen_time
    assert again.update_time == online.update_time
    offline = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.OFFLINE))
    still = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.OFFLINE))
    assert still == offline
    assert len(await _all_changes(hosts, tenant_a, host.id)) == 3


async def test_concurrent_status_changes_form_one_unbroken_chain(
    hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    host = await hosts.create(tenant_a.id, HostDraft(name="contended"))
    targets = [HostStatus.ONLINE, HostStatus.DEGRADED, HostStatus.MAINTENANCE, HostStatus.OFFLINE]
    await asyncio.gather(
        *(
            hosts.update_status(tenant_a.id, host.id, _status(targets[i % 4], f"r{i}"))
            for i in range(12)
        )
    )
    oldest_first = list(reversed(await _all_changes(hosts, tenant_a, host.id)))
    # Each change replaced exactly the status the previous one set: none was lost or reordered.
    for previous, change in itertools.pairwise(oldest_first):
        assert change.from_status == previous.to_status
        assert change.create_time > previous.create_time
    assert (await hosts.get(tenant_a.id, host.id)).status == oldest_first[-1].to_status


async def test_names_are_unique_per_tenant_only(
    hosts: HostRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    first = await hosts.create(tenant_a.id, HostDraft(name="twin"))
    with pytest.raises(AlreadyExists, match="'twin'") as raised:
        await hosts.create(tenant_a.id, HostDraft(name="twin"))
    assert "hosts_tenant_id_name_key" not in str(raised.value)
    assert (await hosts.create(tenant_b.id, HostDraft(name="twin"))).id != first.id
    second = await hosts.create(tenant_a.id, HostDraft(name="twin-2"))
    with pytest.raises(AlreadyExists):
        await hosts.update(tenant_a.id, second.id, HostDraft(name="twin"), {"name"})
    assert (await hosts.get(tenant_a.id, second.id)).name == "twin-2"


async def test_the_environment_must_exist_in_the_tenant(
    hosts: HostRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    theirs = await environments.create(tenant_b.id, EnvironmentDraft(name="their-cell"))
    missing = uuid.uuid4()
    descriptions = []
    for environment_id in (theirs.id, missing):
        with pytest.raises(InvalidArgument) as raised:
            await hosts.create(tenant_a.id, HostDraft(name="h", environment_id=environment_id))
        (violation,) = raised.value.violations
        assert violation.field == "host.environment_id"
        descriptions.append(violation.description)
    # Another tenant's environment reads exactly like one that does not exist.
    assert descriptions == [
        f"environment {theirs.id} not found",
        f"environment {missing} not found",
    ]
    assert (await hosts.list(tenant_a.id)).items == ()
    assert (await environments.get(tenant_b.id, theirs.id)).host_ids == ()

    mine = await hosts.create(tenant_a.id, HostDraft(name="h"))
    with pytest.raises(InvalidArgument):
        await hosts.update(
            tenant_a.id, mine.id, HostDraft(environment_id=theirs.id), {"environment_id"}
        )
    assert (await hosts.get(tenant_a.id, mine.id)).environment_id is None


async def test_updates_replace_or_mask_and_never_touch_the_status(
    hosts: HostRepository, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    environment = await environments.create(tenant_a.id, EnvironmentDraft(name="u-cell"))
    host = await hosts.create(
        tenant_a.id,
        HostDraft(
            name="u", capabilities=("arm",), labels={"a": "1"}, environment_id=environment.id
        ),
    )
    online = await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.ONLINE))
    masked = await hosts.update(tenant_a.id, host.id, HostDraft(labels={"b": "2"}), {"labels"})
    assert (masked.name, masked.capabilities, masked.labels, masked.environment_id) == (
        "u",
        ("arm",),
        {"b": "2"},
        environment.id,
    )
    assert (masked.status, masked.last_seen_time) == (HostStatus.ONLINE, online.last_seen_time)
    replaced = await hosts.update(tenant_a.id, host.id, HostDraft(name="u2"))
    # No mask: every settable field is replaced, so the environment is left.
    assert (replaced.name, replaced.kind, replaced.capabilities, replaced.labels) == (
        "u2",
        HostKind.EDGE,
        (),
        {},
    )
    assert replaced.environment_id is None
    assert replaced.status == HostStatus.ONLINE
    with pytest.raises(InvalidArgument) as raised:
        await hosts.update(tenant_a.id, host.id, HostDraft(name=""), {"name"})
    assert [v.field for v in raised.value.violations] == ["host.name"]
    assert await hosts.get(tenant_a.id, host.id) == replaced


async def test_lists_filter_by_status_and_environment_and_page(
    hosts: HostRepository, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    cell = await environments.create(tenant_a.id, EnvironmentDraft(name="f-cell"))
    in_cell = [
        await hosts.create(tenant_a.id, HostDraft(name=f"c{i}", environment_id=cell.id))
        for i in range(5)
    ]
    loose = [await hosts.create(tenant_a.id, HostDraft(name=f"l{i}")) for i in range(3)]
    for host in (in_cell[0], in_cell[3], loose[1]):
        await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.ONLINE))

    async def walk(**filters: object) -> list[uuid.UUID]:
        seen: list[uuid.UUID] = []
        token = ""
        while True:
            page = await hosts.list(tenant_a.id, page_size=2, page_token=token, **filters)  # type: ignore[arg-type]
            seen.extend(h.id for h in page.items)
            token = page.next_page_token
            if not token:
                return seen

    assert await walk() == [h.id for h in reversed(in_cell + loose)]
    assert await walk(environment_id=cell.id) == [h.id for h in reversed(in_cell)]
    assert await walk(status=HostStatus.ONLINE) == [loose[1].id, in_cell[3].id, in_cell[0].id]
    assert await walk(status=HostStatus.ONLINE, environment_id=cell.id) == [
        in_cell[3].id,
        in_cell[0].id,
    ]
    assert await walk(status=HostStatus.MAINTENANCE) == []
    # A token only continues the query it came from.
    token = (await hosts.list(tenant_a.id, page_size=1, environment_id=cell.id)).next_page_token
    with pytest.raises(InvalidArgument) as raised:
        await hosts.list(tenant_a.id, page_token=token, status=HostStatus.ONLINE)
    assert [v.field for v in raised.value.violations] == ["page_token"]


async def test_another_tenants_host_is_not_found_and_untouched(
    hosts: HostRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    theirs = await hosts.create(tenant_a.id, HostDraft(name="private", labels={"k": "v"}))
    calls = (
        hosts.get(tenant_b.id, theirs.id),
        hosts.update(tenant_b.id, theirs.id, HostDraft(name="taken")),
        hosts.update(tenant_b.id, theirs.id, HostDraft(name="taken"), {"name"}),
        hosts.update_status(tenant_b.id, theirs.id, _status(HostStatus.MAINTENANCE)),
        hosts.list_status_changes(tenant_b.id, theirs.id),
        hosts.delete(tenant_b.id, theirs.id),
    )
    for attempt in calls:
        with pytest.raises(NotFound) as raised:
            await attempt
        assert raised.value.resource == "host"
    assert theirs.id not in {h.id for h in (await hosts.list(tenant_b.id, page_size=1000)).items}
    assert await hosts.get(tenant_a.id, theirs.id) == theirs
    assert len((await hosts.list_status_changes(tenant_a.id, theirs.id)).items) == 1


@pytest.mark.parametrize("bad_id", ["nope", "", str(uuid.uuid4()) + "0"])
async def test_a_malformed_or_unknown_id_is_not_found(
    hosts: HostRepository, tenant_a: TenantWithKey, bad_id: str
) -> None:
    for missing in (bad_id, str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await hosts.get(tenant_a.id, missing)
        with pytest.raises(NotFound):
            await hosts.update_status(tenant_a.id, missing, _status(HostStatus.ONLINE))
        with pytest.raises(NotFound):
            await hosts.delete(tenant_a.id, missing)


async def test_deleting_a_host_removes_its_history_and_frees_its_environment(
    database: Database,
    hosts: HostRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    environment = await environments.create(tenant_a.id, EnvironmentDraft(name="d-cell"))
    host = await hosts.create(tenant_a.id, HostDraft(name="gone", environment_id=environment.id))
    await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.ONLINE))
    await hosts.delete(tenant_a.id, host.id)
    with pytest.raises(NotFound):
        await hosts.get(tenant_a.id, host.id)
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        left = await (
            await conn.execute(
                "SELECT count(*) FROM roz.host_status_changes WHERE host_id = %s", (host.id,)
            )
        ).fetchone()
    assert left == (0,)
    await environments.delete(tenant_a.id, environment.id)


async def test_history_is_append_only_even_for_the_owner(
    database: Database, hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    host = await hosts.create(tenant_a.id, HostDraft(name="audited"))
    await hosts.update_status(tenant_a.id, host.id, _status(HostStatus.ONLINE, "up"))
    statements = (
        "UPDATE roz.host_status_changes SET reason = 'rewritten' WHERE host_id = %s",
        "UPDATE roz.host_status_changes SET to_status = 'offline' WHERE host_id = %s",
        "DELETE FROM roz.host_status_changes WHERE host_id = %s",
    )
    for statement in statements:
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            async with tenant_transaction(database.pool, tenant_a.id) as conn:
                await conn.execute(statement, (host.id,))
        async with await AsyncConnection.connect(database.owner_dsn) as conn:
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                await conn.execute(statement, (host.id,))
    history = (await hosts.list_status_changes(tenant_a.id, host.id)).items
    assert [(c.to_status, c.reason) for c in history] == [
        (HostStatus.ONLINE, "up"),
        (HostStatus.OFFLINE, "registered"),
    ]


async def test_every_host_table_forces_rls_with_using_and_with_check(database: Database) -> None:
    async with database.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
                " p.polqual IS NOT NULL, p.polwithcheck IS NOT NULL"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_policy p ON p.polrelid = c.oid"
                " WHERE n.nspname = 'roz' AND c.relname = ANY(%s)",
                (list(HOST_TABLES),),
            )
        ).fetchall()
    assert sorted(rows) == [(table, True, True, True, True) for table in sorted(HOST_TABLES)]


async def test_another_tenants_rows_are_invisible_even_without_a_filter(
    database: Database, hosts: HostRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    host = await hosts.create(tenant_a.id, HostDraft(name="hidden"))
    async with tenant_transaction(database.pool, tenant_b.id) as conn:
        for table, column in (("hosts", "id"), ("host_status_changes", "host_id")):
            row = await (
                await conn.execute(
                    f"SELECT count(*) FROM roz.{table} WHERE {column} = %s", (host.id,)
                )
            ).fetchone()
            assert row == (0,), table
            tenants = await (
                await conn.execute(f"SELECT DISTINCT tenant_id FROM roz.{table}")
            ).fetchall()
            assert tenant_a.id not in {t[0] for t in tenants}


async def test_cross_tenant_writes_are_refused(
    database: Database, hosts: HostRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    host = await hosts.create(tenant_a.id, HostDraft(name="target"))
    # A row carrying another tenant's id: refused by the WITH CHECK policy.
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.hosts (tenant_id, name) VALUES (%s, 'smuggled')", (tenant_a.id,)
            )
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.host_status_changes (tenant_id, host_id, to_status)"
                " VALUES (%s, %s, 'online')",
                (tenant_a.id, host.id),
            )
    # A row of one's own tenant pointing at another tenant's host: refused by the composite key.
    with pytest.raises(errors.ForeignKeyViolation):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.host_status_changes (tenant_id, host_id, to_status)"
                " VALUES (%s, %s, 'online')",
                (tenant_b.id, host.id),
            )
    # Nor can an update move a host into another tenant.
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute(
                "UPDATE roz.hosts SET tenant_id = %s WHERE id = %s", (tenant_b.id, host.id)
            )
    assert await hosts.get(tenant_a.id, host.id) == host
    assert len((await hosts.list_status_changes(tenant_a.id, host.id)).items) == 1


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "INSERT INTO roz.hosts (tenant_id, name, status) VALUES (%s, 'x', 'asleep')",
            InvalidArgument,
        ),
        (
            "INSERT INTO roz.hosts (tenant_id, name, kind) VALUES (%s, 'x', 'orbital')",
            InvalidArgument,
        ),
        ("INSERT INTO roz.hosts (tenant_id, name) VALUES (%s, repeat('n', 129))", InvalidArgument),
        (
            "INSERT INTO roz.hosts (tenant_id, name, environment_id)"
            " VALUES (%s, 'x', gen_random_uuid())",
            InvalidArgument,
        ),
    ],
)
async def test_the_databases_own_checks_become_domain_errors(
    database: Database, tenant_a: TenantWithKey, statement: str, expected: type[DomainError]
) -> None:
    with pytest.raises(expected) as raised, database_errors("host"):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute(statement, (tenant_a.id,))
    assert isinstance(raised.value.__cause__, psycopg.Error)
    for word in ("violates", "constraint", "hosts_", "DETAIL"):
        assert word not in str(raised.value)
