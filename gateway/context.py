"""The servicer context for every call the gateway carries: native gRPC, gRPC-web, Connect, REST.

It implements `grpc.aio.ServicerContext`, so servicers written for `grpc.aio.server()` run
unchanged. The protocol adapter that creates it reads back what the servicer set: initial and
trailing metadata, code and details.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from grpc import aio

from gateway.asgi import Receive

MetadataItems = Sequence[tuple[str, str | bytes]]
InitialMetadataSender = Callable[[MetadataItems], Awaitable[None]]


class GatewayContext(aio.ServicerContext):  # type: ignore[type-arg]
    def __init__(
        self,
        method: str,
        metadata: MetadataItems,
        *,
        timeout: float | None = None,
        peer: str = "",
        on_initial_metadata: InitialMetadataSender | None = None,
        protocol: str = "",
    ) -> None:
        self.method = method
        # Which adapter carries the call: "grpc", "grpc-web", "connect" or "rest" (Call.protocol).
        self.protocol = protocol
        self._metadata = tuple(metadata)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._peer = peer
        self._on_initial_metadata = on_initial_metadata
        # Read back by the protocol adapters (grpc.aio has no such attribute, only our context).
        self.initial_metadata: MetadataItems | None = None
        self.trailing_metadata: MetadataItems = ()  # type: ignore[assignment]
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._cancelled = False
        self._done = False
        self._done_callbacks: list[Callable[[GatewayContext], None]] = []

    # -- what the servicer reads -------------------------------------------------------------

    def invocation_metadata(self) -> MetadataItems:  # type: ignore[override]
        return self._metadata

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    # -- what the servicer sets --------------------------------------------------------------

    async def send_initial_metadata(self, initial_metadata: MetadataItems) -> None:  # type: ignore[override]
        if self.initial_metadata is not None:
            raise RuntimeError("initial metadata was already sent")
        self.initial_metadata = tuple(initial_metadata)
        if self._on_initial_metadata is not None:
            await self._on_initial_metadata(self.initial_metadata)

    def set_trailing_metadata(self, trailing_metadata: MetadataItems) -> None:  # type: ignore[override]
        self.trailing_metadata = tuple(trailing_metadata)

    def trailing_metadata_items(self) -> MetadataItems:
        return self.trailing_metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:  # type: ignore[override]
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str | None:  # type: ignore[override]
        return self._details

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: MetadataItems = (),  # type: ignore[override]
    ) -> NoReturn:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort needs a non-OK status code")
        self._code = code
        self._details = details
        if trailing_metadata:
            self.trailing_metadata = tuple(trailing_metadata)
        raise aio.AbortError(f"{code.name}: {details}")

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable")  # pragma: no cover

    def set_compression(self, compression: grpc.Compression) -> None:
        pass  # responses are compressed by the protocol adapter's own policy

    def disable_next_message_compression(self) -> None:
        pass

    async def read(self) -> Any:
        raise RuntimeError("request messages arrive as the handler's iterator argument")

    async def write(self, message: Any) -> None:
        raise RuntimeError("the interceptor chain adapts context.write() for streaming methods")

    # -- cancellation ------------------------------------------------------------------------

    def cancel_by_peer(self) -> None:
        """Called by the adapter when the client goes away or resets the stream."""
        self._cancelled = True
        self.finish()

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        for callback in self._done_callbacks:
            callback(self)

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[GatewayContext], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def is_active(self) -> bool:
        return not self._done


async def serve_until_disconnect(
    work: Awaitable[None], context: GatewayContext, receive: Receive
) -> None:
    """Runs a call's `work`; a client that goes away cancels it (a watch would never end).
    For adapters that have read the whole request body, so `receive` has only the disconnect
    left to say."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            context.cancel_by_peer()
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        watcher.cancel()
        task.cancel()
        context.finish()


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client has gone; the request body must have been read already."""
    while (await receive())["type"] != "http.disconnect":
        pass
