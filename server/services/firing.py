"""Firing triggers in each server process: the scheduler of schedule triggers and the dispatcher
of outbox events to event triggers. (Webhook deliveries fire in their own calls.)

Every process runs both; storage makes each fire happen once however many do
(server/storage/triggers.py). The scheduler sleeps until the earliest next fire time of all
triggers, at most `poll_seconds`, and is woken early when a trigger is created or changed
(NOTIFY roz_triggers). The dispatcher is woken by each event written (NOTIFY roz_trigger_events)
and looks anyway every `poll_seconds`, for a notification lost while its listener was away. Both
run in one task, one after the other, so firing holds one pool connection at a time.
Time comes from `clock`, so tests move it instead of waiting.

    firing = TriggerFiring(FiringStore(...), clock=utcnow, poll_seconds=1.0)
    firing.start()          # in the lifespan, once the database is open
    firing.wake()           # NOTIFY roz_triggers
    firing.on_event("…")    # NOTIFY roz_trigger_events
    await firing.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server import background
from server.storage.availability import DATABASE_AWAY

log = logging.getLogger(__name__)

# How soon to look again at triggers that are due but held by another process's batch.
_BUSY_SECONDS = 0.02


@dataclass(frozen=True)
class FiringStore:
    """What firing needs of storage, bound to the pool: see server/storage/triggers.py."""

    # now → tenants with a trigger due, and the earliest next fire time of all.
    overview: Callable[[datetime], Awaitable[tuple[list[UUID], datetime | None]]]
    # (tenant, now) → how many due triggers one batch claimed.
    fire_due: Callable[[UUID, datetime], Awaitable[int]]
    event_tenants: Callable[[], Awaitable[list[UUID]]]
    # (tenant, now) → how many events one batch took.
    dispatch_events: Callable[[UUID, datetime], Awaitable[int]]
    batch_size: int


class TriggerFiring:
    def __init__(
        self, store: FiringStore, *, clock: Callable[[], datetime], poll_seconds: float = 1.0
    ) -> None:
        if not poll_seconds > 0:
            raise ValueError("poll_seconds must be positive")
        self._store = store
        self._clock = clock
        self._poll = poll_seconds
        # Set by a trigger changed or an event written anywhere (NOTIFY), or a lost listener.
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("firing is already running")
        self._task = asyncio.create_task(self._loop(), name="roz-trigger-firing")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)

    def wake(self, _payload: str = "") -> None:
        """A trigger was created or changed somewhere: plan again."""
        self._woken.set()

    def on_event(self, _payload: str = "") -> None:
        """An event was written somewhere: dispatch it."""
        self._woken.set()

    def on_reconnect(self) -> None:
        """The listener was away: whatever was notified meanwhile is looked for now."""
        self._woken.set()

    async def fire_schedules(self, now: datetime) -> tuple[int, datetime | None]:
        """Every schedule trigger due at `now`, in every tenant, fired once (here or by another
        process); returns how many this process claimed, and the next fire time of all."""
        claimed = 0
        tenants, _ = await self._store.overview(now)
        for tenant in tenants:
            while True:
                count = await self._store.fire_due(tenant, now)
                claimed += count
                if count < self._store.batch_size:
                    break
        _, next_fire_time = await self._store.overview(now)
        return claimed, next_fire_time

    async def dispatch_events(self) -> int:
        """Every event in the outbox, in every tenant, matched to its triggers and fired."""
        taken = 0
        for tenant in await self._store.event_tenants():
            while True:
                count = await self._store.dispatch_events(tenant, self._clock())
                taken += count
                if count < self._store.batch_size:
                    break
        return taken

    async def _loop(self) -> None:
        """One task, so firing holds at most one of the pool's connections at a time."""
        while True:
            self._woken.clear()
            delay = self._poll
            try:
                claimed, next_fire_time = await self.fire_schedules(self._clock())
                if claimed:
                    log.debug("fired %d schedule triggers", claimed)
                if next_fire_time is not None:
                    until = (next_fire_time - self._clock()).total_seconds()
                    # Due but claimed elsewhere: look again shortly, not in a tight loop.
                    delay = min(self._poll, max(until, 0.0 if claimed else _BUSY_SECONDS))
            except DATABASE_AWAY:  # logged once, by availability
                pass
            except Exception:
                log.warning("firing schedule triggers failed; retrying", exc_info=True)
            try:
                await self.dispatch_events()
            except DATABASE_AWAY:
                pass
            except Exception:
                log.warning("dispatching trigger events failed; retrying", exc_info=True)
            await _wait(self._woken, delay)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
