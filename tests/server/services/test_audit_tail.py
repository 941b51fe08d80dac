"""The watches' tail of a tenant's trail, on its own: one read per notification however many
watch, no entry left behind by a notification that arrives during a read, and a ring that finds a
watcher's place by arithmetic and never holds more than RING entries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from server.domain.audit import AuditEvent, Protocol
from server.services.watches import RING, AuditTail

TENANT = uuid.uuid4()


def entry(sequence: int) -> AuditEvent:
    return AuditEvent(
        tenant_id=TENANT,
        sequence=sequence,
        kind="estop.engaged",
        event_time=datetime.now(UTC),
        actor_key_id=None,
        actor_host_id=None,
        protocol=Protocol.SERVER,
        request_id="",
        host_id=None,
        environment_id=None,
        subject_id=None,
        detail_json="{}",
        previous_hash=None,
        hash=b"\0" * 32,
    )


class Trail:
    """A trail that grows when told, and whose reads a test can hold."""

    def __init__(self) -> None:
        self.last = 0
        self.reads = 0
        self.hold: asyncio.Event | None = None

    async def read(self, tenant: uuid.UUID, after: int, limit: int) -> Sequence[AuditEvent]:
        self.reads += 1
        upto = self.last  # what is committed when the read starts
        if self.hold is not None:
            await self.hold.wait()
        return [entry(n) for n in range(after + 1, min(upto, after + limit) + 1)]

    async def head(self, tenant: uuid.UUID) -> int:
        return self.last


async def reaches(tenant: Any, sequence: int, *, seconds: float) -> None:
    """Waits, as a watcher does, until the tail has read up to `sequence`."""
    async with asyncio.timeout(seconds):
        while tenant.last < sequence:
            await tenant.changed.wait()


async def test_a_notification_during_a_read_is_not_lost() -> None:
    trail = Trail()
    tail = AuditTail(trail.read, trail.head)
    async with tail.watching(TENANT) as tenant:
        trail.hold = asyncio.Event()
        trail.last = 1
        tail.on_audit(str(TENANT))  # a read starts, sees entry 1, and is held
        await asyncio.sleep(0)
        trail.last = 2
        tail.on_audit(str(TENANT))  # entry 2 was sealed after that read began
        trail.hold.set()
        trail.hold = None
        await reaches(tenant, 2, seconds=1)  # not the watchers' 5 s recheck
        assert [event.sequence for event in tenant.since(0) or []] == [1, 2]
        assert trail.reads == 2


async def test_the_ring_keeps_the_latest_and_sends_a_watcher_behind_it_to_the_trail() -> None:
    trail = Trail()
    tail = AuditTail(trail.read, trail.head)
    async with tail.watching(TENANT) as tenant:
        trail.last = RING + 10
        tail.on_audit(str(TENANT))
        await reaches(tenant, RING + 10, seconds=2)
        assert tail.buffered(TENANT) == RING
        assert tenant.since(5) is None  # behind the ring: the watcher reads the trail itself
        assert [e.sequence for e in tenant.since(RING + 7) or []] == [RING + 8, RING + 9, RING + 10]
        assert tenant.since(RING + 10) == []
    assert tail.buffered(TENANT) == 0  # the last watcher gone, nothing is kept
