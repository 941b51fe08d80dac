"""The delivery log of each host: enqueue in the caller's transaction, read, mark sent, acknowledge.

`enqueue` is called by the command and task repositories inside the transaction that makes an
item deliverable, so an item is numbered if and only if its change commits. The sequence comes
from the host's counter row in roz.robot_links, taken under its row lock (an upsert), which
serialises writers per host: numbers are 1, 2, 3 … without gaps or repeats, and a rolled-back
writer gives its number back. Every enqueue also sends `NOTIFY roz_robot_deliveries, '<host id>'`,
delivered at commit: the payload is only the host's id (any database user can listen), and a
listener reads the deliveries themselves under RLS.

Locks are taken parent first: the host (KEY SHARE), then the counter row, then the new delivery,
the order a host's deletion takes too. Acknowledgement writes the delivery rows and the items
before the counter row, after the order in which a transition locks its item before enqueueing,
so the two never wait for each other in a cycle.

Acknowledgement is cumulative and monotonic: acknowledging n covers every delivery up to n. An n
at or below what is already acknowledged changes nothing (a late or repeated ack is normal on a
reconnect); an n above the host's last sequence names something never sent and is refused
(InvalidArgument).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, kwargs_row

from server.domain.errors import NotFound
from server.domain.robot_deliveries import (
    CANCELLATION_OF,
    Delivery,
    DeliveryKind,
    check_acknowledgement,
)
from server.storage.database import Pool
from server.storage.errors import database_errors, resource_id
from server.storage.tenancy import tenant_transaction

RESOURCE = "host"
CHANNEL = "roz_robot_deliveries"

# The numbering itself is roz.enqueue_robot_delivery (migration 0016), which session events use too.
_ENQUEUE = "SELECT roz.enqueue_robot_delivery(%(host)s, %(kind)s, %(item)s)"
_ENQUEUED = "SELECT EXISTS (SELECT 1 FROM roz.robot_deliveries WHERE item_id = %s AND kind = %s)"
_COLUMNS = "host_id, sequence, kind, item_id, create_time, deliver_time, acknowledge_time"
_AFTER = (
    "SELECT " + _COLUMNS + " FROM roz.robot_deliveries"
    " WHERE host_id = %s AND sequence > %s ORDER BY sequence LIMIT %s"
)
_LINK = "SELECT last_sequence, acked_sequence FROM roz.robot_links WHERE host_id = %s"
_HOST = "SELECT 1 FROM roz.hosts WHERE id = %s"
# The first time each item is sent or acknowledged is kept; a resend or a repeated ack does not
# move it. The command and task rows carry the same times for operators.
_STAMP = (
    "WITH stamped AS (UPDATE roz.robot_deliveries SET {column} = %(now)s"
    " WHERE host_id = %(host)s AND sequence > %(after)s AND sequence <= %(through)s"
    " AND {column} IS NULL RETURNING kind, item_id),"
    " commands AS (UPDATE roz.commands SET {column} = %(now)s"
    " WHERE id IN (SELECT item_id FROM stamped WHERE kind = 'command') AND {column} IS NULL),"
    " tasks AS (UPDATE roz.tasks SET {column} = %(now)s"
    " WHERE id IN (SELECT item_id FROM stamped WHERE kind = 'task') AND {column} IS NULL)"
    " SELECT count(*) FROM stamped"
)
_MARK_DELIVERED = _STAMP.format(column="deliver_time")
_MARK_ACKNOWLEDGED = _STAMP.format(column="acknowledge_time")
_ADVANCE_ACK = (
    "UPDATE roz.robot_links SET acked_sequence = greatest(acked_sequence, %s)"
    " WHERE host_id = %s RETURNING acked_sequence"
)


async def enqueue(
    conn: AsyncConnection[TupleRow], host_id: UUID, kind: DeliveryKind, item_id: UUID
) -> int:
    """Numbers `item_id` for its host in the open tenant transaction on `conn`; the sequence.

    The caller holds the host (a command's create locks it; an unfinished task keeps it from
    being deleted), so the host is always there.
    """
    row = await (
        await conn.execute(_ENQUEUE, {"host": host_id, "kind": kind.value, "item": item_id})
    ).fetchone()
    if row is None or row[0] is None:
        raise RuntimeError(f"host {host_id} vanished while its item {item_id} was enqueued")
    return int(row[0])


async def enqueue_cancellation(
    conn: AsyncConnection[TupleRow], host_id: UUID, kind: DeliveryKind, item_id: UUID
) -> int | None:
    """Numbers a cancellation of `item_id` if the item itself was ever enqueued; else None.

    "Enqueued", not "sent": the robot may be reading the item right now, and a cancellation of
    something it never got is harmless, while a missed one lets it run.
    """
    row = await (await conn.execute(_ENQUEUED, (item_id, kind.value))).fetchone()
    if row is None or not row[0]:
        return None
    return await enqueue(conn, host_id, CANCELLATION_OF[kind], item_id)


async def mark_sent(
    conn: AsyncConnection[TupleRow], host_id: UUID, after: int, through: int, now: datetime
) -> int:
    """In the caller's tenant transaction: `now` as the send time of the host's deliveries
    after `after` up to `through` that had none (and of their items); how many were marked."""
    row = await (
        await conn.execute(
            _MARK_DELIVERED, {"now": now, "host": host_id, "after": after, "through": through}
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


def _delivery(*, kind: str, **columns: Any) -> Delivery:
    return Delivery(kind=DeliveryKind(kind), **columns)


class RobotDeliveryRepository:
    """Each host's delivery log, as the request role sees it (RLS: one tenant at a time)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def last_sequence(self, tenant_id: UUID, host_id: str | UUID) -> int:
        """The highest sequence numbered for the host; 0 before its first. NotFound: no host."""
        host_uuid = resource_id(host_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            last, _ = await _link(conn, host_uuid)
        return last

    async def acknowledged_sequence(self, tenant_id: UUID, host_id: str | UUID) -> int:
        """The highest sequence the robot has acknowledged; 0 before its first ack."""
        host_uuid = resource_id(host_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            _, acked = await _link(conn, host_uuid)
        return acked

    async def mark_delivered(
        self,
        tenant_id: UUID,
        host_id: str | UUID,
        after_sequence: int,
        through_sequence: int,
        *,
        now: datetime,
    ) -> int:
        """Records `now` as the send time of the deliveries after `after_sequence` up to and
        including `through_sequence` that had none; returns how many were recorded."""
        host_uuid = resource_id(host_id, RESOURCE)
        with database_errors(RESOURCE):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                return await mark_sent(conn, host_uuid, after_sequence, through_sequence, now)

    async def acknowledge(
        self, tenant_id: UUID, host_id: str | UUID, sequence: int, *, now: datetime
    ) -> int:
        """The robot has received everything up to `sequence`; returns the acknowledged sequence
        after this call (never lower than before). See the module's docstring for the rules."""
        host_uuid = resource_id(host_id, RESOURCE)
        with database_errors(RESOURCE):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                # Unlocked: last_sequence only grows, so a sequence valid now stays valid.
                last, acked = await _link(conn, host_uuid)
                check_acknowledgement(sequence, last)
                if sequence <= acked:
                    return acked
                await conn.execute(
                    _MARK_ACKNOWLEDGED,
                    {"now": now, "host": host_uuid, "after": acked, "through": sequence},
                )
                row = await (await conn.execute(_ADVANCE_ACK, (sequence, host_uuid))).fetchone()
        assert row is not None, "a link row is never deleted but with its host"
        return int(row[0])


async def read_deliveries(
    conn: AsyncConnection[TupleRow], host_id: UUID, sequence: int, limit: int
) -> list[Delivery]:
    """In the caller's tenant transaction: the host's deliveries above `sequence`, in order."""
    async with conn.cursor(row_factory=kwargs_row(_delivery)) as cursor:
        await cursor.execute(_AFTER, (host_id, sequence, limit))
        return await cursor.fetchall()


async def _link(conn: AsyncConnection[TupleRow], host_id: UUID) -> tuple[int, int]:
    """(last_sequence, acked_sequence) of the host; (0, 0) before its first delivery."""
    row = await (await conn.execute(_LINK, (host_id,))).fetchone()
    if row is not None:
        return int(row[0]), int(row[1])
    if await (await conn.execute(_HOST, (host_id,))).fetchone() is None:
        raise NotFound(RESOURCE, str(host_id))
    return 0, 0
