"""A TCP load balancer for tests: each connection goes to the first of its targets that accepts,
and is piped both ways until either side closes. A robot behind it reconnects to "the other
server" when one dies, as it would behind a real balancer. `hold()` stops it carrying bytes
(a network partition: nothing is closed, nothing arrives) until `release()`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Forwarder:
    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.port = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None

    def hold(self) -> None:
        assert self._loop is not None
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def release(self) -> None:
        assert self._loop is not None
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.set)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                assert self._flowing is not None
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for host, port in list(self.targets):
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            self.connections += 1
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
            return
        writer.close()


@contextmanager
def forwarding(targets: list[tuple[str, int]]) -> Iterator[Forwarder]:
    forwarder = Forwarder(targets)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server: list[asyncio.Server] = []

    async def start() -> None:
        forwarder._loop = asyncio.get_running_loop()
        forwarder._flowing = asyncio.Event()
        forwarder._flowing.set()
        server.append(await asyncio.start_server(forwarder._accept, "127.0.0.1", 0))
        forwarder.port = server[0].sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    try:
        yield forwarder
    finally:
        server[0].close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
