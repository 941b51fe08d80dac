"""Constraint violations from a real PostgreSQL become domain errors without database text.

The repositories validate first, so these drive the database's own backstops directly.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from server.domain.errors import AlreadyExists, DomainError, InvalidArgument, NotFound
from server.storage.database import Database
from server.storage.errors import database_errors
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey

DATABASE_WORDS = ("violates", "constraint", "environments_", "syntax", "ERROR", "DETAIL", "uuid")


async def _raised(
    database: Database, tenant_id: uuid.UUID, statement: str, *params: object
) -> DomainError:
    with pytest.raises(DomainError) as raised, database_errors("environment"):
        async with tenant_transaction(database.pool, tenant_id) as conn:
            await conn.execute(statement, params)
    error = raised.value
    assert isinstance(error.__cause__, psycopg.Error)  # kept for the server log
    for word in DATABASE_WORDS:
        assert word not in str(error)
        assert all(word not in v.description for v in getattr(error, "violations", ()))
    return error


async def test_unique_violation_is_already_exists(
    database: Database, tenant_a: TenantWithKey
) -> None:
    insert = "INSERT INTO roz.environments (tenant_id, name) VALUES (%s, 'twin')"
    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        await conn.execute(insert, (tenant_a.id,))
    assert isinstance(await _raised(database, tenant_a.id, insert, tenant_a.id), AlreadyExists)


async def test_check_violation_is_invalid_argument(
    database: Database, tenant_a: TenantWithKey
) -> None:
    error = await _raised(
        database,
        tenant_a.id,
        "INSERT INTO roz.environments (tenant_id, name, kind) VALUES (%s, 'k', 'submarine')",
        tenant_a.id,
    )
    assert isinstance(error, InvalidArgument)


async def test_not_null_violation_is_invalid_argument(
    database: Database, tenant_a: TenantWithKey
) -> None:
    error = await _raised(
        database,
        tenant_a.id,
        "INSERT INTO roz.environments (tenant_id, name) VALUES (%s, NULL)",
        tenant_a.id,
    )
    assert isinstance(error, InvalidArgument)


async def test_foreign_key_violation_is_invalid_argument(database: Database) -> None:
    ghost = uuid.uuid4()  # no such tenant: RLS lets the row through, the foreign key does not
    error = await _raised(
        database,
        ghost,
        "INSERT INTO roz.environments (tenant_id, name) VALUES (%s, 'orphan')",
        ghost,
    )
    assert isinstance(error, InvalidArgument)


async def test_a_malformed_uuid_is_not_found(database: Database, tenant_a: TenantWithKey) -> None:
    error = await _raised(
        database, tenant_a.id, "SELECT * FROM roz.environments WHERE id = %s::uuid", "not-a-uuid"
    )
    assert isinstance(error, NotFound)
    assert error.resource == "environment"


async def test_other_data_errors_are_invalid_arguments(
    database: Database, tenant_a: TenantWithKey
) -> None:
    error = await _raised(
        database,
        tenant_a.id,
        "INSERT INTO roz.environments (tenant_id, name, config) VALUES (%s, 'j', %s::jsonb)",
        tenant_a.id,
        '{"bad": "\\u0000"}',
    )
    assert isinstance(error, InvalidArgument)


async def test_errors_that_are_not_the_clients_fault_are_not_translated(
    database: Database, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), database_errors("environment"):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute(
                "INSERT INTO roz.environments (tenant_id, name) VALUES (%s, 'x')", (tenant_b.id,)
            )
    with pytest.raises(psycopg.errors.UndefinedTable), database_errors("environment"):
        async with tenant_transaction(database.pool, tenant_a.id) as conn:
            await conn.execute("SELECT * FROM roz.no_such_table")
