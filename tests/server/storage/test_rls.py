"""Tenancy is enforced by PostgreSQL: what the request role is, and what it cannot see or write."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import AsyncConnection, errors

from server.domain.environments import EnvironmentDraft
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey

TENANT_TABLES = ("api_keys", "environments")


async def test_requests_run_as_a_role_without_any_power_to_bypass_rls(database: Database) -> None:
    async with database.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT current_user, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,"
                " r.rolreplication, r.rolinherit"
                " FROM pg_roles AS r WHERE r.rolname = current_user"
            )
        ).fetchone()
    assert row is not None
    user, superuser, bypassrls, createrole, createdb, replication, inherit = row
    assert user == database.app_role
    assert user.startswith("roz_app_")
    assert (superuser, bypassrls, createrole, createdb, replication, inherit) == (
        False,
        False,
        False,
        False,
        False,
        False,
    )


async def test_the_request_role_owns_no_table_and_belongs_to_no_role(database: Database) -> None:
    async with database.pool.connection() as conn:
        owners = await (
            await conn.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'roz'"
            )
        ).fetchall()
        memberships = await (
            await conn.execute(
                "SELECT count(*) FROM pg_auth_members WHERE member = current_user::regrole"
            )
        ).fetchone()
    tables = {name for name, _ in owners}
    assert {"tenants", "api_keys", "environments", "schema_migrations"} <= tables
    assert all(owner != database.app_role for _, owner in owners)
    assert memberships == (0,)


async def test_every_tenant_table_forces_rls_with_using_and_with_check(database: Database) -> None:
    async with database.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
                " p.polqual IS NOT NULL, p.polwithcheck IS NOT NULL"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_policy p ON p.polrelid = c.oid"
                " WHERE n.nspname = 'roz' AND c.relname = ANY(%s)",
                (list(TENANT_TABLES),),
            )
        ).fetchall()
    assert sorted(rows) == [(table, True, True, True, True) for table in TENANT_TABLES]


@pytest.mark.parametrize(
    "table",
    ["tenants", "role_secrets", "schema_migrations", "device_authorizations", "device_sessions"],
    ids=lambda table: table,
)
async def test_the_request_role_cannot_read_tables_outside_rls(
    database: Database, table: str
) -> None:
    async with database.pool.connection() as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            await conn.execute(f"SELECT * FROM roz.{table}")


async def test_a_query_without_tenant_filter_sees_only_the_current_tenant(
    database: Database,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    created = await environments.create(tenant_a.id, EnvironmentDraft(name="a-only"))
    async with tenant_transaction(database.pool, tenant_b.id) as conn:
        # Asking for A's rows by A's id, with no help from any WHERE clause of ours.
        by_tenant = await (
            await conn.execute(
                "SELECT count(*) FROM roz.environments WHERE tenant_id = %s", (tenant_a.id,)
            )
        ).fetchone()
        by_id = await (
            await conn.execute("SELECT count(*) FROM roz.environments WHERE id = %s", (created.id,))
        ).fetchone()
        tenants_seen = await (
            await conn.execute("SELECT DISTINCT tenant_id FROM roz.environments")
        ).fetchall()
        keys_seen = await (
            await conn.execute("SELECT DISTINCT tenant_id FROM roz.api_keys")
        ).fetchall()
    assert by_tenant == (0,)
    assert by_id == (0,)
    assert tenant_a.id not in {row[0] for row in tenants_seen}
    assert {row[0] for row in keys_seen} == {tenant_b.id}
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        own = await (
            await conn.execute("SELECT name FROM roz.environments WHERE id = %s", (created.id,))
        ).fetchone()
    assert own == ("a-only",)


async def test_an_insert_carrying_another_tenants_id_is_refused(
    database: Database, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(database.pool, tenant_b.id) as conn:
            await conn.execute(
                "INSERT INTO roz.environments (tenant_id, name) VALUES (%s, 'smuggled')",
                (tenant_a.id,),
            )
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        found = await (
            await conn.execute("SELECT count(*) FROM roz.environments WHERE name = 'smuggled'")
        ).fetchone()
    assert found == (0,)


async def test_an_update_cannot_move_a_row_to_another_tenant(
    database: Database,
    environments: EnvironmentRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    created = await environments.create(tenant_a.id, EnvironmentDraft(name="stays"))
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute(
                "UPDATE roz.environments SET tenant_id = %s WHERE id = %s",
                (tenant_b.id, created.id),
            )
    assert (await environments.get(tenant_a.id, created.id)) == created


async def test_a_query_with_no_tenant_set_errors_instead_of_returning_rows(
    database: Database, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    await environments.create(tenant_a.id, EnvironmentDraft(name="exists"))
    # A connection of its own, so we know its history: never a tenant, then one, then none.
    async with await AsyncConnection.connect(database.pool.conninfo, autocommit=True) as conn:
        with pytest.raises(errors.UndefinedObject):
            await conn.execute("SELECT * FROM roz.environments")
        async with conn.transaction():
            await conn.execute("SELECT set_config('roz.tenant_id', %s, true)", (str(tenant_a.id),))
            rows = await (await conn.execute("SELECT count(*) FROM roz.environments")).fetchone()
            assert rows is not None
            assert rows[0] >= 1
        # After the transaction the setting reads back as '', which the uuid cast refuses.
        assert await (await conn.execute("SELECT current_setting('roz.tenant_id')")).fetchone() == (
            "",
        )
        with pytest.raises(errors.InvalidTextRepresentation):
            await conn.execute("SELECT * FROM roz.environments")
        with pytest.raises(errors.InvalidTextRepresentation):
            await conn.execute("SELECT * FROM roz.api_keys")


async def test_the_request_role_cannot_switch_row_security_off(
    database: Database, environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    await environments.create(tenant_a.id, EnvironmentDraft(name="guarded"))
    async with await AsyncConnection.connect(database.pool.conninfo, autocommit=True) as conn:
        await conn.execute("SET row_security = off")
        with pytest.raises(errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM roz.environments")


async def test_the_tenant_setting_does_not_outlive_its_transaction(
    database: Database, tenant_a: TenantWithKey
) -> None:
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        inside = await (await conn.execute("SELECT current_setting('roz.tenant_id')")).fetchone()
    assert inside == (str(tenant_a.id),)
    # Every pooled connection that ever had a tenant now reads '' outside a tenant transaction.
    for _ in range(database.pool.get_stats().get("pool_size", 1)):
        async with database.pool.connection() as conn:
            after = await (
                await conn.execute("SELECT current_setting('roz.tenant_id', true)")
            ).fetchone()
            assert after in {("",), (None,)}


async def test_tenant_transaction_takes_only_a_uuid(database: Database) -> None:
    with pytest.raises(TypeError):
        async with tenant_transaction(database.pool, str(uuid.uuid4())):  # type: ignore[arg-type]
            pass


async def test_definer_functions_are_not_executable_by_public(database: Database) -> None:
    async with database.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE'),"
                " has_function_privilege(current_user, p.oid, 'EXECUTE'), p.proconfig"
                " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'roz' AND p.prosecdef ORDER BY 1"
            )
        ).fetchall()
    assert [row[0] for row in rows] == [
        "append_audit_event",
        "append_session_event",
        "audit_command_transition",
        "audit_delivery",
        "audit_estop_acknowledgement",
        "audit_estop_change",
        "audit_policy_attachment",
        "audit_robot_link",
        "audit_safety_policy",
        "audit_session",
        "audit_task_transition",
        "authenticate_api_key",
        "decide_device_authorization",
        "end_device_session",
        "enqueue_robot_delivery",
        "estop_epochs",
        "find_device_authorization",
        "find_device_session",
        "keep_audit_trail",
        "lock_device_authorization",
        "overdue_commands",
        "pulse_robot_links",
        "purge_device_authorizations",
        "record_device_poll",
        "record_trigger_event",
        "seal_audit",
        "session_command_transition",
        "sessions_to_end",
        "silent_robot_links",
        "start_device_authorization",
        "start_device_session",
        "tenant_name",
        "time_out_tasks",
        "touch_api_keys",
        "trigger_event_on_command",
        "trigger_event_on_estop",
        "trigger_event_on_robot_link",
        "trigger_event_on_task",
        "trigger_event_tenants",
        "trigger_schedule",
        "unsealed_audit_tenants",
        "webhook_trigger",
    ]
    for name, public, app, config in rows:
        assert public is False, name
        assert app is True
        assert config == ["search_path=pg_catalog, pg_temp"]


async def test_owner_connections_are_not_the_request_role(database: Database) -> None:
    async with await psycopg.AsyncConnection.connect(database.owner_dsn) as conn:
        owner = await (await conn.execute("SELECT current_user")).fetchone()
    assert owner is not None
    assert owner[0] != database.app_role


@pytest.mark.parametrize(
    "history",
    [
        "roz.host_status_changes",
        "roz.safety_policy_versions",
        "roz.task_transitions",
        "roz.command_transitions",
    ],
)
async def test_no_role_can_truncate_a_history(database: Database, history: str) -> None:
    async with await psycopg.AsyncConnection.connect(database.owner_dsn, autocommit=True) as owner:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await owner.execute(f"TRUNCATE {history} CASCADE")
