"""The server's background sweeps: one loop that runs every registered sweep each interval.

A sweep is an async function of the pool that moves what is overdue (tasks past their timeout,
later commands) and returns how many rows it moved. Every server process runs the loop; each
sweep must therefore be safe to run concurrently with itself in other processes (row locks with
SKIP LOCKED, compare-and-set on the state), and idempotent. One failing sweep is logged and
retried next round; it never stops the others or the loop.

    sweeper = Sweeper(interval_seconds=5).add("task timeouts", time_out_tasks)
    sweeper.start(pool)   # in the lifespan, once the database is open
    await sweeper.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server import background
from server.storage.availability import DATABASE_AWAY
from server.storage.database import Pool

log = logging.getLogger(__name__)

Sweep = Callable[[Pool], Awaitable[int]]


@dataclass
class SweepStats:
    """One sweep's tally since the process started, read by the metrics when scraped."""

    runs: int = 0
    failures: int = 0
    seconds: float = 0.0
    moved: int = 0

    def record(self, moved: int, seconds: float) -> None:
        """One run that moved `moved` rows (-1: it failed) in `seconds`."""
        self.runs += 1
        self.seconds += seconds
        if moved < 0:
            self.failures += 1
        else:
            self.moved += moved


class Sweeper:
    """A small registry of named sweeps and the loop that runs them."""

    def __init__(self, interval_seconds: float) -> None:
        if not interval_seconds > 0:
            raise ValueError("interval_seconds must be positive")
        self._interval = interval_seconds
        self._sweeps: dict[str, Sweep] = {}
        self.stats: dict[str, SweepStats] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, sweep: Sweep) -> Sweeper:
        """Registers a sweep (before `start`); names are for the log and must be unique."""
        if name in self._sweeps:
            raise ValueError(f"a sweep named {name!r} is already registered")
        if self._task is not None:
            raise RuntimeError("add sweeps before starting the sweeper")
        self._sweeps[name] = sweep
        self.stats[name] = SweepStats()
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._sweeps)

    async def run_once(self, pool: Pool) -> dict[str, int]:
        """Every sweep once, in registration order: how many rows each moved (-1: it failed)."""
        moved: dict[str, int] = {}
        for name, sweep in self._sweeps.items():
            started = time.perf_counter()
            try:
                count = await sweep(pool)
            except DATABASE_AWAY:  # logged once, by availability; the next round retries
                count = -1
            except Exception:  # the next round retries; one sweep must not stop the others
                log.warning("sweep %r failed", name, exc_info=True, extra={"sweep": name})
                count = -1
            self.stats[name].record(count, time.perf_counter() - started)
            moved[name] = count
            if count > 0:
                log.info("sweep %r moved %d", name, count, extra={"sweep": name, "moved": count})
        return moved

    def start(self, pool: Pool) -> None:
        if self._task is not None:
            raise RuntimeError("the sweeper is already running")
        self._task = asyncio.create_task(self._loop(pool), name="roz-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)

    async def _loop(self, pool: Pool) -> None:
        while True:
            await self.run_once(pool)
            await asyncio.sleep(self._interval)
