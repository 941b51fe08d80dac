"""Safety policies in the database: versions kept (append-only), names, use by environments,
isolation, and the lookup the command check relies on."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import psycopg
import pytest
from psycopg import AsyncConnection, errors

from server.domain.environments import EnvironmentDraft
from server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from server.domain.hosts import HostDraft
from server.domain.safety_policies import (
    MAX_APPROVAL_TTL,
    MAX_HEARTBEAT_WINDOW,
    MIN_APPROVAL_TTL,
    MIN_HEARTBEAT_WINDOW,
    Box,
    Limits,
    Point,
    Prism,
    SafetyPolicyDraft,
    Workspace,
)
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.errors import database_errors
from server.storage.hosts import HostRepository
from server.storage.safety_policies import (
    SafetyPolicyRepository,
    heartbeat_window_of_host,
    latest_policies_for_environment,
)
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey, new_host

POLICY_TABLES = ("environment_safety_policies", "safety_policies", "safety_policy_versions")

FULL = SafetyPolicyDraft(
    name="pick-line",
    description="UR5 cell",
    limits=Limits(max_linear_velocity=0.25, max_acceleration=1.5, max_force=0.1 + 0.2),
    workspace=Workspace(
        boxes=(Box(Point(-0.5, -0.5, 0.0), Point(0.5, 0.5, 1.2)),),
        prisms=(
            Prism(
                (Point(0, 0, 0), Point(3, 0, 0), Point(3, 1, 0), Point(1e-9, 2.5, 0)),
                min_z=0.1,
                max_z=2.0,
            ),
        ),
    ),
    allowed_command_types=("move", "grip", "estop"),
    denied_command_types=("weld",),
    approval_command_types=("grip",),
)


@pytest.fixture
def policies(database: Database) -> SafetyPolicyRepository:
    return SafetyPolicyRepository(database.pool)


def _named(name: str, **fields: object) -> SafetyPolicyDraft:
    return SafetyPolicyDraft(name=name, **fields)  # type: ignore[arg-type]


async def test_create_is_version_one_and_round_trips_every_field(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    created = await policies.create(tenant_a.id, FULL)
    assert (created.tenant_id, created.name, created.description, created.version) == (
        tenant_a.id,
        "pick-line",
        "UR5 cell",
        1,
    )
    # Floats come back bit for bit (0.1 + 0.2 is not 0.3), unset limits stay unset.
    assert created.limits == Limits(0.25, 1.5, 0.1 + 0.2, None)
    assert created.workspace == FULL.workspace
    assert created.allowed_command_types == frozenset({"move", "grip", "estop"})
    assert created.denied_command_types == frozenset({"weld"})
    assert created.approval_command_types == frozenset({"grip"})
    assert created.create_time == created.update_time
    assert await policies.get(tenant_a.id, str(created.id)) == created
    assert await policies.get(tenant_a.id, created.id, 1) == created


async def test_every_update_is_a_new_version_and_old_ones_stay_readable(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    v1 = await policies.create(tenant_a.id, FULL)
    v2 = await policies.update(
        tenant_a.id, v1.id, _named("pick-line-v2", limits=Limits(max_force=50.0))
    )
    v3 = await policies.update(tenant_a.id, v1.id, _named("pick-line-v2"))
    assert (v2.version, v3.version) == (2, 3)
    assert v2.id == v1.id
    assert v2.create_time == v1.create_time
    assert v1.update_time < v2.update_time < v3.update_time
    assert (v2.name, v2.limits, v2.workspace.is_unconstrained) == (
        "pick-line-v2",
        Limits(max_force=50.0),
        True,
    )
    assert await policies.get(tenant_a.id, v1.id) == v3
    assert await policies.get(tenant_a.id, v1.id, 1) == v1
    assert await policies.get(tenant_a.id, v1.id, 2) == v2
    with pytest.raises(NotFound) as raised:
        await policies.get(tenant_a.id, v1.id, 4)
    assert raised.value.resource == "safety policy version"
    # Lists show each policy once, at its latest version.
    listed = [p for p in (await policies.list(tenant_a.id, page_size=1000)).items if p.id == v1.id]
    assert listed == [v3]


async def test_concurrent_updates_each_get_their_own_version(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    created = await policies.create(tenant_a.id, _named("raced"))
    results = await asyncio.gather(
        *(
            policies.update(
                tenant_a.id, created.id, _named("raced", limits=Limits(max_payload=float(i)))
            )
            for i in range(8)
        )
    )
    assert sorted(r.version for r in results) == list(range(2, 10))
    payloads = {
        (await policies.get(tenant_a.id, created.id, v)).limits.max_payload for v in range(2, 10)
    }
    assert payloads == {float(i) for i in range(8)}


async def test_names_are_unique_per_tenant_and_a_refused_rename_writes_no_version(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    first = await policies.create(tenant_a.id, _named("strict"))
    with pytest.raises(AlreadyExists, match="'strict'") as raised:
        await policies.create(tenant_a.id, _named("strict"))
    assert "safety_policies_tenant_id_name_key" not in str(raised.value)
    assert (await policies.create(tenant_b.id, _named("strict"))).id != first.id
    second = await policies.create(tenant_a.id, _named("loose"))
    with pytest.raises(AlreadyExists):
        await policies.update(tenant_a.id, second.id, _named("strict"))
    assert (await policies.get(tenant_a.id, second.id)).version == 1
    # A policy may keep its own name across versions, and the old name becomes free.
    await policies.update(tenant_a.id, second.id, _named("loose"))
    await policies.update(tenant_a.id, first.id, _named("renamed"))
    assert (await policies.create(tenant_a.id, _named("strict"))).version == 1


async def test_invalid_drafts_never_reach_the_database(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    created = await policies.create(tenant_a.id, _named("valid"))
    bad = _named("valid", limits=Limits(max_force=-1.0))
    with pytest.raises(InvalidArgument) as raised:
        await policies.update(tenant_a.id, created.id, bad)
    assert [v.field for v in raised.value.violations] == ["safety_policy.limits.max_force"]
    assert await policies.get(tenant_a.id, created.id) == created


async def test_a_policy_in_use_cannot_be_deleted_until_detached(
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
) -> None:
    policy = await policies.create(tenant_a.id, _named("in-use"))
    await policies.update(tenant_a.id, policy.id, _named("in-use"))
    environment = await environments.create(
        tenant_a.id, EnvironmentDraft(name="guarded", safety_policy_ids=(policy.id,))
    )
    with pytest.raises(FailedPrecondition) as raised:
        await policies.delete(tenant_a.id, policy.id)
    assert raised.value.reason == "SAFETY_POLICY_IN_USE"
    assert raised.value.metadata == {
        "safety_policy_id": str(policy.id),
        "environment_id": str(environment.id),
    }
    assert (await policies.get(tenant_a.id, policy.id)).version == 2

    await environments.update(
        tenant_a.id, environment.id, EnvironmentDraft(), mask={"safety_policy_ids"}
    )
    await policies.delete(tenant_a.id, policy.id)
    for version in (None, 1, 2):
        with pytest.raises(NotFound) as missing:
            await policies.get(tenant_a.id, policy.id, version)
        assert missing.value.resource == "safety policy"
    with pytest.raises(NotFound):
        await policies.delete(tenant_a.id, policy.id)


async def test_deleting_a_policy_removes_every_version(
    database: Database, policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    policy = await policies.create(tenant_a.id, _named("short-lived"))
    await policies.update(tenant_a.id, policy.id, _named("short-lived"))
    await policies.delete(tenant_a.id, policy.id)
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        left = await (
            await conn.execute(
                "SELECT count(*) FROM roz.safety_policy_versions WHERE safety_policy_id = %s",
                (policy.id,),
            )
        ).fetchone()
    assert left == (0,)


async def test_versions_are_append_only_even_for_the_owner(
    database: Database, policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    policy = await policies.create(tenant_a.id, FULL)
    statements = (
        "UPDATE roz.safety_policy_versions SET max_force = 1e6 WHERE safety_policy_id = %s",
        "DELETE FROM roz.safety_policy_versions WHERE safety_policy_id = %s",
    )
    for statement in statements:
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            async with tenant_transaction(database.pool, tenant_a.id) as conn:
                await conn.execute(statement, (policy.id,))
        async with await AsyncConnection.connect(database.owner_dsn) as conn:
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                await conn.execute(statement, (policy.id,))
    assert await policies.get(tenant_a.id, policy.id, 1) == policy


async def test_another_tenants_policy_is_not_found_and_untouched(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    theirs = await policies.create(tenant_a.id, FULL)
    attempts = (
        policies.get(tenant_b.id, theirs.id),
        policies.get(tenant_b.id, theirs.id, 1),
        policies.update(tenant_b.id, theirs.id, _named("hijacked")),
        policies.delete(tenant_b.id, theirs.id),
    )
    for attempt in attempts:
        with pytest.raises(NotFound) as raised:
            await attempt
        assert raised.value.resource == "safety policy"
    assert theirs.id not in {p.id for p in (await policies.list(tenant_b.id, page_size=1000)).items}
    assert await policies.get(tenant_a.id, theirs.id) == theirs


async def test_lists_page_newest_first(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    created = [await policies.create(tenant_a.id, _named(f"page-{i}")) for i in range(5)]
    await policies.update(tenant_a.id, created[1].id, _named("page-1-b"))
    seen = []
    token = ""
    while True:
        page = await policies.list(tenant_a.id, page_size=2, page_token=token)
        seen.extend(page.items)
        token = page.next_page_token
        if not token:
            break
    ours = [p for p in seen if p.id in {c.id for c in created}]
    assert [p.id for p in ours] == [c.id for c in reversed(created)]
    assert [p.name for p in ours][3] == "page-1-b"
    with pytest.raises(InvalidArgument):
        await policies.list(tenant_a.id, page_token="garbage")


async def test_latest_policies_for_environment_in_attachment_order(
    database: Database,
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    first = await policies.create(tenant_a.id, _named("first"))
    second = await policies.create(tenant_a.id, _named("second"))
    unused = await policies.create(tenant_a.id, _named("unused"))
    latest_first = await policies.update(
        tenant_a.id, first.id, _named("first", limits=Limits(max_linear_velocity=0.1))
    )
    environment = await environments.create(
        tenant_a.id, EnvironmentDraft(name="checked", safety_policy_ids=(second.id, first.id))
    )
    empty = await environments.create(tenant_a.id, EnvironmentDraft(name="unchecked"))
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        found = await latest_policies_for_environment(conn, environment.id)
        none = await latest_policies_for_environment(conn, empty.id)
    assert found == [second, latest_first]
    assert unused not in found
    assert none == []
    async with tenant_transaction(database.pool, tenant_b.id) as conn:
        assert await latest_policies_for_environment(conn, environment.id) == []


async def test_every_policy_table_forces_rls_with_using_and_with_check(database: Database) -> None:
    async with database.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
                " p.polqual IS NOT NULL, p.polwithcheck IS NOT NULL"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_policy p ON p.polrelid = c.oid"
                " WHERE n.nspname = 'roz' AND c.relname = ANY(%s)",
                (list(POLICY_TABLES),),
            )
        ).fetchall()
    assert sorted(rows) == [(table, True, True, True, True) for table in POLICY_TABLES]


async def test_another_tenants_rows_are_invisible_even_without_a_filter(
    database: Database,
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    policy = await policies.create(tenant_a.id, _named("secret"))
    await environments.create(
        tenant_a.id, EnvironmentDraft(name="secret-env", safety_policy_ids=(policy.id,))
    )
    async with tenant_transaction(database.pool, tenant_b.id) as conn:
        for table, column in (
            ("safety_policies", "id"),
            ("safety_policy_versions", "safety_policy_id"),
            ("environment_safety_policies", "safety_policy_id"),
        ):
            row = await (
                await conn.execute(
                    f"SELECT count(*) FROM roz.{table} WHERE {column} = %s", (policy.id,)
                )
            ).fetchone()
            assert row == (0,), table


async def test_cross_tenant_writes_are_refused(
    database: Database,
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    policy = await policies.create(tenant_a.id, _named("guarded"))
    own_environment = await environments.create(tenant_b.id, EnvironmentDraft(name="b-env"))
    smuggled = (
        (
            "INSERT INTO roz.safety_policies (tenant_id, name) VALUES (%s, 'smuggled')",
            (tenant_a.id,),
        ),
        (
            "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name)"
            " VALUES (%s, %s, 2, 'forged')",
            (tenant_a.id, policy.id),
        ),
    )
    for statement, params in smuggled:
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            async with tenant_transaction(database.pool, tenant_b.id) as conn:
                await conn.execute(statement, params)
    # Within its own tenant, B still cannot point at A's policy: the composite keys refuse it.
    for statement, params in (
        (
            "INSERT INTO roz.environment_safety_policies"
            " (tenant_id, environment_id, safety_policy_id, position) VALUES (%s, %s, %s, 0)",
            (tenant_b.id, own_environment.id, policy.id),
        ),
        (
            "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name)"
            " VALUES (%s, %s, 2, 'forged')",
            (tenant_b.id, policy.id),
        ),
    ):
        with pytest.raises(errors.ForeignKeyViolation):
            async with tenant_transaction(database.pool, tenant_b.id) as conn:
                await conn.execute(statement, params)
    assert await policies.get(tenant_a.id, policy.id) == policy
    with pytest.raises(NotFound):
        await policies.get(tenant_a.id, policy.id, 2)
    await policies.delete(tenant_a.id, policy.id)  # attached nowhere


@pytest.mark.parametrize(
    "column", ["max_linear_velocity", "max_acceleration", "max_force", "max_payload"]
)
async def test_the_databases_own_checks_become_domain_errors(
    database: Database, policies: SafetyPolicyRepository, tenant_a: TenantWithKey, column: str
) -> None:
    policy = await policies.create(tenant_a.id, _named(f"backstop-{column}"))
    for value in ("-1", "NaN", "Infinity"):
        with pytest.raises(InvalidArgument) as raised, database_errors("safety policy"):
            async with tenant_transaction(database.pool, tenant_a.id) as conn:
                await conn.execute(
                    "INSERT INTO roz.safety_policy_versions"
                    f" (tenant_id, safety_policy_id, version, name, {column})"
                    " VALUES (%s, %s, 2, 'x', %s::float8)",
                    (tenant_a.id, policy.id, value),
                )
        assert isinstance(raised.value.__cause__, psycopg.errors.CheckViolation)
        assert "violates" not in str(raised.value)
    duplicate_version = (
        "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name)"
        " VALUES (%s, %s, 1, 'again')"
    )
    with pytest.raises(AlreadyExists), database_errors("safety policy"):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute(duplicate_version, (tenant_a.id, policy.id))


async def test_deleting_a_tenant_removes_its_policies_hosts_and_histories(
    database: Database,
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
    tenant_b: TenantWithKey,
) -> None:
    policy = await policies.create(tenant_b.id, FULL)
    await policies.update(tenant_b.id, policy.id, FULL)
    environment = await environments.create(
        tenant_b.id, EnvironmentDraft(name="doomed", safety_policy_ids=(policy.id,))
    )
    await HostRepository(database.pool).create(
        tenant_b.id, HostDraft(name="doomed-host", environment_id=environment.id)
    )
    tables = (*POLICY_TABLES, "hosts", "host_status_changes", "environments")
    async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM roz.tenants WHERE id = %s", (tenant_b.id,))
        for table in tables:
            left = await (
                await conn.execute(
                    f"SELECT count(*) FROM roz.{table} WHERE tenant_id = %s", (tenant_b.id,)
                )
            ).fetchone()
            assert left == (0,), table


async def test_durations_round_trip_and_each_version_keeps_its_own(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    timed = _named(
        "timed", approval_ttl=timedelta(minutes=5), heartbeat_window=timedelta(seconds=2.5)
    )
    v1 = await policies.create(tenant_a.id, timed)
    assert (v1.approval_ttl, v1.heartbeat_window) == (timedelta(minutes=5), timedelta(seconds=2.5))
    v2 = await policies.update(tenant_a.id, v1.id, _named("timed", approval_ttl=timedelta(0)))
    assert (v2.approval_ttl, v2.heartbeat_window) == (None, None)
    assert await policies.get(tenant_a.id, v1.id, 1) == v1
    assert await policies.get(tenant_a.id, v1.id) == v2


async def test_a_duration_out_of_bounds_writes_nothing(
    policies: SafetyPolicyRepository, tenant_a: TenantWithKey
) -> None:
    created = await policies.create(tenant_a.id, _named("bounded"))
    bad = _named("bounded", approval_ttl=timedelta(days=-1), heartbeat_window=timedelta(minutes=11))
    with pytest.raises(InvalidArgument) as raised:
        await policies.update(tenant_a.id, created.id, bad)
    assert [v.field for v in raised.value.violations] == [
        "safety_policy.approval_ttl",
        "safety_policy.heartbeat_window",
    ]
    assert await policies.get(tenant_a.id, created.id) == created


@pytest.mark.parametrize(
    ("column", "shortest", "longest"),
    [
        ("approval_ttl", MIN_APPROVAL_TTL, MAX_APPROVAL_TTL),
        ("heartbeat_window", MIN_HEARTBEAT_WINDOW, MAX_HEARTBEAT_WINDOW),
    ],
)
async def test_the_database_holds_durations_to_the_domains_bounds(
    database: Database,
    policies: SafetyPolicyRepository,
    tenant_a: TenantWithKey,
    column: str,
    shortest: timedelta,
    longest: timedelta,
) -> None:
    policy = await policies.create(tenant_a.id, _named(f"bounds-{column}"))
    insert = (
        "INSERT INTO roz.safety_policy_versions"
        f" (tenant_id, safety_policy_id, version, name, {column}) VALUES (%s, %s, %s, 'x', %s)"
    )
    tick = timedelta(microseconds=1)
    for value in (shortest - tick, longest + tick, timedelta(0)):
        with pytest.raises(psycopg.errors.CheckViolation):
            async with tenant_transaction(database.pool, tenant_a.id) as conn:
                await conn.execute(insert, (tenant_a.id, policy.id, 2, value))
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        await conn.execute(insert, (tenant_a.id, policy.id, 2, shortest))
        await conn.execute(insert, (tenant_a.id, policy.id, 3, longest))


async def test_a_hosts_heartbeat_window_is_the_shortest_its_policies_set_now(
    database: Database,
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    loose = await policies.create(
        tenant_a.id, _named("loose", heartbeat_window=timedelta(seconds=30))
    )
    strict = await policies.create(
        tenant_a.id, _named("strict", heartbeat_window=timedelta(seconds=1))
    )
    silent = await policies.create(tenant_a.id, _named("silent"))
    elsewhere = await policies.create(
        tenant_a.id, _named("elsewhere", heartbeat_window=timedelta(seconds=1))
    )
    # Only the latest version counts: strict's next version loosens it to 5 s.
    await policies.update(
        tenant_a.id, strict.id, _named("strict", heartbeat_window=timedelta(seconds=5))
    )
    guarded = await environments.create(
        tenant_a.id,
        EnvironmentDraft(name="guarded", safety_policy_ids=(loose.id, silent.id, strict.id)),
    )
    unguarded = await environments.create(
        tenant_a.id, EnvironmentDraft(name="unguarded", safety_policy_ids=(silent.id,))
    )
    await environments.create(
        tenant_a.id, EnvironmentDraft(name="other", safety_policy_ids=(elsewhere.id,))
    )
    host = await new_host(database, tenant_a, guarded.id)
    quiet = await new_host(database, tenant_a, unguarded.id)
    loner = await new_host(database, tenant_a)

    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        assert await heartbeat_window_of_host(conn, host) == timedelta(seconds=5)
        assert await heartbeat_window_of_host(conn, quiet) is None
        assert await heartbeat_window_of_host(conn, loner) is None
        assert await heartbeat_window_of_host(conn, uuid.uuid4()) is None
    async with tenant_transaction(database.pool, tenant_b.id) as conn:
        assert await heartbeat_window_of_host(conn, host) is None
