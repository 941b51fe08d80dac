"""Which stream holds each host's robot link, and presence: claim on hello, release when the
stream ends or the robot falls silent, the holders' pulse, the sweep of links nobody vouches for.

A hello claims the host: a new random link id (and epoch) on the host's roz.robot_links row, the
host ONLINE, and `NOTIFY roz_robot_links, '<host id>'` at commit, which tells a process holding
an older stream for the host, in this process or another, that it has been taken over. Only the
holder's own link id can release the host or vouch for it, so a stream that lost a takeover can
never set OFFLINE a host its successor holds.

Locks: the host (FOR NO KEY UPDATE, which deliveries being numbered do not wait for), then the
link row, in a claim, a release and a pulse alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from server.domain.commands import Command
from server.domain.errors import NotFound
from server.domain.estop import HostStop
from server.domain.robot_deliveries import Delivery, DeliveryKind, check_batch
from server.domain.robot_link import resume_after
from server.domain.sessions import SessionEvent
from server.domain.tasks import Task
from server.storage.commands import commands_by_id
from server.storage.database import Pool
from server.storage.dispatch_checks import check_at_dispatch
from server.storage.estop_checks import held_and_stopped, host_stops
from server.storage.hosts import record_presence
from server.storage.robot_deliveries import mark_sent, read_deliveries
from server.storage.safety_policies import heartbeat_window_of_host
from server.storage.sessions import session_events_by_id, session_positions
from server.storage.tasks import tasks_by_id
from server.storage.tenancy import tenant_transaction

RESOURCE = "host"
CHANNEL = "roz_robot_links"

_CLAIM = (
    "INSERT INTO roz.robot_links (tenant_id, host_id, link_id, link_epoch, connect_time,"
    " seen_time) SELECT tenant_id, id, %(link)s, 1, %(now)s, %(now)s FROM roz.hosts"
    " WHERE id = %(host)s ON CONFLICT (host_id) DO UPDATE SET link_id = excluded.link_id,"
    " link_epoch = roz.robot_links.link_epoch + 1, connect_time = excluded.connect_time,"
    " seen_time = excluded.seen_time"
    " RETURNING last_sequence, acked_sequence, link_epoch,"
    " (SELECT pg_notify('" + CHANNEL + "', %(host)s::text))"
)
# The link as it was before the claim, under its row lock (no row: never linked).
_LOCK_LINK = "SELECT link_id FROM roz.robot_links WHERE host_id = %s FOR UPDATE"
_HOLDER = "SELECT link_id FROM roz.robot_links WHERE host_id = %s"
_RELEASE = (
    "UPDATE roz.robot_links SET link_id = NULL WHERE host_id = %(host)s AND link_id = %(link)s"
    " AND (%(before)s::timestamptz IS NULL OR seen_time < %(before)s) RETURNING host_id"
)
_PULSE = "SELECT host_id, last_sequence, held FROM roz.pulse_robot_links(%s, %s, %s)"
_SILENT = "SELECT tenant_id, host_id, link_id FROM roz.silent_robot_links(%s, %s)"
SWEEP_BATCH = 500
_COMMAND_KINDS = frozenset({DeliveryKind.COMMAND, DeliveryKind.CANCEL_COMMAND})
_TASK_KINDS = frozenset({DeliveryKind.TASK, DeliveryKind.CANCEL_TASK})


@dataclass(frozen=True)
class Claim:
    """A hello's claim on its host's link."""

    link_id: UUID
    epoch: int
    # The link that held the host until now, if any (it has been taken over).
    previous_link_id: UUID | None
    # Where deliveries resume, and the host's last numbered and acknowledged sequences.
    resume_after: int
    last_sequence: int
    acknowledged: int


@dataclass(frozen=True)
class HelloTerms:
    stop: HostStop | None
    heartbeat_window: timedelta | None
    # (session, the last agent update recorded) of each active session of the host.
    sessions: list[tuple[UUID, int]]


@dataclass(frozen=True)
class Pulse:
    """What a pulse learned about one of the process's links."""

    host_id: UUID
    last_sequence: int
    # False: another stream has claimed the host since.
    held: bool


@dataclass(frozen=True)
class SilentLink:
    tenant_id: UUID
    host_id: UUID
    link_id: UUID


class RobotLinkRepository:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def claim(
        self,
        tenant_id: UUID,
        host_id: UUID,
        link_id: UUID,
        *,
        last_received: int,
        reason: str,
        now: datetime,
    ) -> Claim:
        """Gives the host's link to `link_id` (taking it over from any other), marks the host
        present, and says where deliveries resume for a robot that last received
        `last_received`. NotFound: no such host in the tenant."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            host = await record_presence(conn, host_id, connected=True, reason=reason, now=now)
            if host is None:
                raise NotFound(RESOURCE, str(host_id))
            previous = await (await conn.execute(_LOCK_LINK, (host_id,))).fetchone()
            row = await (
                await conn.execute(_CLAIM, {"host": host_id, "link": link_id, "now": now})
            ).fetchone()
        assert row is not None, "the host is locked, so its link row is written"
        last, acked, epoch = int(row[0]), int(row[1]), int(row[2])
        return Claim(
            link_id=link_id,
            epoch=epoch,
            previous_link_id=None if previous is None else previous[0],
            resume_after=resume_after(last_received, last, acked),
            last_sequence=last,
            acknowledged=acked,
        )

    async def hello_terms(self, tenant_id: UUID, host_id: UUID) -> HelloTerms:
        """What a new stream needs besides its claim, in one transaction: the host's e-stop
        (None: the host is gone), the heartbeat window its safety policies set (None: none),
        and where each of its active sessions stands."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            stops = await host_stops(conn, [host_id])
            window = await heartbeat_window_of_host(conn, host_id)
            sessions = await session_positions(conn, host_id)
        return HelloTerms(stops.get(host_id), window, sessions)

    async def holder(self, tenant_id: UUID, host_id: UUID) -> UUID | None:
        """The link holding the host now; None when none does (or the host is gone)."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (await conn.execute(_HOLDER, (host_id,))).fetchone()
        return None if row is None else row[0]

    async def release(
        self,
        tenant_id: UUID,
        host_id: UUID,
        link_id: UUID,
        *,
        reason: str,
        now: datetime,
        silent_before: datetime | None = None,
    ) -> bool:
        """The stream `link_id` ended: if it still holds the host (and, with `silent_before`,
        its robot was last heard before then), the host is let go and marked OFFLINE with
        `reason`. False when another stream holds it now, or the robot was heard since."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if not await _release(conn, host_id, link_id, silent_before):
                return False
            await record_presence(conn, host_id, connected=False, reason=reason, now=now)
        return True

    async def pulse(self, links: Sequence[tuple[UUID, UUID, datetime]]) -> list[Pulse]:
        """One statement for all of a process's streams, (host, link, last heard) each: the
        times are kept (the host's last_seen_time too) for the links that still hold their
        host; returns each host's last sequence and whether its link still holds it."""
        if not links:
            return []
        hosts, link_ids, seen = zip(*links, strict=True)
        async with self._pool.connection() as conn:
            rows = await (
                await conn.execute(_PULSE, (list(hosts), list(link_ids), list(seen)))
            ).fetchall()
        return [Pulse(row[0], int(row[1]), bool(row[2])) for row in rows]

    async def outgoing(
        self,
        tenant_id: UUID,
        host_id: UUID,
        after: int,
        limit: int,
        *,
        now: datetime | None = None,
    ) -> list[tuple[Delivery, Command | Task | SessionEvent | None]]:
        """The host's deliveries numbered above `after`, in order, each with its item as it is
        now (None: deleted since), in one transaction: what a stream sends next. PENDING
        commands are checked again at `now` (default: the wall clock), and those refused are
        FAILED here and sent so (server/storage/dispatch_checks.py)."""
        check_batch(after, limit)
        now = datetime.now(UTC) if now is None else now
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if await held_and_stopped(conn, host_id):  # nothing goes out under an e-stop
                return []
            deliveries = await read_deliveries(conn, host_id, after, limit)
            if not deliveries:
                return []
            # Marked sent as they are taken, in this transaction: an engage ends what a robot
            # may have in hand by this mark (server/storage/estops.py).
            await mark_sent(conn, host_id, after, deliveries[-1].sequence, now)
            command_ids = [d.item_id for d in deliveries if d.kind in _COMMAND_KINDS]
            task_ids = [d.item_id for d in deliveries if d.kind in _TASK_KINDS]
            event_ids = [d.item_id for d in deliveries if d.kind is DeliveryKind.SESSION_EVENT]
            commands = await commands_by_id(conn, command_ids) if command_ids else {}
            commands = await check_at_dispatch(conn, host_id, deliveries, commands, now)
            tasks = await tasks_by_id(conn, task_ids) if task_ids else {}
            events = await session_events_by_id(conn, event_ids) if event_ids else {}
        items: dict[UUID, Command | Task | SessionEvent] = {**commands, **tasks, **events}
        return [(delivery, items.get(delivery.item_id)) for delivery in deliveries]

    async def silent(self, before: datetime, limit: int = SWEEP_BATCH) -> list[SilentLink]:
        """Held links whose robot was last heard before `before`, across tenants."""
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_SILENT, (before, limit))).fetchall()
        return [SilentLink(*row) for row in rows]


async def _release(
    conn: AsyncConnection[TupleRow],
    host_id: UUID,
    link_id: UUID,
    silent_before: datetime | None,
) -> bool:
    # Host before link, as a claim takes them.
    await conn.execute("SELECT 1 FROM roz.hosts WHERE id = %s FOR NO KEY UPDATE", (host_id,))
    row = await (
        await conn.execute(_RELEASE, {"host": host_id, "link": link_id, "before": silent_before})
    ).fetchone()
    return row is not None


async def release_silent(pool: Pool, before: datetime, *, reason: str, now: datetime) -> int:
    """The presence sweep: every link whose holder has not vouched for it since `before` (its
    process died, or lost the database) is let go, its host OFFLINE; returns how many. Safe
    alongside the same sweep in other processes: each release is conditional."""
    repository = RobotLinkRepository(pool)
    released = 0
    for link in await repository.silent(before):
        if await repository.release(
            link.tenant_id,
            link.host_id,
            link.link_id,
            reason=reason,
            now=now,
            silent_before=before,
        ):
            released += 1
    return released
