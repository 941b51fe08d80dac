"""Whether the database answers: one up/down state, probed after a failure until it is back.

A broken connection, a pool that hands out nothing, or a failed health check makes the database
*suspect*; a probe (a fresh connection as the request role, SELECT 1, within a second) decides.
While the probe fails the database is *down*: callers are refused at once with Unavailable
instead of each waiting out the pool's timeout, callers already waiting for a connection are cut
short, and `restart` (of the embedded server) runs between probes. Once a probe succeeds,
`reconnect` drops the pool's dead connections before callers are let in again. Each change of
state is logged once and reported to listeners (health statuses); nothing is logged per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from psycopg import OperationalError

from server import background
from server.domain.errors import Unavailable

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
Action = Callable[[], Awaitable[None]]
Restart = Callable[[], Awaitable[bool]]  # True when it started the database again
Listener = Callable[[bool], None]

# What a refused caller is told to wait before retrying (google.rpc.RetryInfo).
RETRY_AFTER_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.0
# Between probes while down: quick at first (a restart takes about a second), then every second.
_FIRST_RETRY_SECONDS = 0.1
_MAX_RETRY_SECONDS = 1.0


# What a background loop (a sweep, a flush, a pulse) sees when the database goes away: refused
# at once while it is known down (Unavailable), or cut off mid-query by a restart or a terminated
# backend (OperationalError, such as AdminShutdown). Availability logs the outage once; a loop
# that meets one of these retries next round without a traceback of its own.
DATABASE_AWAY: tuple[type[Exception], ...] = (Unavailable, OperationalError)


def database_unavailable() -> Unavailable:
    return Unavailable("database unavailable, retry later", retry_after_seconds=RETRY_AFTER_SECONDS)


class Availability:
    """The database's state as this process sees it; `suspect()` starts a probe if none runs."""

    def __init__(
        self, probe: Probe, *, restart: Restart | None = None, reconnect: Action | None = None
    ) -> None:
        self._probe = probe
        self._restart = restart
        self._reconnect = reconnect
        self._up = True
        self._down_since = 0.0
        self._listeners: list[Listener] = []
        self._waiting: set[asyncio.Timeout] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def up(self) -> bool:
        return self._up

    def listen(self, listener: Listener) -> None:
        """Calls `listener(up)` on the event loop at every change of state."""
        self._listeners.append(listener)

    def check(self) -> None:
        """Raises Unavailable at once while the database is down."""
        if not self._up:
            raise database_unavailable()

    @asynccontextmanager
    async def cut_short_when_down(self) -> AsyncIterator[None]:
        """A wait (for a pool connection) that ends with Unavailable as soon as the database is
        found down, rather than at its own timeout."""
        self.check()
        try:
            async with asyncio.timeout(None) as timeout:
                self._waiting.add(timeout)
                try:
                    yield
                finally:
                    self._waiting.discard(timeout)
        except TimeoutError as exc:
            if timeout.expired():
                raise database_unavailable() from exc
            raise

    def suspect(self, reason: object) -> None:
        """Something failed as if the database were gone; a probe finds out whether it is."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        log.debug("database suspect: %s", reason)
        self._task = asyncio.create_task(self._supervise(reason), name="roz-database-probe")

    async def _supervise(self, reason: object) -> None:
        delay = _FIRST_RETRY_SECONDS
        while True:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    await self._probe()
            except Exception as exc:
                if self._up:
                    self._change(up=False, why=exc)
                if self._restart is not None:
                    try:
                        if await self._restart():
                            continue  # probe it at once
                    except Exception:
                        log.exception("could not restart the database")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_SECONDS)
                continue
            if self._up:
                # One connection broke (terminated, timed out) but the database answers.
                log.info("a database connection failed, but the database answers: %s", reason)
                return
            if self._reconnect is not None:
                await self._reconnect()
            self._change(up=True, why=None)
            return

    def _change(self, *, up: bool, why: Exception | None) -> None:
        self._up = up
        if up:
            log.warning(
                "database answers again after %.1fs; serving requests",
                time.monotonic() - self._down_since,
            )
        else:
            self._down_since = time.monotonic()
            log.warning(
                "database unreachable (%s: %s); answering UNAVAILABLE until it is back",
                type(why).__name__,
                str(why).strip() or "no answer",
            )
            loop_time = asyncio.get_running_loop().time()
            for timeout in self._waiting:
                timeout.reschedule(loop_time)
        for listener in self._listeners:
            try:
                listener(up)
            except Exception:
                log.exception("database state listener failed")

    async def close(self) -> None:
        """Stops probing (at shutdown): the process no longer waits for the database."""
        self._closed = True
        task, self._task = self._task, None
        await background.stop(task)
