"""A real Hypercorn listener on an ephemeral port, in a thread of its own, for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypercorn.config import Config

from gateway.serving import serve

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


@dataclass
class RunningServer:
    host: str
    port: int
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """For grpc.insecure_channel and grpcurl."""
        return f"{self.host}:{self.port}"

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Runs a coroutine on the server's loop (to reach app state from a test)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


def with_lifespan(app: ASGIApp) -> ASGIApp:
    """The least a router does: answers lifespan startup and shutdown, passes the rest to `app`.

    For serving an app that is not a GatewayRouter (which answers lifespan itself).
    """

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return asgi


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    app_factory: Callable[[], Any],
    configure: Callable[[Config], None] | None = None,
    config: Config | None = None,
    port: int | None = None,
) -> Iterator[RunningServer]:
    """Builds the ASGI app on the server thread's loop and serves it until the block ends.

    `config` (e.g. the server's own hypercorn_config) is used as given, bound to `port` or a
    free one.
    """
    port = port or free_port()
    if config is None:
        config = Config()
        config.keep_alive_max_requests = 1_000_000
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    if configure:
        configure(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        app = app_factory()
        task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
        await _wait_listening(port)
        started.set()
        await task

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=thread_main, name=f"hypercorn-{port}", daemon=True)
    thread.start()
    if not started.wait(60) or failure:
        raise RuntimeError(f"server did not start: {failure!r}")
    try:
        yield RunningServer("127.0.0.1", port, loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


async def _wait_listening(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {port}")
