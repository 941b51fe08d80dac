"""Hypercorn as this gateway needs it: `serve`, with the protocol fixes one busy port requires.

Hypercorn 0.18's HTTP/2 protocol forgets a stream once the app has answered, but the client may
still be sending that stream's request body (an upload refused with 413, a gRPC call answered
before the client half-closed). The next DATA frame for it raised KeyError inside the connection
and dropped every other stream on it (pgjones/hypercorn#329), and the bytes were never handed
back to flow control. Here such DATA is acknowledged and the stream is reset with NO_ERROR, as
RFC 9113 §8.1 lets a server ask a client to stop sending a request it has already answered; a
stream answered while the client still sends is reset the same way as soon as it is answered.

Its TCP server also kept every connection the peer had closed in CLOSE-WAIT until the keep-alive
timer fired (see _TCPServer).

The fixes are subclasses installed into Hypercorn's module namespace when `serve` (or `install`)
runs: Hypercorn picks its protocol classes from there for every connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h2.stream
import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config
from hypercorn.events import Event as ConnectionEvent
from hypercorn.events import Updated
from hypercorn.protocol.events import Event, StreamClosed
from hypercorn.protocol.h2 import H2Protocol

from gateway.asgi import ASGIApp

_ANSWERED_BEFORE_REQUEST_END = h2.stream.StreamState.HALF_CLOSED_LOCAL


class _H2Protocol(H2Protocol):
    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        opened: set[int] = set()
        kept: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                opened.add(event.stream_id)
            elif (
                isinstance(event, (h2.events.DataReceived, h2.events.StreamEnded))
                and event.stream_id not in self.streams
                and event.stream_id not in opened
            ):
                self._drop_answered(event)
                continue
            kept.append(event)
        await super()._handle_events(kept)

    def _drop_answered(self, event: h2.events.DataReceived | h2.events.StreamEnded) -> None:
        """Request body for a stream already answered: give the window back, ask for no more."""
        if isinstance(event, h2.events.DataReceived):
            self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._stop_request_body(event.stream_id)

    def _stop_request_body(self, stream_id: int) -> None:
        stream = self.connection.streams.get(stream_id)
        if stream is None or stream.state_machine.state != _ANSWERED_BEFORE_REQUEST_END:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    async def stream_send(self, event: Event) -> None:
        await super().stream_send(event)
        if isinstance(event, StreamClosed) and not self.closed:
            # The app is done with this stream; if the client still sends, stop it now rather
            # than at its next DATA frame (which may be gigabytes away, or never come).
            self._stop_request_body(event.stream_id)
            await self._flush()


class _TCPServer(TCPServer):
    """Closes a connection as soon as the peer has closed it.

    Hypercorn 0.18 leaves the read loop at EOF but waits for its keep-alive timer before the
    connection's task group can end, so every connection a client closed sat in CLOSE-WAIT for
    the whole keep-alive timeout (300 s here); a few hundred curls used up the descriptors.
    """

    _peer_gone = False

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._peer_gone = True
            await self.idle_task.stop()

    async def protocol_send(self, event: ConnectionEvent) -> None:
        if self._peer_gone and isinstance(event, Updated):
            return  # no keep-alive timer for a connection that is over
        await super().protocol_send(event)


def install() -> None:
    """Makes Hypercorn build its connections with the fixes above (idempotent)."""
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[attr-defined]
    hypercorn.asyncio.run.TCPServer = _TCPServer  # type: ignore[attr-defined]


async def serve(
    app: ASGIApp,
    config: Config,
    *,
    shutdown_trigger: Callable[..., Awaitable[Any]] | None = None,
) -> None:
    """hypercorn.asyncio.serve, with the fixes installed first."""
    install()
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
