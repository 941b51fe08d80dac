"""Stopping background loops holds even when a library turned the cancellation into its own error.

The trigger scheduler is the loop a CI run caught: a shutdown waited on it forever, the task
"cancelling" and asleep in its next round.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import pytest
from psycopg import OperationalError

from server import background
from server.services.firing import FiringStore, TriggerFiring

STOPPED_WITHIN_SECONDS = 10.0


async def test_a_loop_that_swallows_its_cancellation_is_stopped_all_the_same() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if rounds == 1:  # a library's clean-up failed: one more error, go round again
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    async with asyncio.timeout(STOPPED_WITHIN_SECONDS) as waited:
        await background.stop(task)
    assert not waited.expired()
    assert task.cancelled()
    assert rounds == 2


async def test_the_error_a_task_ended_with_is_raised() -> None:
    async def failing() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken"):
        await background.stop(task)
    await background.stop(None)  # nothing to stop


async def test_the_trigger_scheduler_stops_when_the_driver_turns_its_cancel_into_an_error() -> None:
    """The database call in flight when shutdown cancels the scheduler fails with the driver's
    OperationalError (which the loop takes for the database being away, and retries)."""
    in_call = asyncio.Event()

    async def overview(_now: datetime) -> tuple[list[UUID], datetime | None]:
        in_call.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise OperationalError("consuming input failed: server closed the connection") from None
        return [], None

    async def nothing() -> list[UUID]:
        return []

    async def none(_tenant: UUID, _now: datetime) -> int:
        return 0

    firing = TriggerFiring(
        FiringStore(
            overview=overview,
            fire_due=none,
            event_tenants=nothing,
            dispatch_events=none,
            batch_size=50,
        ),
        clock=lambda: datetime.now(UTC),
        poll_seconds=3600,
    )
    firing.start()
    await in_call.wait()
    (scheduler,) = [t for t in asyncio.all_tasks() if t.get_name() == "roz-trigger-firing"]
    async with asyncio.timeout(STOPPED_WITHIN_SECONDS) as waited:
        await firing.stop()
    # On its own: a stop that only gives way when its caller is cancelled (the old one ate
    # that cancellation too, and took the scheduler down with it) does not count.
    assert not waited.expired()
    assert scheduler.done()
