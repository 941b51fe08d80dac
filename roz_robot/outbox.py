"""What one stream's writer has still to send: a bounded queue that lets its senders go when
the stream is gone."""

from __future__ import annotations

import asyncio
from collections import deque

OUTBOX_LIMIT = 256


class Outbox:
    """Messages for one stream's single writer (grpc.aio allows one write in flight), bounded.

    A sender waits for room; once the stream is gone (`close()`), senders stop waiting and what
    they send is dropped: reports are kept elsewhere until answered, and acknowledgements,
    heartbeats and telemetry mean nothing on a dead stream. (An asyncio.Queue would keep a
    sender waiting forever for room in a queue that nobody reads any more.)
    """

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._items: deque[object] = deque()
        self._limit = limit
        self._closed = False
        self._room = asyncio.Event()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, message: object) -> None:
        while not self._closed and len(self._items) >= self._limit:
            self._room.clear()
            await self._room.wait()
        if not self._closed:
            self._items.append(message)
            self._ready.set()

    def signal(self, marker: object) -> None:
        """Queues `marker` without waiting for room: for the few markers ("send the latest
        acknowledgement now") that the caller queues at most once each, so the bound holds
        but for them, and a reader of the stream never waits on its writer."""
        if not self._closed:
            self._items.append(marker)
            self._ready.set()

    async def get(self) -> object:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        message = self._items.popleft()
        self._room.set()
        return message

    def close(self) -> None:
        self._closed = True
        self._room.set()
