"""Tenant transactions: the only way a request touches tenant data.

The tenant is set with `set_config('roz.tenant_id', …, true)` as the transaction's first
statement. Transaction-local, so it ends with the transaction and can never leak into the next
user of a pooled connection; afterwards it reads back as '' there, which the policies' uuid cast
refuses, so a query outside a tenant transaction errors rather than seeing rows.

Who acts and over what (the current call's `Actor`, set by the API's interceptor chain) is set
the same way, for the audit trail's triggers: roz.actor_key_id, roz.actor_host_id, roz.protocol,
roz.request_id. Work outside a call (sweeps, timeouts) has no actor and is recorded as the
server's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from uuid import UUID

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from server.domain.audit import Actor
from server.storage.database import Pool

_SET_TENANT = "SELECT set_config('roz.tenant_id', %s, true)"
# BEGIN and the tenant in one round trip: a query without parameters goes over the simple
# protocol, which takes several statements. The tenant is a UUID, rendered as a literal.
_BEGIN_FOR_TENANT = "BEGIN; SELECT set_config('roz.tenant_id', {}, true)"
_ACTOR = (
    ", set_config('roz.actor_key_id', {}, true), set_config('roz.actor_host_id', {}, true),"
    " set_config('roz.protocol', {}, true), set_config('roz.request_id', {}, true)"
)
log = logging.getLogger(__name__)

_actor: ContextVar[Actor | None] = ContextVar("roz_actor", default=None)


def set_actor(actor: Actor | None) -> None:
    """Who acts in the current call; every tenant transaction it opens records it."""
    _actor.set(actor)


def _begin(tenant_id: UUID) -> sql.Composed:
    actor = _actor.get()
    if actor is None:
        return sql.SQL(_BEGIN_FOR_TENANT).format(sql.Literal(str(tenant_id)))
    return sql.SQL(_BEGIN_FOR_TENANT + _ACTOR).format(
        sql.Literal(str(tenant_id)),
        sql.Literal("" if actor.key_id is None else str(actor.key_id)),
        sql.Literal("" if actor.host_id is None else str(actor.host_id)),
        sql.Literal(actor.protocol.value),
        sql.Literal(actor.request_id),
    )


@asynccontextmanager
async def tenant_transaction(
    pool: Pool, tenant_id: UUID
) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """A transaction in which row-level security shows and accepts only `tenant_id`'s rows."""
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    async with pool.connection() as conn:
        await conn.execute(_begin(tenant_id))
        try:
            yield conn
        except BaseException:
            await _roll_back(conn)
            raise
        await conn.execute("COMMIT")


async def _roll_back(conn: AsyncConnection[TupleRow]) -> None:
    try:
        await conn.execute("ROLLBACK")
    except Exception:  # a broken connection: the pool discards it; the first error matters
        log.debug("rollback failed", exc_info=True)


async def set_tenant(conn: AsyncConnection[TupleRow], tenant_id: UUID) -> None:
    """Makes the transaction already open on `conn` one tenant's, for the rest of it."""
    await conn.execute(_SET_TENANT, (str(tenant_id),))


@asynccontextmanager
async def owner_tenant_transaction(
    conn: AsyncConnection[TupleRow], tenant_id: UUID
) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """The same on an owner connection, for maintenance that writes one tenant's rows.

    The owner normally bypasses RLS (superuser or BYPASSRLS); setting the tenant anyway keeps
    the WITH CHECK policies meaningful if it ever does not.
    """
    async with conn.transaction():
        await set_tenant(conn, tenant_id)
        yield conn
