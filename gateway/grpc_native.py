"""Native gRPC over HTTP/2 as an ASGI application: framing, metadata, status trailers, cancellation.

`NativeGrpcApp` serves requests whose content-type is application/grpc or application/grpc+proto.
It looks the `:path` up in the method registry and calls the chain-wrapped behaviour with a
`GatewayContext`, exactly as `grpc.aio.server()` would call the servicer. What it owns is the wire:
PROTOCOL-HTTP2 (length-prefixed messages, grpc-timeout, custom and binary metadata, status in
trailers) and the compression spec (gzip and identity on requests).

Choices worth knowing:
- Every response, errors before any message included, is HEADERS then a trailers HEADERS frame
  with END_STREAM. Hypercorn cannot put END_STREAM on the first HEADERS frame (an ASGI response
  always ends with a DATA frame or trailers), and grpc-go fails "grpc-status in headers, then an
  empty DATA frame" with INTERNAL, while every client accepts headers plus trailers. Only when the
  client cannot receive trailers (HTTP/1.x, or no `te: trailers`, so Hypercorn drops them) does
  the status go into the response headers.
- A malformed grpc-timeout answers INTERNAL, as grpc-go does: the header is written by the
  client's runtime, not the application, so a bad one is a protocol fault. PROTOCOL-HTTP2 names
  no code for it.
- Responses are not compressed: gzip on every message costs CPU on the event loop, and an
  uncompressed response is valid whatever the client accepts. Requests may be gzip or identity.
- Hypercorn acknowledges DATA as soon as it arrives, so HTTP/2 flow control does not hold a
  client back; received messages wait in memory until the servicer reads them. Each one is bounded
  by `max_message_bytes`, before and after decompression, and what waits is bounded per call
  (`max_buffered_bytes_per_call`) and per connection (`max_buffered_bytes_per_connection`, over
  all its streams): a client that sends faster than the servicer reads is cut off with
  RESOURCE_EXHAUSTED. The adapter keeps reading regardless, to notice a disconnect, and a
  servicer's responses wait on the client's flow control (gateway.serving), so a client that does
  not read holds the servicer, not memory.
- Hypercorn 0.18 can drop the whole connection when DATA arrives for a stream whose response
  has ended (pgjones/hypercorn#329; seen with refused oversized uploads), and ASGI cannot send the
  RST_STREAM that would stop the client. So a call we refuse (unknown method, oversized message …)
  is answered once the client has sent its END_STREAM, waiting at most `REFUSAL_GRACE_SECONDS`;
  the request is discarded meanwhile. DATA after a servicer's own answer keeps the connection
  alive (pinned by tests/server/test_listener.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from gateway import wire
from gateway.asgi import Headers, Receive, Scope, Send
from gateway.chain import ALREADY_ABORTED
from gateway.context import GatewayContext, MetadataItems
from gateway.registry import Method, MethodRegistry

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES_PER_CALL",
    "DEFAULT_MAX_BUFFERED_BYTES_PER_CONNECTION",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "NativeGrpcApp",
]

log = logging.getLogger(__name__)


SERVED_CONTENT_TYPES = frozenset({"application/grpc", "application/grpc+proto"})
ACCEPT_ENCODING = "gzip, identity"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES_PER_CALL = 8 * 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES_PER_CONNECTION = 32 * 1024 * 1024
# What a waiting message costs beyond its payload (the decoded object, the queue entry), so that
# a flood of empty messages is bounded too.
_MESSAGE_OVERHEAD_BYTES = 256

wire.FRAME_HEADER_BYTES = 5  # 1 flag byte + 4-byte big-endian length
# Headers that describe the transport, not the call: never handed to servicers as metadata.
_TRANSPORT_REQUEST_HEADERS = frozenset(
    {
        "content-type",
        "te",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)
# Response keys a servicer may not set either: HTTP/2 forbids the connection-specific ones (h2
# would refuse the whole header block), and grpc-* belongs to the runtime, except the status
# details the chain asks us to carry.
_FORBIDDEN_RESPONSE_KEYS = _TRANSPORT_REQUEST_HEADERS
# Small compressed messages inflate inline; larger ones (up to ~1000x expansion) in a thread.
_INLINE_INFLATE_BYTES = 1024
# How long a refusal waits for the client to finish sending (see the module docstring).
REFUSAL_GRACE_SECONDS = 2.0


class Status(NamedTuple):
    """The outcome of a call, as it goes into grpc-status and grpc-message."""

    code: grpc.StatusCode
    message: str = ""


class CallError(Exception):
    """A status the adapter itself answers with, before or instead of the servicer's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.status = Status(code, message)


# -- the wire: pure functions ----------------------------------------------------------------


def decode_metadata(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    """Request headers as invocation metadata: transport headers left out, `-bin` decoded."""
    metadata: list[tuple[str, str | bytes]] = []
    for raw_key, raw_value in headers:
        key = raw_key.decode("latin-1").lower()
        if key.startswith(":") or key in _TRANSPORT_REQUEST_HEADERS:
            continue
        if key.endswith("-bin"):
            # Duplicate binary headers may arrive joined with ","; each part is its own value.
            try:
                metadata.extend(
                    (key, wire.decode_binary_value(part)) for part in raw_value.split(b",")
                )
            except ValueError as exc:
                raise CallError(grpc.StatusCode.INTERNAL, "malformed binary metadata") from exc
        else:
            metadata.append((key, raw_value.decode("latin-1")))
    return metadata


def encode_metadata(items: MetadataItems, *, trailers: bool = False) -> Headers:
    """Servicer metadata as HTTP/2 headers; the status details only in trailers."""
    return wire.encode_metadata(
        items,
        reserved=_FORBIDDEN_RESPONSE_KEYS,
        allow_status_details=trailers,
        pad_binary=False,  # the spec asks senders for un-padded values
    )


class MessageDeframer:
    """Cuts a byte stream into length-prefixed messages, whatever the chunk boundaries."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._buffer = bytearray()
        self._needed: int | None = None  # length of the message in progress, once its prefix is in

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        """The (compressed?, payload) messages completed by `data`."""
        self._buffer += data
        messages: list[tuple[bool, bytes]] = []
        while True:
            if self._needed is None:
                if len(self._buffer) < wire.FRAME_HEADER_BYTES:
                    return messages
                self._needed = self._read_prefix()
            if len(self._buffer) < wire.FRAME_HEADER_BYTES + self._needed:
                return messages
            end = wire.FRAME_HEADER_BYTES + self._needed
            messages.append(
                (self._buffer[0] == 1, bytes(self._buffer[wire.FRAME_HEADER_BYTES : end]))
            )
            del self._buffer[:end]
            self._needed = None

    def _read_prefix(self) -> int:
        flag, length = wire.frame_header(self._buffer)
        if flag not in (0, wire.COMPRESSED_FLAG):
            raise CallError(grpc.StatusCode.INTERNAL, f"invalid message flag {flag}")
        # Refused on the prefix alone, so an oversized message is never buffered.
        if length > self._max:
            raise _too_large(length, self._max)
        return length

    def finish(self) -> None:
        """The request stream ended: a message cut short is a protocol error."""
        if self._buffer:
            raise CallError(grpc.StatusCode.INTERNAL, "request ended inside a message")


def _too_large(length: int, limit: int) -> CallError:
    return CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, wire.larger_than_max(length, limit))


def gunzip(payload: bytes, limit: int) -> bytes:
    """Inflates one gzip message, never producing more than `limit` bytes (zip bombs)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise CallError(grpc.StatusCode.INTERNAL, "could not decompress a request message") from exc
    if len(data) > limit:
        raise CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"decompressed message larger than max ({limit} bytes)",
        )
    if not inflater.eof:
        raise CallError(grpc.StatusCode.INTERNAL, "truncated compressed request message")
    return data


# -- the request side ------------------------------------------------------------------------


class _Ledger:
    """Request bytes received on one connection and not yet read by any servicer."""

    __slots__ = ("calls", "held")

    def __init__(self) -> None:
        self.held = 0
        self.calls = 0


class _RequestStream:
    """Request messages as they arrive: the servicer's iterator, or one message for unary calls.

    Putting never waits: blocking here would stop the reader seeing a disconnect (see the module
    doc). Instead what waits is counted against the call's and the connection's bounds.
    """

    _END = object()

    def __init__(self, ledger: _Ledger, limit: int, connection_limit: int) -> None:
        self._queue: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()
        self._ledger = ledger
        self._limit = limit
        self._connection_limit = connection_limit
        self._held = 0

    def put(self, message: Any, payload_bytes: int) -> None:
        cost = payload_bytes + _MESSAGE_OVERHEAD_BYTES
        if self._held + cost > self._limit:
            raise _flooded(f"{self._limit} bytes per call")
        if self._ledger.held + cost > self._connection_limit:
            raise _flooded(f"{self._connection_limit} bytes per connection")
        self._held += cost
        self._ledger.held += cost
        self._queue.put_nowait((message, cost))

    def end(self) -> None:
        self._queue.put_nowait((self._END, 0))

    def release(self) -> None:
        """The call is over: whatever still waits is no longer held."""
        self._ledger.held -= self._held
        self._held = 0
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _get(self) -> Any:
        message, cost = await self._queue.get()
        self._held -= cost
        self._ledger.held -= cost
        return message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self._get()) is not self._END:
            yield message

    async def single(self) -> Any:
        """The one message of a unary request, once the client has half-closed."""
        first = await self._get()
        if first is self._END:
            raise CallError(grpc.StatusCode.INTERNAL, "unary call sent no request message")
        if await self._get() is not self._END:
            raise CallError(grpc.StatusCode.INTERNAL, "unary call sent more than one message")
        return first


def _flooded(limit: str) -> CallError:
    return CallError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the client sent request messages faster than the server reads them (at most {limit} "
        "may wait)",
    )


# -- the response side -----------------------------------------------------------------------


class _Response:
    """Response headers (initial metadata), messages, then the status in trailers."""

    def __init__(self, send: Send) -> None:
        self._send = send
        # Initial metadata can come from a task of the chain's while a message is going out;
        # Hypercorn needs http.response.start fully sent before any body.
        self._lock = asyncio.Lock()
        self._started = False

    async def send_initial_metadata(self, metadata: MetadataItems) -> None:
        async with self._lock:
            if self._started:
                raise RuntimeError("initial metadata must be sent before the first message")
            await self._start(metadata)

    async def message(self, payload: bytes) -> None:
        async with self._lock:
            if not self._started:
                await self._start(())
            await self._send(
                {"type": "http.response.body", "body": wire.frame(payload), "more_body": True}
            )

    async def finish(self, status: Status, trailing_metadata: MetadataItems = ()) -> None:
        async with self._lock:
            if not self._started:
                await self._start(())
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            headers = _status_headers(status)
            headers += encode_metadata(trailing_metadata, trailers=True)
            await self._send({"type": "http.response.trailers", "headers": headers})

    async def _start(self, metadata: MetadataItems) -> None:
        self._started = True
        headers = _response_headers() + encode_metadata(metadata)
        await self._send(
            {"type": "http.response.start", "status": 200, "headers": headers, "trailers": True}
        )


def _response_headers() -> Headers:
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-accept-encoding", ACCEPT_ENCODING.encode("ascii")),
    ]


def _status_headers(status: Status) -> Headers:
    return wire.status_headers(status.code.value[0], status.message)


# -- one call --------------------------------------------------------------------------------


class _Call:
    """One RPC in flight: a reader task feeding requests, a handler task running the servicer."""

    def __init__(
        self,
        method: Method,
        context: GatewayContext,
        receive: Receive,
        response: _Response,
        *,
        encoding: str,
        max_message_bytes: int,
        requests: _RequestStream,
    ) -> None:
        self._method = method
        self._context = context
        self._receive = receive
        self._response = response
        self._encoding = encoding
        self._max = max_message_bytes
        self._requests = requests
        self._failure: Status | None = None  # why we cancelled the handler, if we did
        self._refused_request = False  # the failure is about the request, still being sent
        self._request_ended = asyncio.Event()
        self._peer_gone = False
        self._answering = False  # the final status is being sent: a disconnect now is normal
        self.finished = asyncio.Event()
        self._handler: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._handler = handler = asyncio.create_task(self._invoke())
        reader = asyncio.create_task(self._read_requests())
        try:
            await asyncio.wait([handler])
            if self._refused_request:
                await _at_most(REFUSAL_GRACE_SECONDS, self._request_ended.wait())
            status = self._outcome(handler)
            if status is not None:
                self._answering = True
                await self._response.finish(status, self._context.trailing_metadata)
        finally:
            handler.cancel()
            reader.cancel()
            await asyncio.gather(handler, reader, return_exceptions=True)
            self._requests.release()
            self._context.finish()
            self.finished.set()

    def end(self, status: Status) -> bool:
        """Ends the call with `status` unless the servicer has already finished; True if it did."""
        if self._failure is not None or self._handler is None or self._handler.done():
            return False
        self._failure = status
        self._handler.cancel()
        return True

    # -- the servicer ------------------------------------------------------------------------

    async def _invoke(self) -> None:
        kind = self._method.kind
        request = self._requests if kind.request_streaming else await self._requests.single()
        behavior = self._method.behavior
        if kind.response_streaming:
            # Closed here, not by the garbage collector, if we stop early (cancelled, failed).
            async with contextlib.aclosing(behavior(request, self._context)) as responses:
                async for response in responses:
                    await self._response.message(self._serialize(response))
            return
        response = await behavior(request, self._context)
        code = self._context.code()
        if code is not None and code != grpc.StatusCode.OK:
            return  # set_code() without abort(): the status stands, a response would not
        if response is None:
            raise CallError(grpc.StatusCode.INTERNAL, "the servicer returned no response")
        await self._response.message(self._serialize(response))

    def _serialize(self, response: Any) -> bytes:
        serializer = self._method.handler.response_serializer
        try:
            payload = serializer(response) if serializer else response.SerializeToString()
        except Exception as exc:
            log.exception("could not serialize a response of %s", self._method.path)
            raise CallError(grpc.StatusCode.INTERNAL, "could not serialize the response") from exc
        return bytes(payload)

    def _outcome(self, handler: asyncio.Task[None]) -> Status | None:
        """The status to send, from how the handler ended; None when nobody is listening."""
        if self._peer_gone:
            return None
        if self._failure is not None:
            return self._failure
        if handler.cancelled():
            return Status(grpc.StatusCode.CANCELLED, "call cancelled")
        exc = handler.exception()
        if exc is None:
            # OK, unless the servicer used set_code() without abort().
            return Status(self._context.code() or grpc.StatusCode.OK, self._context.details() or "")
        if isinstance(exc, CallError):
            return exc.status
        if isinstance(exc, ALREADY_ABORTED):
            code = self._context.code() or grpc.StatusCode.UNKNOWN
            return Status(code, self._context.details() or "")
        # The chain turns servicer errors into aborts; reaching this is a bug worth a traceback.
        log.error("unexpected error in %s", self._method.path, exc_info=exc)
        return Status(grpc.StatusCode.UNKNOWN, "unexpected server error")

    # -- the client --------------------------------------------------------------------------

    async def _read_requests(self) -> None:
        """Feeds the request stream, and keeps reading after it ends to notice a disconnect."""
        deframer = MessageDeframer(self._max)
        while (event := await self._receive())["type"] != "http.disconnect":
            ended = not event.get("more_body", False)
            if self._failure is None:  # once the call is ending, the rest is discarded
                try:
                    await self._accept(deframer, event.get("body", b""), ended)
                except CallError as error:
                    self._refused_request = self.end(error.status)
            if ended:
                self._request_ended.set()
        self._request_ended.set()
        self._on_disconnect()

    async def _accept(self, deframer: MessageDeframer, body: bytes, ended: bool) -> None:
        for compressed, payload in deframer.feed(body):
            self._requests.put(await self._decode(compressed, payload), len(payload))
        if ended:
            deframer.finish()
            self._requests.end()

    async def _decode(self, compressed: bool, payload: bytes) -> Any:
        if compressed:
            if self._encoding == "identity":
                raise CallError(
                    grpc.StatusCode.INTERNAL, "compressed message without a grpc-encoding"
                )
            if len(payload) > _INLINE_INFLATE_BYTES:
                payload = await asyncio.to_thread(gunzip, payload, self._max)
            else:
                payload = gunzip(payload, self._max)
        deserializer = self._method.handler.request_deserializer
        try:
            if deserializer is None:
                return self._method.request_class.FromString(payload)
            return deserializer(payload)
        except Exception as exc:
            raise CallError(grpc.StatusCode.INTERNAL, "could not parse the request") from exc

    def _on_disconnect(self) -> None:
        if self._answering:
            return  # Hypercorn reports the stream closed once our trailers are out
        self._peer_gone = True
        if self._handler is not None and not self._handler.done():
            # The servicer sees context.cancelled() and then asyncio.CancelledError.
            self._context.cancel_by_peer()
            self._handler.cancel()


# -- the application -------------------------------------------------------------------------


class NativeGrpcApp:
    """ASGI application for gRPC over HTTP/2 on the methods of one registry."""

    def __init__(
        self,
        registry: MethodRegistry,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_buffered_bytes_per_call: int = DEFAULT_MAX_BUFFERED_BYTES_PER_CALL,
        max_buffered_bytes_per_connection: int = DEFAULT_MAX_BUFFERED_BYTES_PER_CONNECTION,
    ) -> None:
        self._registry = registry
        self._max_message_bytes = max_message_bytes
        # A whole message must fit, or no call could receive one of the largest allowed.
        self._call_limit = max(
            max_buffered_bytes_per_call, max_message_bytes + _MESSAGE_OVERHEAD_BYTES
        )
        self._connection_limit = max(max_buffered_bytes_per_connection, self._call_limit)
        self._ledgers: dict[Any, _Ledger] = {}  # by connection: the client's (host, port)
        self._calls: set[_Call] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def active_calls(self) -> int:
        return len(self._calls)

    async def wait_idle(self) -> None:
        """Returns once no call is in flight (at once if none is)."""
        await self._idle.wait()

    async def close_streams(self, message: str = "server is shutting down") -> None:
        """Ends every call in flight with UNAVAILABLE, sent in trailers; returns when all ended.

        A client that stopped reading holds its trailers back (flow control), so a caller with a
        shutdown deadline bounds this with asyncio.timeout.
        """
        calls = list(self._calls)
        for call in calls:
            call.end(Status(grpc.StatusCode.UNAVAILABLE, message))
        await asyncio.gather(*(call.finished.wait() for call in calls))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves one HTTP request: refused here if it cannot be a call, else run as one."""
        if scope["type"] != "http":
            raise TypeError(f"NativeGrpcApp serves HTTP only, not {scope['type']!r}")
        headers = _header_map(scope)
        refusal = _refuse_http(scope, headers)
        if refusal is not None:
            await _refuse(receive, functools.partial(_respond_plain, send, *refusal))
            return
        if not _can_send_trailers(scope, headers):
            no_trailers = Status(grpc.StatusCode.INTERNAL, "gRPC needs HTTP/2 and te: trailers")
            await _refuse(receive, functools.partial(_respond_in_headers, send, no_trailers))
            return
        try:
            request = self._prepare(scope, headers)
        except CallError as error:
            await _refuse(receive, functools.partial(_Response(send).finish, error.status))
            return
        await self._serve(request, receive, send)

    def _prepare(self, scope: Scope, headers: dict[str, str]) -> _Request:
        """What the call needs from its headers, or the CallError that refuses it."""
        content_type = _content_type(headers)
        if content_type not in SERVED_CONTENT_TYPES:
            raise CallError(
                grpc.StatusCode.UNIMPLEMENTED, f"content-type {content_type} is not supported"
            )
        path = scope["path"]
        method = self._registry.lookup(path)
        if method is None:
            raise CallError(grpc.StatusCode.UNIMPLEMENTED, f"method {path} not found")
        encoding = headers.get("grpc-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            # The compression spec: UNIMPLEMENTED, with grpc-accept-encoding (in every response).
            raise CallError(
                grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding} is not supported"
            )
        timeout = None
        if "grpc-timeout" in headers:
            try:
                timeout = wire.parse_timeout(headers["grpc-timeout"])
            except ValueError as exc:
                raise CallError(grpc.StatusCode.INTERNAL, str(exc)) from exc
        client = scope.get("client")
        return _Request(
            method,
            decode_metadata(scope["headers"]),
            timeout,
            encoding,
            wire.peer(client),
            tuple(client) if client else None,
        )

    async def _serve(self, request: _Request, receive: Receive, send: Send) -> None:
        response = _Response(send)
        context = GatewayContext(
            request.method.path,
            request.metadata,
            timeout=request.timeout,
            peer=request.peer,
            on_initial_metadata=response.send_initial_metadata,
            protocol="grpc",
        )
        connection = request.connection
        ledger = self._ledgers.get(connection)
        if ledger is None:
            ledger = self._ledgers[connection] = _Ledger()
        ledger.calls += 1
        call = _Call(
            request.method,
            context,
            receive,
            response,
            encoding=request.encoding,
            max_message_bytes=self._max_message_bytes,
            requests=_RequestStream(ledger, self._call_limit, self._connection_limit),
        )
        self._calls.add(call)
        self._idle.clear()
        try:
            await call.run()
        finally:
            self._calls.discard(call)
            ledger.calls -= 1
            if not ledger.calls:
                self._ledgers.pop(connection, None)
            if not self._calls:
                self._idle.set()


@dataclass(frozen=True)
class _Request:
    method: Method
    metadata: list[tuple[str, str | bytes]]
    timeout: float | None
    encoding: str
    peer: str
    connection: tuple[Any, ...] | None  # the client's address: one per connection


# -- answers given without calling a servicer ------------------------------------------------


def _header_map(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }


def _content_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _refuse_http(scope: Scope, headers: dict[str, str]) -> tuple[int, Status] | None:
    """An HTTP status for requests that are not gRPC at all (what the router should not send)."""
    content_type = _content_type(headers)
    if not content_type.startswith("application/grpc") or content_type.startswith(
        "application/grpc-web"
    ):
        # PROTOCOL-HTTP2: 415, so that a plain HTTP client cannot mistake the answer for success.
        return 415, Status(grpc.StatusCode.INTERNAL, f"content-type {content_type} is not gRPC")
    if scope["method"] != "POST":
        return 405, Status(grpc.StatusCode.INTERNAL, f"gRPC needs POST, not {scope['method']}")
    return None


def _can_send_trailers(scope: Scope, headers: dict[str, str]) -> bool:
    # Hypercorn sends trailers only over HTTP/2 or 3, and only if the request said te: trailers.
    extensions = scope.get("extensions") or {}
    return "http.response.trailers" in extensions and headers.get("te", "").strip() == "trailers"


async def _respond_plain(send: Send, http_status: int, status: Status) -> None:
    """A short text answer for HTTP clients, with the gRPC status in headers for gRPC ones."""
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    headers += _status_headers(status)
    await send({"type": "http.response.start", "status": http_status, "headers": headers})
    await send({"type": "http.response.body", "body": status.message.encode("utf-8") + b"\n"})


async def _respond_in_headers(send: Send, status: Status) -> None:
    """The status in the response headers: the only place a client without trailers sees it."""
    headers = _response_headers() + _status_headers(status)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(receive: Receive, answer: Callable[[], Awaitable[None]]) -> None:
    """Answers a call we will not run, once its request is in (see the module docstring).

    The request is read and discarded throughout: Hypercorn queues request events per stream in
    a small bounded queue and, once the answer is out, puts http.disconnect in it; a full queue
    would then block the connection.
    """
    request_ended = asyncio.Event()
    drain = asyncio.create_task(_discard_request(receive, request_ended))
    try:
        await _at_most(REFUSAL_GRACE_SECONDS, request_ended.wait())
        await answer()
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)


async def _discard_request(receive: Receive, ended: asyncio.Event) -> None:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect" or not event.get("more_body", False):
            ended.set()
        if event["type"] == "http.disconnect":
            return


async def _at_most(seconds: float, awaitable: Awaitable[Any]) -> None:
    # asyncio.timeout, not wait_for: on 3.11, wait_for can swallow a cancellation that arrives
    # as the awaitable completes (cpython gh-86296).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await awaitable
