"""The audit trail as the request role reads it: keyset pages by sequence, and the chain walked
in order for verification; and the sealing of what changes wrote. Nothing here writes an event:
the database does, in the transaction of each change (migration 0012), and
roz.append_audit_event for events no table change stands for. Events become entries when they
are sealed after their commit (`seal`): on NOTIFY roz_audit_unsealed in every process, in the
sweep, and before every read here, so that a reader sees its own changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.rows import kwargs_row

from server.domain import pagination
from server.domain.audit import (
    AuditEvent,
    AuditQuery,
    ChainCheck,
    ChainHead,
    Protocol,
    Verdict,
    check_query,
)
from server.domain.pagination import Page
from server.storage.database import Pool
from server.storage.tenancy import tenant_transaction

# Entries read per query while verifying: large enough that round trips do not dominate, small
# enough that one transaction never holds many rows in memory.
VERIFY_BATCH = 2000
# Where live watchers of the trail are woken (payload: the tenant id, once per seal).
CHANNEL = "roz_audit"
# Where sealers are woken (payload: the tenant id, once per commit that wrote events).
UNSEALED_CHANNEL = "roz_audit_unsealed"
# Events sealed per transaction.
SEAL_BATCH = 1000

_COLUMNS = (
    "tenant_id, sequence, kind, event_time, actor_key_id, actor_host_id, protocol, request_id,"
    " host_id, environment_id, subject_id, detail::text AS detail_json, previous_hash, hash"
)
_HEAD = "SELECT last_sequence, last_hash FROM roz.audit_chains"
_SEAL = "SELECT roz.seal_audit(%s, %s)"
_UNSEALED = "SELECT roz.unsealed_audit_tenants()"
_IN_ORDER = "SELECT " + _COLUMNS + " FROM roz.audit_events WHERE sequence > %s"
# Equality filters a caller may combine, with the query's fingerprint name of each.
_FILTERS = ("host_id", "environment_id", "subject_id", "kind")


def _event(**columns: Any) -> AuditEvent:
    previous = columns.pop("previous_hash")
    return AuditEvent(
        **{
            **columns,
            "protocol": Protocol(columns["protocol"]),
            "previous_hash": None if previous is None else bytes(previous),
            "hash": bytes(columns["hash"]),
        }
    )


class AuditRepository:
    """One tenant's audit trail, read under row-level security."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def list(
        self, tenant_id: UUID, query: AuditQuery, *, page_size: int = 0, page_token: str = ""
    ) -> Page[AuditEvent]:
        check_query(query)
        await seal(self._pool, tenant_id)
        size = pagination.page_size(page_size)
        fingerprint = pagination.fingerprint(
            "roz.audit_events",
            *(f"{name}={getattr(query, name)}" for name in _FILTERS),
            f"after={query.after_sequence}",
            f"start={query.start_time and query.start_time.isoformat()}",
            f"end={query.end_time and query.end_time.isoformat()}",
            f"ascending={query.ascending}",
        )
        last = pagination.decode_sequence_token(page_token, fingerprint)
        conditions: list[str] = []
        params: list[Any] = []
        for name in _FILTERS:
            value = getattr(query, name)
            if value is not None:
                conditions.append(f"{name} = %s")
                params.append(value)
        if query.after_sequence:
            conditions.append("sequence > %s")
            params.append(query.after_sequence)
        if query.start_time is not None:
            conditions.append("event_time >= %s")
            params.append(query.start_time)
        if query.end_time is not None:
            conditions.append("event_time < %s")
            params.append(query.end_time)
        if last is not None:
            conditions.append("sequence > %s" if query.ascending else "sequence < %s")
            params.append(last)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        order = "ASC" if query.ascending else "DESC"
        statement = (
            f"SELECT {_COLUMNS} FROM roz.audit_events{where} ORDER BY sequence {order} LIMIT %s"
        )
        async with (
            tenant_transaction(self._pool, tenant_id) as conn,
            conn.cursor(row_factory=kwargs_row(_event)) as cursor,
        ):
            await cursor.execute(statement, (*params, size + 1))
            rows = await cursor.fetchall()
        if len(rows) <= size:
            return Page(items=tuple(rows), next_page_token="")
        items = tuple(rows[:size])
        return Page(
            items=items,
            next_page_token=pagination.encode_sequence_token(items[-1].sequence, fingerprint),
        )

    async def after(self, tenant_id: UUID, sequence: int, limit: int) -> Sequence[AuditEvent]:
        """The entries after `sequence`, oldest first, as sealed so far (no seal first: the
        watches' read, woken by a seal's notification)."""
        async with (
            tenant_transaction(self._pool, tenant_id) as conn,
            conn.cursor(row_factory=kwargs_row(_event)) as cursor,
        ):
            await cursor.execute(_IN_ORDER + " ORDER BY sequence LIMIT %s", (sequence, limit))
            return await cursor.fetchall()

    async def head(self, tenant_id: UUID) -> int:
        """The sequence of the tenant's latest entry (0: none yet)."""
        await seal(self._pool, tenant_id)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (await conn.execute(_HEAD)).fetchone()
        return 0 if row is None else int(row[0])

    async def verify(self, tenant_id: UUID) -> Verdict:
        """Walks the trail from entry 1 to the head read first, a batch per transaction.

        Entries up to the head are all committed (a seal moves the head in its transaction), so
        entries sealed meanwhile neither show up half-way nor look like a break.
        """
        await seal(self._pool, tenant_id)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (await conn.execute(_HEAD)).fetchone()
        if row is None:
            # No head but maybe entries: the head was deleted. All are read; the verdict says so.
            head, bound = ChainHead(0, None), ""
        else:
            head = ChainHead(int(row[0]), None if row[1] is None else bytes(row[1]))
            bound = f" AND sequence <= {head.last_sequence:d}"
        check = ChainCheck(head)
        while not check.done:
            async with (
                tenant_transaction(self._pool, tenant_id) as conn,
                conn.cursor(row_factory=kwargs_row(_event)) as cursor,
            ):
                await cursor.execute(
                    _IN_ORDER + bound + " ORDER BY sequence LIMIT %s",
                    (check.last_sequence, VERIFY_BATCH),
                )
                events = await cursor.fetchall()
            if not events:
                break
            check.feed(events)
        return check.verdict()


async def seal(pool: Pool, tenant_id: UUID) -> int:
    """Seals every event of the tenant committed so far (in batches); returns how many."""
    sealed = 0
    while True:
        async with pool.connection() as conn:
            row = await (await conn.execute(_SEAL, (tenant_id, SEAL_BATCH))).fetchone()
        count = 0 if row is None else int(row[0])
        sealed += count
        if count < SEAL_BATCH:
            return sealed


async def seal_all(pool: Pool) -> int:
    """The sweep: seals what every tenant has waiting (a lost notification's events)."""
    async with pool.connection() as conn:
        tenants = [row[0] for row in await (await conn.execute(_UNSEALED)).fetchall()]
    sealed = 0
    for tenant_id in tenants:
        sealed += await seal(pool, tenant_id)
    return sealed
