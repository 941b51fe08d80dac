"""Tenant transactions: the only way a request touches tenant data.

The tenant is set with `set_config('roz.tenant_id', …, true)` as the transaction's first
statement. Transaction-local, so it ends with the transaction and can never leak into the next
user of a pooled connection; afterwards it reads back as '' there, which the policies' uuid cast
refuses, so a query outside a tenant transaction errors rather than seeing rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from server.storage.database import Pool

_SET_TENANT = "SELECT set_config('roz.tenant_id', %s, true)"


@asynccontextmanager
async def tenant_transaction(
    pool: Pool, tenant_id: UUID
) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """A transaction in which row-level security shows and accepts only `tenant_id`'s rows."""
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(_SET_TENANT, (str(tenant_id),))
        yield conn


@asynccontextmanager
async def owner_tenant_transaction(
    conn: AsyncConnection[TupleRow], tenant_id: UUID
) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """The same on an owner connection, for maintenance that writes one tenant's rows.

    The owner normally bypasses RLS (superuser or BYPASSRLS); setting the tenant anyway keeps
    the WITH CHECK policies meaningful if it ever does not.
    """
    async with conn.transaction():
        await conn.execute(_SET_TENANT, (str(tenant_id),))
        yield conn
