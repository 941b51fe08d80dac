"""The e-stop check that work makes in its own transaction, and the read of hosts' e-stops.

Work that would start motion checks the latches after taking its host's and its environment's
locks (FOR SHARE): command and task creation (which hold both already), any move of a command
or task to RUNNING (`lock_host_for_start`), and a stream's read of what to send
(`held_and_stopped`). An engage locks the latch's host or environment row (FOR NO KEY UPDATE)
before it ends the work in hand on the hosts it covers, so either the engage commits first and
the work is refused, or the work commits first and the engage sees it and ends it: nothing
starts under an engaged e-stop. An environment's engage thus locks one row, not its hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, dict_row

from server.domain.estop import NEVER, Acknowledgement, HostStop, Latch, Source, refusal

# A command's or task's host, locked against an engage until the move commits (FOR SHARE: many
# moves on one host do not wait for each other).
# The host and then its environment (FOR SHARE both: many moves on one host do not wait for
# each other), so that neither latch can be engaged until the move commits. The host's lock
# comes first and keeps its environment from changing meanwhile.
_SHARE_HOST = (
    "WITH h AS (SELECT environment_id FROM roz.hosts WHERE id = %(host)s FOR SHARE)"
    " SELECT h.environment_id, (SELECT 1 FROM roz.environments AS e"
    " WHERE e.id = h.environment_id FOR SHARE) FROM h"
)
LATCH_COLUMNS = (
    " {p}.epoch AS {p}_epoch, {p}.engaged AS {p}_engaged, {p}.reason AS {p}_reason,"
    " {p}.source AS {p}_source, {p}.actor_key_id AS {p}_actor, {p}.change_time AS {p}_time"
)
STOPS = (
    "SELECT h.id AS host_id, h.environment_id,"
    + LATCH_COLUMNS.format(p="hl")
    + ","
    + LATCH_COLUMNS.format(p="el")
    + ", l.link_id IS NOT NULL AS connected, l.estop_host_epoch, l.estop_environment_id,"
    " l.estop_environment_epoch, l.estop_acknowledge_time"
    " FROM roz.hosts AS h"
    " LEFT JOIN roz.estops AS hl ON hl.host_id = h.id"
    " LEFT JOIN roz.estops AS el ON el.environment_id = h.environment_id"
    " LEFT JOIN roz.robot_links AS l ON l.host_id = h.id"
)
STOPS_OF_HOSTS = STOPS + " WHERE h.id = ANY(%s) ORDER BY h.id"


def latch_of(row: dict[str, Any], prefix: str) -> Latch:
    if row[f"{prefix}_epoch"] is None:
        return NEVER
    return Latch(
        engaged=row[f"{prefix}_engaged"],
        epoch=row[f"{prefix}_epoch"],
        reason=row[f"{prefix}_reason"],
        source=Source(row[f"{prefix}_source"]),
        actor=row[f"{prefix}_actor"],
        change_time=row[f"{prefix}_time"],
    )


def host_stop_of(row: dict[str, Any]) -> HostStop:
    return HostStop(
        host_id=row["host_id"],
        host=latch_of(row, "hl"),
        environment_id=row["environment_id"],
        environment=latch_of(row, "el"),
        acknowledgement=Acknowledgement(
            host_id=row["host_id"],
            connected=bool(row["connected"]),
            host_epoch=row["estop_host_epoch"] or 0,
            environment_id=row["estop_environment_id"],
            environment_epoch=row["estop_environment_epoch"] or 0,
            acknowledge_time=row["estop_acknowledge_time"],
        ),
    )


async def host_stops(
    conn: AsyncConnection[TupleRow], host_ids: Sequence[UUID]
) -> dict[UUID, HostStop]:
    """In the caller's tenant transaction: the e-stops of these hosts (those that exist)."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(STOPS_OF_HOSTS, (list(host_ids),))
        return {stop.host_id: stop for stop in map(host_stop_of, await cursor.fetchall())}


async def check_host(conn: AsyncConnection[TupleRow], host_id: UUID, what: str) -> None:
    """Refuses `what` ("new commands") for a stopped host; the caller holds the host's lock."""
    stop = (await host_stops(conn, [host_id])).get(host_id)
    if stop is not None and stop.stopped:
        raise refusal(stop, what)


async def held_and_stopped(conn: AsyncConnection[TupleRow], host_id: UUID) -> bool:
    """Holds the host against an engage until commit (FOR SHARE), and says whether it is
    stopped now: a stream reads what to send under this, so an engage either comes first (and
    nothing is sent) or sees what was taken to be sent."""
    await conn.execute(_SHARE_HOST, {"host": host_id})
    stop = (await host_stops(conn, [host_id])).get(host_id)
    return stop is not None and stop.stopped


async def hold_host(conn: AsyncConnection[TupleRow], host_id: UUID) -> None:
    """Holds the host and its environment against an engage until commit (FOR SHARE), without
    a check: taken first by work that would otherwise lock, after something an engage locks
    late (a session of the host), something it locks early (the host, the host's commands), so
    the two queue in one order instead of waiting for each other in a cycle."""
    await conn.execute(_SHARE_HOST, {"host": host_id})


async def lock_host_for_start(conn: AsyncConnection[TupleRow], host_id: UUID, what: str) -> None:
    """Before a command or task of `host_id` moves to RUNNING: holds the host against an engage
    until commit, and refuses the move while the host is stopped. Call it before locking the
    item, the order an engage takes (host, then its items)."""
    await conn.execute(_SHARE_HOST, {"host": host_id})
    await check_host(conn, host_id, what)
