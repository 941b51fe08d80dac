"""E-stop latches of hosts and environments: engage, clear, read, acknowledge, and the check that
new work makes in its own transaction.

An engage or a clear is one tenant transaction: it locks the latch's host or environment (FOR NO
KEY UPDATE), writes the latch's next epoch and its history row, and, for an engage, ends the
work robots of the hosts it covers have in hand: RUNNING commands and sent PENDING ones FAILED,
running or sent tasks SAFETY_STOPPED, each with "E-STOP: <reason>" and a cancellation in its
robot's delivery log. It then sends `NOTIFY roz_estops` with the latch itself (`payload`),
delivered at commit, so that the process holding each covered robot's stream sends it the new
state at once, without reading it back.

The check that new work makes against the latches is in server/storage/estop_checks.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, dict_row

from server.domain.commands import CommandState
from server.domain.errors import NotFound
from server.domain.estop import (
    EnvironmentStop,
    HostStop,
    Latch,
    Source,
    Target,
    TargetKind,
    check_reason,
    stopped_reason,
)
from server.domain.tasks import TaskState
from server.storage.commands import stop_commands
from server.storage.database import Pool
from server.storage.errors import database_errors
from server.storage.estop_checks import (
    LATCH_COLUMNS,
    STOPS,
    host_stop_of,
    host_stops,
    latch_of,
)
from server.storage.tasks import stop_tasks
from server.storage.tenancy import tenant_transaction

CHANNEL = "roz_estops"

_LOCK_HOST = "SELECT environment_id FROM roz.hosts WHERE id = %s FOR NO KEY UPDATE"
_LOCK_ENVIRONMENT = "SELECT 1 FROM roz.environments WHERE id = %s FOR NO KEY UPDATE"
_RETURNING = "id, epoch, engaged, reason, source, actor_key_id, change_time"
_ENGAGE = (
    "INSERT INTO roz.estops AS e"
    " (tenant_id, {column}, epoch, engaged, reason, source, actor_key_id, change_time)"
    " VALUES (current_setting('roz.tenant_id')::uuid, %(target)s, 1, true, %(reason)s,"
    " %(source)s, %(actor)s, statement_timestamp())"
    " ON CONFLICT ({column}) DO UPDATE SET epoch = e.epoch + 1, engaged = true,"
    " reason = excluded.reason, source = excluded.source, actor_key_id = excluded.actor_key_id,"
    " change_time = greatest(excluded.change_time, e.change_time)"
    " RETURNING " + _RETURNING
)
_CLEAR = (
    "UPDATE roz.estops SET epoch = epoch + 1, engaged = false, reason = %(reason)s,"
    " source = %(source)s, actor_key_id = %(actor)s,"
    " change_time = greatest(statement_timestamp(), change_time)"
    " WHERE {column} = %(target)s AND engaged RETURNING " + _RETURNING
)
_RECORD = (
    "INSERT INTO roz.estop_changes"
    " (estop_id, epoch, tenant_id, engaged, reason, source, actor_key_id, change_time)"
    " SELECT id, epoch, tenant_id, engaged, reason, source, actor_key_id, change_time"
    " FROM roz.estops WHERE id = %s"
)
_NOTIFY = "SELECT pg_notify('" + CHANNEL + "', %s)"
_STOPS_IN_ENVIRONMENT = STOPS + " WHERE h.environment_id = %s ORDER BY h.id"
_ENVIRONMENT_LATCH = (
    "SELECT x.id IS NOT NULL AS found," + LATCH_COLUMNS.format(p="el") + " FROM (SELECT 1) AS one"
    " LEFT JOIN roz.environments AS x ON x.id = %(id)s"
    " LEFT JOIN roz.estops AS el ON el.environment_id = x.id"
)
# Robots' acknowledgements, many in one statement; their link rows are locked in host order
# first, so that two batches never wait for each other in a cycle.
_LOCK_LINKS = (
    "SELECT 1 FROM roz.robot_links WHERE host_id = ANY(%s) ORDER BY host_id FOR NO KEY UPDATE"
)
_ACKNOWLEDGE = (
    "UPDATE roz.robot_links AS l SET estop_host_epoch = a.host_epoch,"
    " estop_environment_id = a.environment_id, estop_environment_epoch = a.environment_epoch,"
    " estop_acknowledge_time = %(now)s"
    " FROM unnest(%(hosts)s::uuid[], %(host_epochs)s::bigint[], %(environments)s::uuid[],"
    " %(environment_epochs)s::bigint[]) AS a (host_id, host_epoch, environment_id,"
    " environment_epoch) WHERE l.host_id = a.host_id"
)
_EPOCHS = "SELECT host_id, host_epoch, environment_epoch FROM roz.estop_epochs(%s)"
# What an engage ends on the hosts it covers: what runs, and what the robot already has (sent,
# not started). What was never sent stays, held. A stream marks what it sends in the read that
# takes it, under the host's lock, so nothing is sent unseen by an engage.
# The hosts a latch covers, as a condition on host_id: its host, or its environment's hosts (not
# locked, since every move that starts work on one holds the environment's row, which the
# engage has locked).
_COVERED = {
    TargetKind.HOST: "host_id = %(target)s",
    TargetKind.ENVIRONMENT: (
        "host_id IN (SELECT id FROM roz.hosts WHERE environment_id = %(target)s)"
    ),
}
_IN_HAND_COMMANDS = (
    "SELECT id, host_id, state FROM roz.commands WHERE {covered}"
    " AND (state = 'running' OR (state = 'pending' AND deliver_time IS NOT NULL))"
    " ORDER BY id FOR UPDATE"
)
_IN_HAND_TASKS = (
    "SELECT id, host_id, state FROM roz.tasks WHERE {covered}"
    " AND (state = 'running' OR (state = 'queued' AND deliver_time IS NOT NULL))"
    " ORDER BY id FOR UPDATE"
)

_COLUMN = {TargetKind.HOST: "host_id", TargetKind.ENVIRONMENT: "environment_id"}


class EstopRepository:
    """The e-stops of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def engage(
        self, tenant_id: UUID, target: Target, *, reason: str, source: Source, actor: UUID | None
    ) -> Latch:
        """Engages the latch (a new epoch, even if it was engaged: each press is recorded) and
        ends the work robots of the hosts it covers have in hand; returns the latch as the
        change left it, once committed (and notified)."""
        check_reason(reason)
        with database_errors(target.kind.value):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                await _lock(conn, target)
                row = await (
                    await conn.execute(
                        _ENGAGE.format(column=_COLUMN[target.kind]),
                        {
                            "target": target.id,
                            "reason": reason,
                            "source": source.value,
                            "actor": actor,
                        },
                    )
                ).fetchone()
                assert row is not None
                latch = _changed(row)
                await conn.execute(_RECORD, (row[0],))
                await _end_work_in_hand(conn, target, stopped_reason(latch), actor)
                await conn.execute(_NOTIFY, (payload(tenant_id, target, latch),))
        return latch

    async def clear(
        self, tenant_id: UUID, target: Target, *, reason: str, actor: UUID | None
    ) -> Latch | None:
        """Clears the latch (a new epoch) if it is engaged and returns it as the change left it;
        clearing a clear latch changes nothing (None). Nothing that the e-stop ended resumes."""
        check_reason(reason)
        with database_errors(target.kind.value):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                await _lock(conn, target)
                row = await (
                    await conn.execute(
                        _CLEAR.format(column=_COLUMN[target.kind]),
                        {
                            "target": target.id,
                            "reason": reason,
                            "source": Source.OPERATOR.value,
                            "actor": actor,
                        },
                    )
                ).fetchone()
                if row is None:
                    return None
                latch = _changed(row)
                await conn.execute(_RECORD, (row[0],))
                await conn.execute(_NOTIFY, (payload(tenant_id, target, latch),))
        return latch

    async def get(self, tenant_id: UUID, target: Target) -> HostStop | EnvironmentStop:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await _read(conn, target)

    async def of_hosts(self, tenant_id: UUID, host_ids: Sequence[UUID]) -> dict[UUID, HostStop]:
        """The e-stops of these hosts of one tenant (for the links that hold them)."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await host_stops(conn, host_ids)

    async def acknowledge(
        self, tenant_id: UUID, acknowledgements: Sequence[Acknowledged], *, now: datetime
    ) -> None:
        """Robots of the tenant have the latches at these epochs (what each was last sent)."""
        if not acknowledgements:
            return
        hosts = [ack.host_id for ack in acknowledgements]
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await conn.execute(_LOCK_LINKS, (hosts,))
            await conn.execute(
                _ACKNOWLEDGE,
                {
                    "now": now,
                    "hosts": hosts,
                    "host_epochs": [ack.host_epoch for ack in acknowledgements],
                    "environments": [ack.environment_id for ack in acknowledgements],
                    "environment_epochs": [ack.environment_epoch for ack in acknowledgements],
                },
            )


@dataclass(frozen=True)
class Acknowledged:
    """What one robot said it has: the epochs of its host's latch and its environment's."""

    host_id: UUID
    host_epoch: int
    environment_id: UUID | None
    environment_epoch: int


async def estop_epochs(pool: Pool, host_ids: Sequence[UUID]) -> dict[UUID, tuple[int, int]]:
    """Across tenants (the pulse's safety net): the epochs of the latches over each host."""
    if not host_ids:
        return {}
    async with pool.connection() as conn:
        rows = await (await conn.execute(_EPOCHS, (list(host_ids),))).fetchall()
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


def payload(tenant_id: UUID, target: Target, latch: Latch) -> str:
    """A roz_estops notification: the tenant, the latch's target, and the latch as the change
    left it, so that every link it covers learns it without reading it back. Within NOTIFY's
    8,000 bytes: the reason is at most 1,024 characters."""
    return json.dumps(
        {
            "tenant": str(tenant_id),
            "kind": target.kind.value,
            "id": str(target.id),
            "epoch": latch.epoch,
            "engaged": latch.engaged,
            "reason": latch.reason,
            "source": latch.source.value,
            "actor": None if latch.actor is None else str(latch.actor),
            "time": None if latch.change_time is None else latch.change_time.isoformat(),
        },
        separators=(",", ":"),
        ensure_ascii=False,  # \u escapes would triple a non-ASCII reason's size
    )


def parse_payload(text: str) -> tuple[UUID, Target, Latch] | None:
    """A roz_estops notification's tenant, target and latch; None for one that is not ours."""
    try:
        fields = json.loads(text)
        actor, when = fields["actor"], fields["time"]
        return (
            UUID(fields["tenant"]),
            Target(TargetKind(fields["kind"]), UUID(fields["id"])),
            Latch(
                engaged=bool(fields["engaged"]),
                epoch=int(fields["epoch"]),
                reason=str(fields["reason"]),
                source=Source(fields["source"]),
                actor=None if actor is None else UUID(actor),
                change_time=None if when is None else datetime.fromisoformat(when),
            ),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _changed(row: tuple[Any, ...]) -> Latch:
    _, epoch, engaged, reason, source, actor, change_time = row
    return Latch(
        engaged=engaged,
        epoch=int(epoch),
        reason=reason,
        source=Source(source),
        actor=actor,
        change_time=change_time,
    )


async def _lock(conn: AsyncConnection[TupleRow], target: Target) -> None:
    """Locks the latch's host or environment row (NotFound: none in this tenant)."""
    query = _LOCK_HOST if target.kind is TargetKind.HOST else _LOCK_ENVIRONMENT
    if await (await conn.execute(query, (target.id,))).fetchone() is None:
        raise NotFound(target.kind.value, str(target.id))


async def _read(conn: AsyncConnection[TupleRow], target: Target) -> HostStop | EnvironmentStop:
    if target.kind is TargetKind.HOST:
        found = (await host_stops(conn, [target.id])).get(target.id)
        if found is None:
            raise NotFound("host", str(target.id))
        return found
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_ENVIRONMENT_LATCH, {"id": target.id})
        row = await cursor.fetchone()
        assert row is not None
        if not row["found"]:
            raise NotFound("environment", str(target.id))
        latch = latch_of(row, "el")
        await cursor.execute(_STOPS_IN_ENVIRONMENT, (target.id,))
        hosts = tuple(map(host_stop_of, await cursor.fetchall()))
    return EnvironmentStop(target.id, latch, hosts)


async def _end_work_in_hand(
    conn: AsyncConnection[TupleRow], target: Target, reason: str, actor: UUID | None
) -> None:
    """An engage ends what the robots of the hosts it stops have in hand: commands FAILED, tasks
    SAFETY_STOPPED, each with "E-STOP: <reason>" and a cancellation for its robot."""
    covered = {"target": target.id}
    where = _COVERED[target.kind]
    query = _IN_HAND_COMMANDS.format(covered=where)
    commands = await (await conn.execute(query, covered)).fetchall()
    await stop_commands(
        conn, [(row[0], row[1], CommandState(row[2]), reason) for row in commands], actor
    )
    tasks = await (await conn.execute(_IN_HAND_TASKS.format(covered=where), covered)).fetchall()
    await stop_tasks(conn, [(row[0], row[1], TaskState(row[2]), reason) for row in tasks], actor)
