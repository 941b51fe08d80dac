"""Live watches: what operators see change, as it happens, from the audit trail.

Every change a watch reports is an audit entry, numbered per tenant without gaps in commit
order (server/storage/audit.py), so a watch resumed after sequence n misses nothing and repeats
nothing. `AuditTail` reads each watched tenant's trail once per change, however many watch it:
`NOTIFY roz_audit` (payload: the tenant) wakes it, it reads the new entries into a ring of the
latest RING, and wakes that tenant's watchers, who take what matches them from the ring. A
watcher that is behind the ring (it stopped reading, or resumed from far back) reads the trail
itself, a page at a time, until it is caught up: memory never grows with how far behind a
watcher is, and a watcher that stops reading holds nothing but its place. A lost notification
is found by each watcher's recheck (every RECHECK_SECONDS), and after the listener reconnects.

Telemetry is not in the trail: a host's watch sends its robot's latest telemetry as the robot
link of this process has it, when it changes (a robot linked to another process shows none).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from server.domain.audit import AuditEvent, AuditQuery
from server.domain.commands import Command
from server.domain.estop import HostStop
from server.domain.hosts import Host
from server.domain.tasks import Task
from server.services.robot_link import TelemetrySnapshot
from server.storage.audit import AuditRepository
from server.storage.commands import CommandRepository
from server.storage.estops import EstopRepository
from server.storage.hosts import HostRepository
from server.storage.tasks import TaskRepository

log = logging.getLogger(__name__)

# Entries kept per watched tenant, and read per round trip.
RING = 1024
PAGE = 500
# How often a waiting watcher looks for itself, in case a notification was lost.
RECHECK_SECONDS = 5.0
# A watch quiet this long sends a checkpoint, so that proxies keep it open.
CHECKPOINT_SECONDS = 15.0
# The kinds a fleet watch reports.
FLEET_KINDS = ("robot.", "estop.")

Read = Callable[[UUID, int, int], Awaitable[Sequence[AuditEvent]]]
Head = Callable[[UUID], Awaitable[int]]


# -- what a watch sends ------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    event: AuditEvent


@dataclass(frozen=True)
class HostState:
    host: Host
    stop: HostStop


@dataclass(frozen=True)
class Telemetry:
    host_id: UUID
    snapshot: TelemetrySnapshot


@dataclass(frozen=True)
class Checkpoint:
    """Nothing new: the watcher is up to date through the sequence. The first message of a
    resumed watch, and sent after CHECKPOINT_SECONDS of quiet."""


Item = Change | HostState | Command | Task | Telemetry | Checkpoint


@dataclass(frozen=True)
class Sent:
    """One message of a watch: `sequence` is where a watcher resumes after it."""

    sequence: int
    item: Item


# -- the tail of each watched tenant's trail ---------------------------------------------------


@dataclass(eq=False)
class _Tenant:
    last: int
    ring: deque[AuditEvent] = field(default_factory=lambda: deque(maxlen=RING))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0
    reading: asyncio.Task[None] | None = None
    # A notification came while a read was running: read once more after it.
    again: bool = False

    def since(self, after: int) -> list[AuditEvent] | None:
        """The entries after `after` from the ring; None when the ring does not reach back.
        The ring's sequences are consecutive, so `after`'s place in it is arithmetic."""
        if after >= self.last:
            return []
        if not self.ring or self.ring[0].sequence > after + 1:
            return None
        return list(itertools.islice(self.ring, after + 1 - self.ring[0].sequence, None))

    def wake(self) -> None:
        """Wakes every watcher waiting now (each waits on the event it took before reading)."""
        self.changed.set()
        self.changed = asyncio.Event()


class AuditTail:
    """This process's reader of watched tenants' trails."""

    def __init__(self, read: Read, head: Head) -> None:
        self._read = read
        self._head = head
        self._tenants: dict[UUID, _Tenant] = {}

    def on_audit(self, payload: str) -> None:
        """NOTIFY roz_audit: the tenant's trail grew."""
        try:
            tenant = self._tenants.get(UUID(payload))
        except ValueError:
            return
        if tenant is not None:
            self._catch_up(tenant, UUID(payload))

    def on_reconnect(self) -> None:
        for tenant_id, tenant in self._tenants.items():
            self._catch_up(tenant, tenant_id)

    def stir(self, tenant_id: UUID) -> None:
        """Something watchers of the tenant see besides the trail changed (telemetry)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            tenant.wake()

    def buffered(self, tenant_id: UUID) -> int:
        tenant = self._tenants.get(tenant_id)
        return 0 if tenant is None else len(tenant.ring)

    @contextlib.asynccontextmanager
    async def watching(self, tenant_id: UUID) -> AsyncIterator[_Tenant]:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = _Tenant(last=await self._head(tenant_id))
            tenant = self._tenants.setdefault(tenant_id, tenant)
        tenant.watchers += 1
        try:
            yield tenant
        finally:
            tenant.watchers -= 1
            if tenant.watchers == 0 and self._tenants.get(tenant_id) is tenant:
                del self._tenants[tenant_id]
                if tenant.reading is not None:
                    tenant.reading.cancel()

    def recheck(self, tenant: _Tenant, tenant_id: UUID) -> None:
        self._catch_up(tenant, tenant_id)

    def _catch_up(self, tenant: _Tenant, tenant_id: UUID) -> None:
        if tenant.reading is None or tenant.reading.done():
            tenant.reading = asyncio.ensure_future(self._read_new(tenant, tenant_id))
        else:  # its read may have started before the entries this call is about were sealed
            tenant.again = True

    async def _read_new(self, tenant: _Tenant, tenant_id: UUID) -> None:
        try:
            while True:
                tenant.again = False
                events = await self._read(tenant_id, tenant.last, PAGE)
                if events:
                    tenant.ring.extend(events)
                    tenant.last = events[-1].sequence
                    tenant.wake()
                if len(events) < PAGE and not tenant.again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the database is away: the next notification or recheck retries
            log.debug("reading the audit trail for watchers failed", exc_info=True)


# -- the watches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchRepositories:
    audit: Callable[[], AuditRepository]
    hosts: Callable[[], HostRepository]
    estops: Callable[[], EstopRepository]
    commands: Callable[[], CommandRepository]
    tasks: Callable[[], TaskRepository]


class Watches:
    def __init__(
        self,
        repositories: WatchRepositories,
        tail: AuditTail,
        telemetry: Callable[[UUID], TelemetrySnapshot | None],
        *,
        recheck_seconds: float = RECHECK_SECONDS,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ) -> None:
        self._repos = repositories
        self.tail = tail
        self._telemetry = telemetry
        self._recheck = recheck_seconds
        self.checkpoint_seconds = checkpoint_seconds

    async def host(self, tenant_id: UUID, host_id: UUID, after: int | None) -> AsyncIterator[Sent]:
        host = await self._repos.hosts().get(tenant_id, host_id)  # NotFound for another's
        async with self.tail.watching(tenant_id) as tenant:
            if after is None:
                after = tenant.last
                stops = await self._repos.estops().of_hosts(tenant_id, [host_id])
                yield Sent(after, HostState(host, stops[host_id]))
            else:
                yield Sent(after, Checkpoint())
            told: TelemetrySnapshot | None = None
            async for sent in self._changes(
                tenant, tenant_id, after, lambda event: event.host_id == host_id
            ):
                if sent is not None:
                    after = sent.sequence
                    yield sent
                    continue
                latest = self._telemetry(host_id)
                if latest is not None and latest is not told:
                    told = latest
                    yield Sent(after, Telemetry(host_id, latest))

    async def command(
        self, tenant_id: UUID, command_id: UUID, after: int | None
    ) -> AsyncIterator[Sent]:
        commands = self._repos.commands()
        found = await commands.get(tenant_id, command_id)
        last = after or 0
        async for sent in self._item(
            tenant_id, command_id, after, found, found.state.is_terminal, "command.ended"
        ):
            if sent is None:
                yield Sent(last, await commands.get(tenant_id, command_id))
            else:
                last = sent.sequence
                yield sent

    async def task(self, tenant_id: UUID, task_id: UUID, after: int | None) -> AsyncIterator[Sent]:
        tasks = self._repos.tasks()
        found = await tasks.get(tenant_id, task_id)
        last = after or 0
        async for sent in self._item(
            tenant_id, task_id, after, found, found.state.terminal, "task.ended"
        ):
            if sent is None:
                yield Sent(last, await tasks.get(tenant_id, task_id))
            else:
                last = sent.sequence
                yield sent

    async def fleet(self, tenant_id: UUID, after: int | None) -> AsyncIterator[Sent]:
        async with self.tail.watching(tenant_id) as tenant:
            if after is None:
                after = tenant.last
                async for state in self._fleet_states(tenant_id):
                    yield Sent(after, state)
            else:
                yield Sent(after, Checkpoint())
            async for sent in self._changes(
                tenant, tenant_id, after, lambda event: event.kind.startswith(FLEET_KINDS)
            ):
                if sent is not None:
                    yield sent

    # -- the parts ---------------------------------------------------------------------------

    async def _item(
        self,
        tenant_id: UUID,
        item_id: UUID,
        after: int | None,
        found: Command | Task,
        final: bool,
        ending: str,
    ) -> AsyncIterator[Sent | None]:
        """The changes of one command or task, each followed by a None (the caller sends the
        item as it is then, at the change's sequence); ends after its ending change."""
        async with self.tail.watching(tenant_id) as tenant:
            if after is None:
                yield Sent(tenant.last, found)
                if final:
                    return
                after = tenant.last
            elif final:
                # Resumed after its end: what is left of its changes, from the trail.
                yield Sent(after, Checkpoint())
                async for event in self._read_matching(tenant_id, after, item_id):
                    yield Sent(event.sequence, Change(event))
                    yield None
                return
            else:
                yield Sent(after, Checkpoint())
            async for sent in self._changes(
                tenant, tenant_id, after, lambda event: event.subject_id == item_id
            ):
                if sent is None:
                    continue
                yield sent
                if isinstance(sent.item, Change):
                    yield None
                    if sent.item.event.kind == ending:
                        return

    async def _changes(
        self,
        tenant: _Tenant,
        tenant_id: UUID,
        after: int,
        matches: Callable[[AuditEvent], bool],
    ) -> AsyncIterator[Sent | None]:
        """The tenant's entries after `after` that match, in order, forever; a None after each
        wake-up with nothing new (the caller may look at what is not in the trail), and a
        checkpoint after CHECKPOINT_SECONDS without anything sent."""
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            waiter = tenant.changed
            recent = tenant.since(after)
            if recent is None:  # behind the ring: a page from the trail itself
                recent = list(await self._read_page(tenant_id, after))
                behind = len(recent) == PAGE
            else:
                behind = False
            for event in recent:
                after = event.sequence
                if matches(event):
                    last_sent = loop.time()
                    yield Sent(event.sequence, Change(event))
            if behind or recent:
                continue
            yield None
            if loop.time() - last_sent >= self.checkpoint_seconds:
                last_sent = loop.time()
                yield Sent(after, Checkpoint())
            try:
                async with asyncio.timeout(min(self._recheck, self.checkpoint_seconds)):
                    await waiter.wait()
            except TimeoutError:
                self.tail.recheck(tenant, tenant_id)

    async def _read_page(self, tenant_id: UUID, after: int) -> Sequence[AuditEvent]:
        return await self._repos.audit().after(tenant_id, after, PAGE)

    async def _read_matching(
        self, tenant_id: UUID, after: int, subject_id: UUID
    ) -> AsyncIterator[AuditEvent]:
        token = ""
        while True:
            page = await self._repos.audit().list(
                tenant_id,
                AuditQuery(subject_id=subject_id, after_sequence=after, ascending=True),
                page_size=PAGE,
                page_token=token,
            )
            for event in page.items:
                yield event
            token = page.next_page_token
            if not token:
                return

    async def _fleet_states(self, tenant_id: UUID) -> AsyncIterator[HostState]:
        hosts = self._repos.hosts()
        token = ""
        while True:
            page = await hosts.list(tenant_id, page_size=500, page_token=token)
            stops = await self._repos.estops().of_hosts(tenant_id, [h.id for h in page.items])
            for host in page.items:
                if host.id in stops:
                    yield HostState(host, stops[host.id])
            token = page.next_page_token
            if not token:
                return
