"""Tenant rows. Owner connections only: the request role has no privilege on roz.tenants."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row

from server.domain.errors import AlreadyExists
from server.domain.tenants import Tenant, validate_tenant_name
from server.storage.errors import database_errors

_INSERT = "INSERT INTO roz.tenants (name) VALUES (%s) RETURNING id, name, create_time"
_BY_NAME = "SELECT id, name, create_time FROM roz.tenants WHERE name = %s"
_ANY = "SELECT EXISTS (SELECT 1 FROM roz.tenants)"


async def insert_tenant(conn: AsyncConnection[Any], name: str) -> Tenant:
    validate_tenant_name(name)
    constraints = {
        "tenants_name_key": lambda: AlreadyExists(
            f"a tenant named {name!r} already exists", resource="tenant"
        )
    }
    with database_errors("tenant", constraints):
        async with conn.cursor(row_factory=class_row(Tenant)) as cursor:
            await cursor.execute(_INSERT, (name,))
            tenant = await cursor.fetchone()
    assert tenant is not None
    return tenant


async def find_tenant(conn: AsyncConnection[Any], name: str) -> Tenant | None:
    async with conn.cursor(row_factory=class_row(Tenant)) as cursor:
        await cursor.execute(_BY_NAME, (name,))
        return await cursor.fetchone()


async def any_tenant_exists(conn: AsyncConnection[Any]) -> bool:
    row = await (await conn.execute(_ANY)).fetchone()
    return bool(row and row[0])
