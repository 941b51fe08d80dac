"""The process's one LISTEN connection: PostgreSQL notifications in, callbacks out.

A notification is a wake-up, never the data: its payload is an opaque id (any database user can
listen), and whoever is woken reads under RLS. Notifications are delivered at commit and are not
replayed, so when the connection is lost and made again the `on_reconnect` callback runs: every
waiter must then look for itself (the robot link's catch-up). The connection is its own, in
autocommit, outside the request pool: a running `notifies()` holds the connection (psycopg #340).
While idle it probes the connection every `probe_seconds` so that a dead one is found and
replaced even when nothing is being notified.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from psycopg import AsyncConnection, sql

from server import background

log = logging.getLogger(__name__)

Handler = Callable[[str], None]
# A handler that also learns the backend pid of the session that notified.
SenderHandler = Callable[[str, int], None]


class NotificationListener:
    """Listens on `channels` (name → handler of the payload) for as long as it runs."""

    def __init__(
        self,
        conninfo: Callable[[], str],
        channels: Mapping[str, Handler],
        *,
        on_reconnect: Callable[[], None],
        senders: Mapping[str, SenderHandler] | None = None,
        probe_seconds: float = 10.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._channels = dict(channels)
        self._senders = dict(senders or {})
        self._on_reconnect = on_reconnect
        self._probe_seconds = probe_seconds
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None
        # Set while LISTENing; tests wait on it and read the backend's pid.
        self.listening = asyncio.Event()
        self.backend_pid: int | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the listener is already running")
        self._task = asyncio.create_task(self._run(), name="roz-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)

    async def _run(self) -> None:
        lost = False
        while True:
            try:
                await self._listen(reconnected=lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: try again, keep the loop
                if not lost:
                    log.warning("notification listener lost its connection: %s", exc)
                lost = True
            finally:
                self.listening.clear()
                self.backend_pid = None
            await asyncio.sleep(self._retry_seconds)

    async def _listen(self, *, reconnected: bool) -> None:
        async with await AsyncConnection.connect(
            self._conninfo(), autocommit=True, connect_timeout=5
        ) as conn:
            for channel in {**self._channels, **self._senders}:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.backend_pid = conn.info.backend_pid
            self.listening.set()
            if reconnected:
                log.info("notification listener connected again; catching up")
            # Anything notified while no one listened must be looked for.
            self._on_reconnect()
            while True:
                async for notify in conn.notifies(timeout=self._probe_seconds):
                    handler = self._channels.get(notify.channel)
                    if handler is not None:
                        handler(notify.payload)
                    sender_handler = self._senders.get(notify.channel)
                    if sender_handler is not None:
                        sender_handler(notify.payload, notify.pid)
                await conn.execute("SELECT 1")  # quiet: is the connection still there?
