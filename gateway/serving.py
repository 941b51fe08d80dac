"""Hypercorn as this gateway needs it: `serve`, with the fixes one busy port of streams requires.

Hypercorn 0.18 is the listener (see ARCHITECTURE.md). Probing it with long-lived gRPC streams,
clients that stop reading, and hostile HTTP/2 peers found these faults; each is fixed here by a
subclass that `install` puts in Hypercorn's module namespace, where Hypercorn looks its classes up
for every connection. Each fix is pinned by a test in tests/server/test_listener.py or
tests/e2e/test_connection_reuse.py.

- Flow control did not hold a producer back: a stream's send buffer woke its producer whenever a
  *chunk* smaller than the low-water mark left it, which is every chunk when the peer's window is
  small (one byte, or zero), so a client that never reads made the server buffer every response
  (hundreds of MB without an API key, through reflection). `_StreamBuffer` wakes the producer only
  when the buffer itself falls below the mark, and wakes it for good when the stream closes.
- A stream the app had answered was forgotten while the client could still send its body; the
  next DATA frame raised KeyError and dropped every stream on the connection (pgjones/hypercorn#329)
  and the bytes were never handed back to flow control. Such DATA is acknowledged and the stream
  reset with NO_ERROR (RFC 9113 §8.1), as soon as it is answered.
- Hypercorn's per-stream queue to the app is bounded and its reader waits on it; when the app had
  already returned, nothing ever emptied it and the connection hung for good. Messages for an app
  that has returned are dropped.
- Streams reset by the client stayed in the priority tree, so after 1,000 resets the next stream
  raised TooManyStreamsError and the connection dropped without GOAWAY, with tracebacks. Resets
  now clean up, and a peer that resets streams faster than `MAX_RESETS` per `RESET_WINDOW_SECONDS`
  (the "rapid reset" attack, CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM and one log line.
- A stream over the advertised SETTINGS_MAX_CONCURRENT_STREAMS was a connection error (GOAWAY
  PROTOCOL_ERROR, killing the streams within the limit). It is refused alone with REFUSED_STREAM
  (RFC 9113 §5.1.2), which gRPC clients retry safely. h2 itself enforces a higher hard cap.
- At shutdown Hypercorn reset new streams without a status, closed idle connections without a
  word, and a late DATA frame crashed the connection (`KeyError`). Every HTTP/2 connection is now
  sent GOAWAY (NO_ERROR, naming the last stream it serves) and streams opened after it are
  refused with REFUSED_STREAM, which gRPC clients retry elsewhere.
- The TCP server kept every connection the peer had closed in CLOSE-WAIT until the keep-alive
  timer fired (300 s here); a few hundred curls used up the descriptors.
- Choosing the next stream to send on walked RFC 7540's priority tree, which costs time in the
  number of open streams for every frame: with 100 robots idling on a connection, sending their
  keepalives was a fifth of the server's CPU. RFC 9113 deprecates that scheme (§5.3); streams with
  data are now served in turn, each pick O(1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hypercorn.asyncio.run
import hypercorn.asyncio.tcp_server
import hypercorn.protocol
import hypercorn.protocol.h2
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.asyncio.task_group import TaskGroup, _handle
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config
from hypercorn.events import Closed, RawData, Updated
from hypercorn.events import Event as ConnectionEvent
from hypercorn.protocol.events import Event, StreamClosed
from hypercorn.protocol.h2 import BUFFER_LOW_WATER, H2Protocol, StreamBuffer
from hyperframe.frame import GoAwayFrame
from priority.priority import DeadlockError, DuplicateStreamError, MissingStreamError

from gateway.asgi import ASGIApp

log = logging.getLogger(__name__)

# Client resets allowed per connection in any window before it is told to calm down. gRPC clients
# reset a stream for each cancelled call or missed deadline, so this is far above honest use.
MAX_RESETS = 400
RESET_WINDOW_SECONDS = 10.0
# h2 refuses a stream beyond this as a connection error; below it (and above the advertised
# limit) streams are refused one by one.
_HARD_STREAM_CAP_FACTOR = 4
_ANSWERED_BEFORE_REQUEST_END = h2.stream.StreamState.HALF_CLOSED_LOCAL


class _StreamBuffer(StreamBuffer):
    """One stream's response bytes: the producer waits while they are at the high-water mark."""

    async def pop(self, max_length: int) -> bytes:
        length = min(len(self.buffer), max_length)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        if len(self.buffer) < BUFFER_LOW_WATER:
            await self._paused.set()
        if not self.buffer:
            await self._is_empty.set()
        return data


class _Settings(h2.settings.Settings):
    """Local settings that advertise one stream limit and let h2 enforce a higher one."""

    hard_stream_cap = 0

    @property
    def advertised_max_streams(self) -> int:
        return int(self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS])

    @property
    def max_concurrent_streams(self) -> int:
        return max(self.hard_stream_cap, self.advertised_max_streams)

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


class RoundRobin:
    """What Hypercorn asks of its priority tree, without priorities: the streams that have data
    (not blocked) take turns, in the order they became ready. The errors are the tree's, which
    Hypercorn catches."""

    def __init__(self) -> None:
        self._known: set[int] = set()
        self._ready: dict[int, None] = {}  # insertion-ordered: the turn order

    def insert_stream(self, stream_id: int, *_: Any, **__: Any) -> None:
        if stream_id in self._known:
            raise DuplicateStreamError(stream_id)
        self._known.add(stream_id)
        self._ready[stream_id] = None

    def remove_stream(self, stream_id: int) -> None:
        self._check(stream_id)
        self._known.discard(stream_id)
        self._ready.pop(stream_id, None)

    def block(self, stream_id: int) -> None:
        self._check(stream_id)
        self._ready.pop(stream_id, None)

    def unblock(self, stream_id: int) -> None:
        self._check(stream_id)
        self._ready.setdefault(stream_id, None)

    def reprioritize(self, stream_id: int, *_: Any, **__: Any) -> None:
        self._check(stream_id)  # priorities are ignored (RFC 9113 §5.3)

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        if not self._ready:
            raise DeadlockError("no stream has data to send")
        stream_id = next(iter(self._ready))
        del self._ready[stream_id]
        self._ready[stream_id] = None  # to the back of the line
        return stream_id

    def _check(self, stream_id: int) -> None:
        if stream_id not in self._known:
            raise MissingStreamError(stream_id)


def _current_values(settings: h2.settings.Settings) -> dict[h2.settings.SettingCodes, int]:
    return {h2.settings.SettingCodes(code): value for code, value in settings.items()}


class _H2Protocol(H2Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = _Settings(
            client=False,
            initial_values=_current_values(self.connection.local_settings),
        )
        settings.hard_stream_cap = self.config.h2_max_concurrent_streams * _HARD_STREAM_CAP_FACTOR
        self.connection.local_settings = settings
        self.priority = RoundRobin()  # type: ignore[assignment]  # the same interface
        self._resets: deque[float] = deque()
        self._calmed = False
        self._last_stream: int | None = None  # set once a shutdown's GOAWAY is out
        self._shutdown_watch: asyncio.Future[None] | None = None

    async def initiate(self, *args: Any, **kwargs: Any) -> None:
        await super().initiate(*args, **kwargs)
        self._shutdown_watch = asyncio.ensure_future(self._go_away_on_shutdown())

    async def _go_away_on_shutdown(self) -> None:
        await self.context.terminated.wait()
        await self.announce_shutdown()

    async def announce_shutdown(self) -> None:
        """GOAWAY (NO_ERROR) naming the last stream this connection will serve.

        Written beside h2 rather than through it: h2 treats a sent GOAWAY as the end of the
        connection and would refuse the DATA and WINDOW_UPDATE frames that streams still in
        flight need. Streams the client opens after it are refused with REFUSED_STREAM, which
        tells a gRPC client it may retry them elsewhere.
        """
        if self._last_stream is not None or self.closed:
            return
        self._last_stream = self.connection.highest_inbound_stream_id
        frame = GoAwayFrame(stream_id=0)
        frame.last_stream_id = self._last_stream
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        await self._flush()
        await self.send(RawData(frame.serialize()))

    # -- receiving -------------------------------------------------------------------------------

    async def handle(self, event: ConnectionEvent) -> None:
        if isinstance(event, Closed):
            if self._shutdown_watch is not None:
                self._shutdown_watch.cancel()
            await super().handle(event)
            for stream_id in list(self.stream_buffers):
                await self._forget_buffer(stream_id)
            return
        try:
            await super().handle(event)
        except h2.exceptions.TooManyStreamsError:
            await self._go_away(h2.errors.ErrorCodes.REFUSED_STREAM, "too many streams")

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        opened: set[int] = set()
        kept: list[h2.events.Event] = []
        resets: list[int] = []
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if self.context.terminated.is_set() and self._last_stream is None:
                    await self.announce_shutdown()
                if (self._last_stream is not None and event.stream_id > self._last_stream) or len(
                    self.streams
                ) + len(opened) >= self._advertised_streams():
                    self._reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                opened.add(event.stream_id)
            elif isinstance(event, (h2.events.DataReceived, h2.events.StreamEnded)) and (
                event.stream_id not in self.streams and event.stream_id not in opened
            ):
                self._drop_answered(event)
                continue
            elif isinstance(event, h2.events.StreamReset):
                resets.append(event.stream_id)
            kept.append(event)
        await super()._handle_events(kept)
        for stream_id in resets:
            await self._forget_buffer(stream_id)
        if resets and self._too_many_resets(len(resets)):
            await self._go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid stream resets")

    def _advertised_streams(self) -> int:
        settings = self.connection.local_settings
        if isinstance(settings, _Settings):
            return settings.advertised_max_streams
        return int(settings.max_concurrent_streams)

    def _drop_answered(self, event: h2.events.DataReceived | h2.events.StreamEnded) -> None:
        """Request body for a stream already answered: give the window back, ask for no more."""
        if isinstance(event, h2.events.DataReceived):
            self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._stop_request_body(event.stream_id)

    def _stop_request_body(self, stream_id: int) -> None:
        stream = self.connection.streams.get(stream_id)
        if stream is not None and stream.state_machine.state == _ANSWERED_BEFORE_REQUEST_END:
            self._reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, code)

    def _too_many_resets(self, count: int) -> bool:
        now = time.monotonic()
        self._resets.extend([now] * count)
        while self._resets and self._resets[0] < now - RESET_WINDOW_SECONDS:
            self._resets.popleft()
        return len(self._resets) > MAX_RESETS

    async def _go_away(self, code: h2.errors.ErrorCodes, why: str) -> None:
        if self._calmed:
            return
        self._calmed = True
        log.warning(
            "closing an HTTP/2 connection from %s: %s (GOAWAY %s)", self.client, why, code.name
        )
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.close_connection(code)
        await self._flush()
        await self.send(Closed())

    # -- sending ---------------------------------------------------------------------------------

    async def stream_send(self, event: Event) -> None:
        await super().stream_send(event)
        if isinstance(event, StreamClosed) and not self.closed:
            # The app is done with this stream; if the client still sends, stop it now rather
            # than at its next DATA frame (which may be gigabytes away, or never come).
            self._stop_request_body(event.stream_id)
            await self._flush()

    async def _send_data(self, stream_id: int) -> None:
        """Hypercorn's, tolerating a stream that was reset or closed while we waited."""
        buffer = self.stream_buffers.get(stream_id)
        if buffer is None:
            self._forget_priority(stream_id)
            return
        try:
            chunk_size = min(
                self.connection.local_flow_control_window(stream_id),
                self.connection.max_outbound_frame_size,
            )
            data = await buffer.pop(max(0, chunk_size))
            if data:
                self.connection.send_data(stream_id, data)
                await self._flush()
            else:
                self.priority.block(stream_id)
            if buffer.complete:
                self.connection.end_stream(stream_id)
                await self._flush()
                await self._forget_buffer(stream_id)
        except (
            h2.exceptions.StreamClosedError,
            h2.exceptions.ProtocolError,
            KeyError,
            MissingStreamError,
        ):
            await self._forget_buffer(stream_id)

    async def _forget_buffer(self, stream_id: int) -> None:
        buffer = self.stream_buffers.pop(stream_id, None)
        if buffer is not None:
            await buffer.close()  # wakes a producer waiting on flow control
        self._forget_priority(stream_id)

    def _forget_priority(self, stream_id: int) -> None:
        with contextlib.suppress(MissingStreamError):
            self.priority.remove_stream(stream_id)


class _TaskGroup(TaskGroup):
    """Hypercorn's, except that events for an app that has returned are dropped, not queued
    where nothing would ever take them (which blocked the connection's reader for good)."""

    async def spawn_app(
        self,
        app: Any,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        queue: asyncio.Queue[Any] = asyncio.Queue(config.max_app_queue_size)
        returned = asyncio.Event()

        async def sending(message: Any) -> None:
            if message is None:  # Hypercorn's signal that the app has returned
                returned.set()
            await send(message)

        def call_soon(func: Callable[..., Any], *args: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(func(*args), self._loop)
            return future.result()

        self.spawn(
            _handle,
            app,
            config,
            scope,
            queue.get,
            sending,
            partial(self._loop.run_in_executor, None),
            call_soon,
        )

        async def put(message: Any) -> None:
            if returned.is_set():
                return
            if not queue.full():
                queue.put_nowait(message)
                return
            putting = asyncio.ensure_future(queue.put(message))
            ending = asyncio.ensure_future(returned.wait())
            try:
                await asyncio.wait({putting, ending}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                putting.cancel()
                ending.cancel()

        return put


class _TCPServer(TCPServer):
    """Closes a connection as soon as the peer has closed it (see the module docstring)."""

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

    async def _initiate_server_close(self) -> None:
        # An idle connection closed at shutdown: HTTP/2 clients are told why first.
        protocol = getattr(self.protocol, "protocol", None)
        if isinstance(protocol, _H2Protocol):
            await protocol.announce_shutdown()
        await super()._initiate_server_close()


def install() -> None:
    """Makes Hypercorn build its connections with the fixes above (idempotent)."""
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.h2.StreamBuffer = _StreamBuffer  # type: ignore[misc]
    hypercorn.asyncio.tcp_server.TaskGroup = _TaskGroup  # type: ignore[attr-defined]
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
