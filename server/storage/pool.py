"""The request pool: psycopg's, guarded by the database's availability and safe to cancel in.

Three things psycopg's pool does not do on its own:
- While the database is down it refuses at once (Unavailable, with a retry delay) instead of
  letting each caller wait out the pool timeout; a caller already waiting is cut short when the
  database is found down; a connection that broke makes the database suspect.
- It never hands out a connection the server has already closed (restarted, killed, terminated
  the backend): two non-blocking reads find out, so a database that restarted between two calls
  costs no call an error.
- A call cancelled while its query runs keeps its connection. psycopg answers a cancellation by
  cancelling the query in the server and reading the connection back to idle; a *second*
  cancellation during that (a call's deadline and its client's RST_STREAM land milliseconds
  apart) makes it give up and close the connection. Each wait on the server therefore runs in
  a task of its own that is cancelled once, however often the caller is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection, OperationalError, pq
from psycopg.abc import PQGen
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.storage.availability import Availability

_WAIT_INTERVAL = 0.1  # psycopg's own


class CancelSafeConnection(AsyncConnection[TupleRow]):
    """A connection whose query cancellation cannot itself be interrupted (see the module)."""

    async def wait(
        self,
        gen: PQGen[Any],
        interval: float = _WAIT_INTERVAL,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg's signature)
    ) -> Any:
        work = asyncio.ensure_future(super().wait(gen, interval, timeout))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                work.cancel()  # once: psycopg cancels the query and drains the connection
                while not work.done():
                    try:
                        await asyncio.wait([work])
                    except asyncio.CancelledError:
                        continue  # cancelled again: the first cancellation is still going on
            if not work.cancelled():
                work.exception()  # retrieved: the caller's cancellation is what it sees
            raise


class GuardedPool(AsyncConnectionPool[AsyncConnection[TupleRow]]):
    """psycopg's pool that fails fast while `availability` says the database is down."""

    def __init__(self, conninfo: str, *, availability: Availability, **kwargs: Any) -> None:
        super().__init__(
            conninfo, connection_class=CancelSafeConnection, configure=self._remember, **kwargs
        )
        self.availability = availability
        # The backend pids of this pool's sessions (a closed one's stays; pids are reused
        # rarely, and a stale one costs at most a needless wake-up).
        self.backend_pids: set[int] = set()

    async def _remember(self, conn: AsyncConnection[TupleRow]) -> None:
        self.backend_pids.add(conn.info.backend_pid)

    async def getconn(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg's signature)
    ) -> AsyncConnection[TupleRow]:
        try:
            async with self.availability.cut_short_when_down():
                while True:
                    conn = await super().getconn(timeout)
                    if not _closed_by_server(conn):
                        return conn
                    await self.putconn(conn)  # discarded, and replaced by a fresh connection
                    self.availability.suspect("the server closed a pooled connection")
        except PoolTimeout as exc:
            self.availability.suspect(exc)
            raise

    @asynccontextmanager
    async def connection(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg's signature)
    ) -> AsyncIterator[AsyncConnection[TupleRow]]:
        async with super().connection(timeout) as conn:
            try:
                yield conn
            finally:
                if conn.broken:
                    self.availability.suspect("a connection broke")


def _closed_by_server(conn: AsyncConnection[TupleRow]) -> bool:
    """True if the server has closed this idle connection; never blocks.

    The first read takes in what the server said last (the FATAL of a shutdown, if any); the
    second finds the end of the stream behind it.
    """
    pgconn = conn.pgconn
    try:
        pgconn.consume_input()
        pgconn.consume_input()
    except OperationalError:
        return True
    return pgconn.status != pq.ConnStatus.OK
