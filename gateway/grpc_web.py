"""gRPC-web (binary and base64 text, proto or JSON messages) for the registry's wrapped handlers.

Built on sonora's foundations. Messages are protobuf (`application/grpc-web[-text][+proto]`) or
proto3 JSON (`…+json`, connect-web's JSON format): the REST gateway's codec, so proto field names
out, both spellings in, and a malformed message is INVALID_ARGUMENT with a BadRequest detail
naming the field. Framing is the same either way.

sonora 0.2.3 supplies the handler table (`grpcASGI` acts as a `grpc.Server`); the wire (framing,
grpc-timeout, metadata, status headers) is gateway.wire, shared with the native adapter. sonora's
request/response flow is replaced, because the gaps we hit all live there:
- its error path drops trailing metadata, so `grpc-status-details-bin` never reached the client;
- the response Content-Type was copied from `Accept` (`*/*` became the Content-Type);
- only an exact `application/grpc-web-text` was decoded as text (not `…-text+proto`), and each
  body chunk was base64-decoded on its own, which breaks on padding at a flush boundary;
- a request without a Host header (HTTP/2 without :authority) raised ValueError;
- an error after the first streamed message sent a second `http.response.start`;
- its ServicerContext lacks `peer()`, `add_done_callback()`, `abort(code)` without details (health
  Check does that) and a working `abort_with_status()` (it hands a Status to `set_code`, which
  raises NotImplementedError, so the chain turned every such abort into INTERNAL).
Calls therefore run with the gateway's own `GatewayContext`, as REST and native gRPC calls do, so a
servicer sees the same context whatever protocol carried it. CORS is the router's job
(`enable_cors=False`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable
from typing import Any

import grpc
from grpc import aio
from sonora.asgi import grpcASGI

from gateway import wire
from gateway.asgi import Receive, Scope, Send
from gateway.context import GatewayContext, MetadataItems, serve_until_disconnect
from gateway.registry import MethodRegistry
from gateway.rest import codec as json_codec
from gateway.rest.printer import to_jsonable
from gateway.rest.status import RestError

log = logging.getLogger(__name__)


# A grpc.RpcMethodHandler whose callables are grpc.aio-style coroutines and async generators;
# grpc-stubs types only the synchronous flavour.
AioHandler = Any

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


_BINARY = b"application/grpc-web+proto"
_TEXT = b"application/grpc-web-text+proto"
_ACCEPTED = b", ".join(
    (_BINARY, _TEXT, b"application/grpc-web+json", b"application/grpc-web-text+json")
)

# Request headers that are HTTP transport, not call metadata: the native gRPC adapter's set, plus
# accept / accept-encoding, which on gRPC-web only negotiate the wire format. x-grpc-web,
# x-user-agent, origin … are kept: they are harmless metadata.
_NOT_METADATA = frozenset(
    {
        b"host",
        b"content-type",
        b"content-length",
        b"accept",
        b"accept-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
    }
)
# The same names as text, for wire.encode_metadata's reserved keys.
_NOT_METADATA_NAMES = frozenset(name.decode("ascii") for name in _NOT_METADATA)
_PADDED_SEGMENT_END = re.compile(rb"(?<==)(?=[^=])")


class _Refused(Exception):
    """The call is answered with this status before any handler runs."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: MetadataItems = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing = trailing


class GrpcWebApp(grpcASGI):  # type: ignore[misc]
    """The ASGI app for `application/grpc-web*` requests; serves every method in `registry`.

    `max_message_bytes` bounds the request message (after base64 decoding in text mode); a
    larger one is refused with RESOURCE_EXHAUSTED, by its Content-Length before it is read, or
    as soon as the bytes received pass the limit.
    """

    def __init__(
        self, registry: MethodRegistry, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        super().__init__(application=None, enable_cors=False)
        self.add_generic_rpc_handlers([registry.generic_handler()])
        self._registry = registry
        self._max_message_bytes = max_message_bytes
        # gRPC-web has no client streaming in browsers: a body is one framed message, so the
        # limit on the (decoded) body is the message limit plus its frame header.
        self._max_body = max_message_bytes + wire.FRAME_HEADER_BYTES
        self._max_text_body = 4 * -(-self._max_body // 3)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise TypeError(f"gRPC-web serves http scopes, not {scope['type']!r}")
        if scope["method"] != "POST":
            await _plain_response(send, 405, [(b"allow", b"POST")])
            return
        headers = _header_map(scope["headers"])
        modes = _negotiate(headers.get(b"content-type", b""), headers.get(b"accept", b""))
        if modes is None:
            await _plain_response(send, 415, [(b"accept-post", _ACCEPTED)])
            return
        text_in, text_out, json_messages = modes
        response = _Response(send, text_out, json_messages)
        try:
            handler = self._get_rpc_handler(scope["path"])
            if handler is None:
                raise _Refused(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {scope['path']}")
            self._check_declared_length(headers.get(b"content-length"), text_in)
            context = GatewayContext(
                scope["path"],
                _metadata(scope["headers"]),
                timeout=_timeout(headers.get(b"grpc-timeout")),
                peer=wire.peer(scope.get("client")),
                on_initial_metadata=response.start,
                protocol="grpc-web",
            )
            body = await self._read_body(receive, text_in)
            if body is None:
                return  # the client left before it finished sending
            if json_messages:
                requests = _from_json(self._registry, scope["path"], _messages(body))
            else:
                requests = _deserialize(handler, _messages(body))
        except _Refused as refused:
            await response.finish(refused.code, refused.message, refused.trailing)
            return
        serialize = _to_json if json_messages else handler.response_serializer
        await serve_until_disconnect(
            _run(handler, serialize, requests, context, response), context, receive
        )

    # -- the request body --------------------------------------------------------------------

    def _check_declared_length(self, content_length: bytes | None, text: bool) -> None:
        if content_length is None or not content_length.isdigit():
            return
        if int(content_length) > (self._max_text_body if text else self._max_body):
            raise self._too_large()

    async def _read_body(self, receive: Receive, text: bool) -> bytes | None:
        """The whole body, decoded (None if the client left); refused once past the limit."""
        decoder = _Base64Stream() if text else None
        prefixes = _PrefixCheck(self._max_message_bytes)
        body = bytearray()
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            chunk = event.get("body", b"")
            body += decoder.feed(chunk) if decoder else chunk
            prefixes.check(body)
            if len(body) > self._max_body:
                raise self._too_large()
            if not event.get("more_body", False):
                break
        if decoder:
            body += decoder.finish()
        return bytes(body)

    def _too_large(self) -> _Refused:
        return _Refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request message larger than {self._max_message_bytes} bytes",
        )


# -- running the call --------------------------------------------------------------------------


async def _run(
    handler: AioHandler,
    serialize: Any,
    requests: list[Any],
    context: GatewayContext,
    response: _Response,
) -> None:
    payload: bytes | None = None
    try:
        if handler.request_streaming:
            request: Any = _iterate(requests)
        elif len(requests) == 1:
            request = requests[0]
        else:
            raise _Refused(
                grpc.StatusCode.INTERNAL, f"expected 1 request message, got {len(requests)}"
            )
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            async for message in behavior(request, context):
                await response.message(serialize(message))
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            payload = serialize(await behavior(request, context))
    except _Refused as refused:
        context.set_code(refused.code)
        context.set_details(refused.message)
    except (grpc.RpcError, aio.AbortError):
        pass  # an abort: the status is on the context
    except Exception:
        log.exception("gRPC-web call %s failed outside the interceptor chain", context.method)
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details("internal error")
    code = context.code() or grpc.StatusCode.OK
    await response.finish(
        code,
        context.details() or "",
        context.trailing_metadata,
        payload if code is grpc.StatusCode.OK else None,
    )


async def _iterate(items: Iterable[Any]) -> Any:
    for item in items:
        yield item


# -- the response ------------------------------------------------------------------------------


class _Response:
    """One gRPC-web response: headers once, message frames, then the status.

    A unary answer goes out whole, as one body with a Content-Length (in text mode one base64
    string), unless the servicer sent its initial metadata early. An error before any message is
    a trailers-only response: the status, details-bin included, sits in the headers, where JS
    clients read it (given CORS exposes it) without a body.
    """

    def __init__(self, send: Send, text: bool, json_messages: bool = False) -> None:
        self._send = send
        self._text = text
        self._content_type = _TEXT if text else _BINARY
        if json_messages:
            self._content_type = self._content_type.replace(b"+proto", b"+json")
        self._started = False

    async def start(self, initial_metadata: MetadataItems = ()) -> None:
        if self._started:
            return
        self._started = True
        headers = [(b"content-type", self._content_type), *_encode_metadata(initial_metadata)]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def message(self, payload: bytes) -> None:
        await self.start()
        await self._body(wire.frame(payload), more=True)

    async def finish(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: MetadataItems,
        payload: bytes | None = None,
    ) -> None:
        status = _status_headers(code, details, trailing)
        if not self._started and payload is None:
            self._started = True
            headers = [(b"content-type", self._content_type), (b"content-length", b"0"), *status]
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._send({"type": "http.response.body", "body": b""})
            return
        body = wire.frame(
            b"".join(k + b": " + v + b"\r\n" for k, v in status), flags=wire.TRAILER_FLAG
        )
        if payload is not None:
            body = wire.frame(payload) + body
        if self._started:
            await self._body(body, more=False)
            return
        self._started = True
        encoded = base64.b64encode(body) if self._text else body
        headers = [
            (b"content-type", self._content_type),
            (b"content-length", str(len(encoded)).encode()),
        ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send({"type": "http.response.body", "body": encoded})

    async def _body(self, data: bytes, *, more: bool) -> None:
        if self._text:
            # Each flush is its own padded base64 chunk; PROTOCOL-WEB allows padding there.
            data = base64.b64encode(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})


def _status_headers(
    code: grpc.StatusCode, details: str, trailing: MetadataItems
) -> list[tuple[bytes, bytes]]:
    return wire.status_headers(code.value[0], details) + _encode_metadata(trailing)


def _encode_metadata(items: MetadataItems) -> list[tuple[bytes, bytes]]:
    return wire.encode_metadata(
        items,
        reserved=_NOT_METADATA_NAMES,
        # The details may sit in the trailer frame, or in a trailers-only answer's headers.
        allow_status_details=True,
        pad_binary=True,  # browsers decode with atob(); gRPC readers accept both forms
    )


async def _plain_response(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


# -- the request -------------------------------------------------------------------------------


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name, value)  # the first one wins, as in sonora
    return found


def _negotiate(content_type: bytes, accept: bytes) -> tuple[bool, bool, bool] | None:
    """(text request, text response, JSON messages), or None for a codec other than protobuf
    and JSON."""
    media = content_type.split(b";", 1)[0].strip().lower()
    base, _, codec = media.partition(b"+")
    if codec not in (b"", b"proto", b"json") or base not in (
        b"application/grpc-web",
        b"application/grpc-web-text",
    ):
        return None
    text_in = base == b"application/grpc-web-text"
    # The client asks for a text response with Accept; `*/*`, a missing Accept or anything that
    # names neither mode answers in the mode of the request.
    text_out = text_in
    for entry in accept.lower().split(b","):
        wanted = entry.split(b";", 1)[0].strip()
        if wanted.startswith(b"application/grpc-web-text"):
            text_out = True
            break
        if wanted.startswith(b"application/grpc-web"):
            text_out = False
            break
    return text_in, text_out, codec == b"json"


def _metadata(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name in _NOT_METADATA or name.startswith(b":"):
            continue
        key = name.decode("latin-1")
        if name.endswith(b"-bin"):
            try:
                metadata.append((key, wire.decode_binary_value(value)))
            except ValueError:
                # INTERNAL, as on native gRPC: the client's runtime wrote it, not its application.
                raise _Refused(grpc.StatusCode.INTERNAL, f"{key} is not valid base64") from None
        else:
            metadata.append((key, value.decode("latin-1")))
    return metadata


def _timeout(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return wire.parse_timeout(value.decode("latin-1"))
    except ValueError as exc:
        raise _Refused(grpc.StatusCode.INTERNAL, str(exc)) from None


def _deserialize(
    handler: AioHandler,
    messages: list[bytes],
) -> list[Any]:
    try:
        return [handler.request_deserializer(message) for message in messages]
    except Exception:
        # grpcio's own server answers an unparsable request with INTERNAL as well.
        raise _Refused(grpc.StatusCode.INTERNAL, "could not parse the request message") from None


def _from_json(registry: MethodRegistry, path: str, messages: list[bytes]) -> list[Any]:
    """JSON request messages, read as the REST gateway reads a body."""
    method = registry.lookup(path)
    if method is None:
        raise _Refused(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
    requests = []
    for payload in messages:
        request = method.request_class()
        try:
            if payload.strip():
                json_codec.parse_into(json_codec.load_json(payload), request, None, True)
        except RestError as error:
            rich = error.status
            code = grpc.StatusCode.INVALID_ARGUMENT
            trailing = ((wire.STATUS_DETAILS_KEY, rich.SerializeToString()),)
            raise _Refused(code, rich.message, trailing) from None
        requests.append(request)
    return requests


def _to_json(message: Any) -> bytes:
    return json_codec.dumps(to_jsonable(message))


def _messages(body: bytes) -> list[bytes]:
    """The message frames of a request body (a trailer frame, if any, ends it)."""
    messages = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < wire.FRAME_HEADER_BYTES:
            raise _Refused(grpc.StatusCode.INTERNAL, "truncated message frame")
        flags, length = wire.frame_header(body, offset)
        start = offset + wire.FRAME_HEADER_BYTES
        if start + length > len(body):
            raise _Refused(grpc.StatusCode.INTERNAL, "truncated message frame")
        if flags & wire.TRAILER_FLAG:
            break
        if flags & wire.COMPRESSED_FLAG:
            # No grpc-encoding is ever negotiated with us, so a compressed frame is an error.
            raise _Refused(grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
        messages.append(body[start : start + length])
        offset = start + length
    return messages


class _PrefixCheck:
    """Reads each frame's length prefix as soon as it is in: a message declared larger than the
    limit is RESOURCE_EXHAUSTED, as on native gRPC, before its bytes are waited for or kept."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._next = 0  # where the next frame header starts in the body
        self._done = False  # a trailer frame ends what is worth checking

    def check(self, body: bytearray) -> None:
        while not self._done and len(body) >= self._next + wire.FRAME_HEADER_BYTES:
            flags, length = wire.frame_header(body, self._next)
            if flags & wire.TRAILER_FLAG:
                self._done = True
                return
            if length > self._max:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, wire.larger_than_max(length, self._max)
                )
            self._next += wire.FRAME_HEADER_BYTES + length


class _Base64Stream:
    """Decodes a text-mode body chunk by chunk, wherever the client's chunks and padding fall."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + b"".join(chunk.split())
        # Decode whole quads only; a '=' may sit at the end of one quad, and is only final once
        # the next character is known, so a quad ending in '=' is complete either way.
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        return self._decode(data[:usable])

    def finish(self) -> bytes:
        if self._pending:
            raise _Refused(grpc.StatusCode.INTERNAL, "text body is not whole base64")
        return b""

    @staticmethod
    def _decode(data: bytes) -> bytes:
        if not data:
            return b""
        try:
            # Padding may end a segment in the middle of the body; decode segment by segment.
            return b"".join(
                binascii.a2b_base64(segment, strict_mode=True)
                for segment in _PADDED_SEGMENT_END.split(data)
            )
        except binascii.Error:
            raise _Refused(grpc.StatusCode.INTERNAL, "text body is not valid base64") from None
