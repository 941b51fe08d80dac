"""The Connect protocol for the registry's wrapped handlers: unary POST and GET, and streaming.

Connect (connectrpc.com/docs/protocol) is what connect-web's `createConnectTransport` speaks:
- unary calls are plain HTTP: `POST /pkg.Service/Method` with `application/proto` or
  `application/json`, the message as the whole body, `content-encoding` for its compression,
  metadata as headers, trailing metadata as `trailer-` headers, and an error as a JSON body with
  an HTTP status from Connect's table. Side-effect-free methods (`idempotency_level =
  NO_SIDE_EFFECTS`) also take `GET ?connect=v1&encoding=json&message=…` (cacheable URLs).
- streaming calls use `application/connect+proto|json`: 5-byte envelopes (flag 0x01 compressed,
  0x02 end of stream), `connect-content-encoding`, and an end-of-stream JSON message carrying the
  error and the trailing metadata. Errors go there, always under HTTP 200.

Calls run with the gateway's own `GatewayContext` (protocol "connect") through the registry's
wrapped handlers, so the interceptor chain is the same as for every other protocol, and error
details are the very `google.rpc.Status` a native client finds in grpc-status-details-bin.

Choices worth knowing:
- `connect-protocol-version` (and GET's `connect=v1`) is validated when present and not required
  unless `require_protocol_version`: connect-go's default, and what lets `curl` users in.
- JSON is the REST gateway's proto3 JSON (gateway.rest.codec/printer): proto field names out,
  both spellings in, unknown fields refused with a BadRequest naming them. An empty JSON body is
  the empty message, as an empty proto body is.
- Responses are compressed (gzip) only when the client accepts it and the message is at least
  `compress_min_bytes`: small answers are not worth the event loop's time.
- Request messages are bounded by `max_message_bytes`, before and after decompression.
- Bidirectional streams need HTTP/2 (505 on HTTP/1.x, as connect-go answers); client streams
  work on both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf import descriptor_pb2, symbol_database
from google.protobuf.message import Message
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc import aio

from gateway import wire
from gateway.asgi import Headers, Receive, Scope, Send
from gateway.context import (
    GatewayContext,
    MetadataItems,
    serve_until_disconnect,
    wait_for_disconnect,
)
from gateway.registry import CallKind, Method, MethodRegistry
from gateway.rest import codec as json_codec
from gateway.rest.printer import to_jsonable
from gateway.rest.status import RestError, status_from_call

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ConnectApp", "http_status_for"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_COMPRESS_MIN_BYTES = 1024
PROTOCOL_VERSION = "1"
ACCEPTED_ENCODINGS = "gzip"  # identity goes without saying

_COMPRESSED = 0x01
_END_STREAM = 0x02
_ABORTED = (aio.AbortError, grpc.RpcError)
_NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
_DETAILS_KEY = wire.STATUS_DETAILS_KEY
_TYPE_URL_PREFIX = "type.googleapis.com/"
# How long a refused request's unread body may take to arrive before the answer goes out anyway
# (see gateway.grpc_native: answering while the client still sends can cost the connection).
_REFUSAL_GRACE_SECONDS = 2.0

# Connect's code → HTTP status table (the protocol spec's; it matches gRPC-over-REST's today, but
# it is Connect's to change, so it is written out here rather than borrowed).
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# Request headers that are transport or Connect's own, never call metadata.
_NOT_METADATA = frozenset(
    {
        b"host",
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"accept",
        b"accept-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
_NOT_METADATA_NAMES = frozenset(name.decode("ascii") for name in _NOT_METADATA)


def http_status_for(code: grpc.StatusCode) -> int:
    """Connect's HTTP status for an error code; 500 for anything outside the table."""
    return _HTTP_STATUS.get(code, 500)


def code_name(code: grpc.StatusCode) -> str:
    """Connect's name of a code: gRPC's in lower case, with Connect's spelling of "canceled"."""
    return "canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()


class ConnectError(Exception):
    """A call the adapter answers itself, as a google.rpc.Status (details included)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status_pb2.Status(code=code.value[0], message=message)

    @classmethod
    def of(cls, status: status_pb2.Status) -> ConnectError:
        error = cls(grpc.StatusCode.UNKNOWN, status.message)
        error.status = status
        return error


# -- codecs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Codec:
    name: str  # as in the content types and GET's encoding=

    def decode(self, payload: bytes, method: Method) -> Message:
        message = method.request_class()
        if self.name == "proto":
            try:
                message.ParseFromString(payload)
            except Exception:
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"could not parse the request as {method.request_class.DESCRIPTOR.full_name}",
                ) from None
            return message
        if not payload.strip():
            return message
        try:
            json_codec.parse_into(json_codec.load_json(payload), message, None, True)
        except RestError as error:
            raise ConnectError.of(error.status) from None
        return message

    def encode(self, message: Message) -> bytes:
        if self.name == "proto":
            return message.SerializeToString()
        return json_codec.dumps(to_jsonable(message))


_CODECS = {"proto": _Codec("proto"), "json": _Codec("json")}
_UNARY_TYPES = {b"application/proto": "proto", b"application/json": "json"}
_STREAM_TYPES = {b"application/connect+proto": "proto", b"application/connect+json": "json"}
_ACCEPT_UNARY = b"application/json, application/proto"
_ACCEPT_STREAM = b"application/connect+json, application/connect+proto"


def _codec_for(content_type: bytes, streaming: bool) -> _Codec | None:
    media, _, parameters = content_type.partition(b";")
    name = (_STREAM_TYPES if streaming else _UNARY_TYPES).get(media.strip().lower())
    if name is None:
        return None
    parameter = parameters.strip().lower().replace(b" ", b"")
    if parameter and parameter not in (b"charset=utf-8", b'charset="utf-8"'):
        return None  # JSON is UTF-8; a message in any other charset is not ours to read
    return _CODECS[name]


# -- compression -----------------------------------------------------------------------------


def _request_compression(sent: str | None) -> str:
    name = (sent or "identity").strip().lower() or "identity"
    if name not in ("identity", "gzip"):
        raise ConnectError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"unknown compression {name!r}: supported encodings are {ACCEPTED_ENCODINGS}",
        )
    return name


def _response_compression(request: str, accepted: str | None) -> str:
    """As connect-go: the request's compression, else gzip when the client accepts it."""
    if request != "identity":
        return request
    wanted = (accepted or "").replace(",", " ").lower().split()
    return "gzip" if any(entry.split(";", 1)[0] == "gzip" for entry in wanted) else "identity"


def _gunzip(payload: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(payload, limit + 1)
    except zlib.error:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, "could not decompress the request message"
        ) from None
    if len(data) > limit:
        raise ConnectError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"decompressed message larger than max ({limit} bytes)",
        )
    if not inflater.eof:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "truncated compressed request message")
    return data


async def _inflate(payload: bytes, limit: int) -> bytes:
    if len(payload) > 1024:  # larger ones (up to ~1000x expansion) off the event loop
        return await asyncio.to_thread(_gunzip, payload, limit)
    return _gunzip(payload, limit)


def _gzip_now(payload: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return compressor.compress(payload) + compressor.flush()


# Compressing takes about 10 ms a MiB: past this size a response is compressed off the loop.
_GZIP_ON_LOOP_BYTES = 16 * 1024


async def _gzip(payload: bytes) -> bytes:
    if len(payload) > _GZIP_ON_LOOP_BYTES:
        return await asyncio.to_thread(_gzip_now, payload)
    return _gzip_now(payload)


# -- headers ---------------------------------------------------------------------------------


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name, value)
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _metadata(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name in _NOT_METADATA or name.startswith((b":", b"connect-", b"grpc-")):
            continue
        key = name.decode("latin-1")
        if name.endswith(b"-bin"):
            try:
                metadata.extend((key, wire.decode_binary_value(part)) for part in value.split(b","))
            except ValueError:
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{key} is not valid base64"
                ) from None
        else:
            metadata.append((key, value.decode("latin-1")))
    return metadata


def _timeout(value: bytes | None) -> float | None:
    """connect-timeout-ms: at most 10 digits of milliseconds, as the spec and connect-go say."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"connect-timeout-ms must be 1 to 10 digits of milliseconds, not {text!r}",
        )
    return int(text) / 1000


def _check_version(value: str | None, required: bool, *, name: str, wanted: str) -> None:
    if value is None or value == "":
        if required:
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT, f"missing required {name}: set it to {wanted!r}"
            )
        return
    if value != wanted:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be {wanted!r}: got {value!r}"
        )


def _encode_metadata(items: MetadataItems, prefix: bytes = b"") -> Headers:
    # The status details travel in the error body, never as a header.
    kept = [(key, value) for key, value in items if key.lower() != _DETAILS_KEY]
    encoded = wire.encode_metadata(
        kept, reserved=_NOT_METADATA_NAMES, allow_status_details=False, pad_binary=False
    )
    return [(prefix + name, value) for name, value in encoded] if prefix else encoded


def _metadata_object(items: MetadataItems) -> dict[str, list[str]]:
    """Trailing metadata as the end-of-stream message's `metadata`."""
    document: dict[str, list[str]] = {}
    for name, value in _encode_metadata(items):
        document.setdefault(name.decode("ascii"), []).append(value.decode("ascii"))
    return document


# -- errors ----------------------------------------------------------------------------------


def error_document(status: status_pb2.Status) -> dict[str, Any]:
    """A google.rpc.Status as Connect's error JSON: the code by name, details as
    {type, value (base64, unpadded), debug (the detail as JSON, when its type is known)}."""
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN  # an error without a code is still an error
    document: dict[str, Any] = {"code": code_name(code)}
    if status.message:
        document["message"] = status.message
    details = []
    for detail in status.details:
        type_name = detail.type_url.rsplit("/", 1)[-1]
        entry: dict[str, Any] = {
            "type": type_name,
            "value": base64.b64encode(detail.value).decode("ascii").rstrip("="),
        }
        debug = _debug(type_name, detail.value)
        if debug is not None:
            entry["debug"] = debug
        details.append(entry)
    if details:
        document["details"] = details
    return document


def _debug(type_name: str, value: bytes) -> Any:
    try:
        message = symbol_database.Default().GetSymbol(type_name)()
        message.ParseFromString(value)
        return to_jsonable(message)
    except Exception:
        return None  # a type this process does not know: the client still has `value`


def _error_body(status: status_pb2.Status) -> bytes:
    try:
        return json_codec.dumps(error_document(status))
    except Exception:
        log.exception("failed to write a Connect error body")
        return b'{"code":"internal","message":"failed to write the error"}'


def _status_of(context: GatewayContext) -> status_pb2.Status | None:
    """The call's error status (details included) or None when it succeeded."""
    code = context.code()
    if code is None or code is grpc.StatusCode.OK:
        return None
    return status_from_call(code, context.details(), context.trailing_metadata)


def _code_of(status: status_pb2.Status) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)


# -- the application -------------------------------------------------------------------------


class ConnectApp:
    """The ASGI app for Connect requests on `/pkg.Service/Method`; serves every registry method."""

    def __init__(
        self,
        registry: MethodRegistry,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        require_protocol_version: bool = False,
        compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
    ) -> None:
        self._registry = registry
        self._max = max_message_bytes
        self._require_version = require_protocol_version
        self._compress_min = compress_min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise TypeError(f"Connect serves http scopes, not {scope['type']!r}")
        headers = _header_map(scope["headers"])
        http_method = scope["method"]
        method = self._registry.lookup(scope["path"])
        if method is None:
            # The spec: an unknown procedure is 404, with Connect's unimplemented as the error.
            error = ConnectError(
                grpc.StatusCode.UNIMPLEMENTED, f"unknown procedure {scope['path']}"
            )
            await _refuse(receive, _UnaryResponse(send).error, error.status, None, 404)
            return
        streaming = method.kind is not CallKind.UNARY_UNARY
        allowed = b"GET, POST" if _side_effect_free(method) else b"POST"
        if http_method not in ("POST", "GET") or (http_method == "GET" and allowed == b"POST"):
            await _refuse(receive, _plain, send, 405, [(b"allow", allowed)])
            return
        if http_method == "GET":
            await self._get(scope, headers, method, receive, send)
            return
        codec = _codec_for(headers.get(b"content-type", b""), streaming)
        if codec is None:
            accept = _ACCEPT_STREAM if streaming else _ACCEPT_UNARY
            await _refuse(receive, _plain, send, 415, [(b"accept-post", accept)])
            return
        if streaming:
            await self._stream(scope, headers, method, codec, receive, send)
        else:
            await self._unary(scope, headers, method, codec, receive, send)

    # -- unary ---------------------------------------------------------------------------------

    async def _unary(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        method: Method,
        codec: _Codec,
        receive: Receive,
        send: Send,
    ) -> None:
        response = _UnaryResponse(send, codec)
        try:
            version = _text(headers.get(b"connect-protocol-version"))
            _check_version(
                version,
                self._require_version,
                name="header connect-protocol-version",
                wanted=PROTOCOL_VERSION,
            )
            compression = _request_compression(_text(headers.get(b"content-encoding")))
            response.compression = _response_compression(
                compression, _text(headers.get(b"accept-encoding"))
            )
            context = self._context(scope, method, headers, None)
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self._max:
                raise self._too_large(int(declared))
        except ConnectError as error:
            await _refuse(receive, response.error, error.status)
            return
        try:
            body = await self._read_body(receive)
        except ConnectError as error:
            await _refuse(receive, response.error, error.status)
            return
        if body is None:
            return  # the client left
        try:
            if compression == "gzip":
                body = await _inflate(body, self._max)
            request = codec.decode(body, method)
        except ConnectError as error:
            await response.error(error.status)
            return
        await self._call_unary(method, request, context, response, receive)

    async def _get(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        method: Method,
        receive: Receive,
        send: Send,
    ) -> None:
        declared = headers.get(b"content-length", b"")
        if (declared and declared != b"0") or b"transfer-encoding" in headers:
            # A GET carries its message in the query; a body means a confused client.
            await _refuse(receive, _plain, send, 415, [])
            return
        query = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )
        response = _UnaryResponse(send)
        try:
            _check_version(
                query.get("connect"),
                self._require_version,
                name="query parameter connect",
                wanted="v" + PROTOCOL_VERSION,
            )
            compression = _request_compression(query.get("compression"))
            response.compression = _response_compression(
                compression, _text(headers.get(b"accept-encoding"))
            )
            if "encoding" not in query:
                raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "missing encoding parameter")
            codec = _CODECS.get(query["encoding"])
            if codec is None:
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"invalid message encoding: {query['encoding']!r} (json or proto)",
                )
            response.codec = codec
            if "message" not in query:
                raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "missing message parameter")
            body = query["message"].encode("latin-1")
            if query.get("base64") == "1":
                body = _base64url(body)
            if len(body) > self._max:
                raise self._too_large(len(body))
            context = self._context(scope, method, headers, None)
            if compression == "gzip":
                body = await _inflate(body, self._max)
            request = codec.decode(body, method)
        except ConnectError as error:
            await response.error(error.status)
            return
        await self._call_unary(method, request, context, response, receive)

    async def _call_unary(
        self,
        method: Method,
        request: Message,
        context: GatewayContext,
        response: _UnaryResponse,
        receive: Receive,
    ) -> None:
        async def call() -> None:
            answer: Any = None
            try:
                answer = await method.behavior(request, context)
            except _ABORTED:
                pass  # the status is on the context
            except Exception:
                log.exception("Connect call %s failed outside the interceptor chain", method.path)
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details("internal error")
            status = _status_of(context)
            if status is None and answer is None:
                status = status_pb2.Status(
                    code=grpc.StatusCode.INTERNAL.value[0], message="the method returned no answer"
                )
            if status is not None:
                await response.error(status, context)
                return
            try:
                payload = response.encode(answer)
            except Exception:
                log.exception("could not write the response of %s", method.path)
                internal = status_pb2.Status(
                    code=grpc.StatusCode.INTERNAL.value[0], message="could not write the response"
                )
                await response.error(internal, context)
                return
            await response.success(payload, context, self._compress_min)

        await serve_until_disconnect(call(), context, receive)

    # -- streaming -----------------------------------------------------------------------------

    async def _stream(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        method: Method,
        codec: _Codec,
        receive: Receive,
        send: Send,
    ) -> None:
        response = _StreamResponse(send, codec, self._compress_min)
        kind = method.kind
        try:
            _check_version(
                _text(headers.get(b"connect-protocol-version")),
                False,  # connect-go requires it of unary calls only
                name="header connect-protocol-version",
                wanted=PROTOCOL_VERSION,
            )
            compression = _request_compression(_text(headers.get(b"connect-content-encoding")))
            response.compression = _response_compression(
                compression, _text(headers.get(b"connect-accept-encoding"))
            )
            if kind is CallKind.STREAM_STREAM and scope.get("http_version", "1.1").startswith("1"):
                await _refuse(receive, _plain, send, 505, [(b"connection", b"close")])
                return
            context = self._context(scope, method, headers, response.start)
        except ConnectError as error:
            await _refuse(receive, response.finish, error.status)
            return
        requests = _Envelopes(codec, method, compression, self._max)
        if not kind.request_streaming:
            try:
                messages = await requests.read_all(receive)
                if messages is None:
                    return  # the client left
                if len(messages) != 1:
                    # UNIMPLEMENTED, as connect-go answers and the conformance suite expects.
                    raise ConnectError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"a server stream takes 1 request message, not {len(messages)}",
                    )
            except ConnectError as error:
                await _refuse(receive, response.finish, error.status)
                return
            await serve_until_disconnect(
                self._run_stream(method, messages[0], context, response), context, receive
            )
            return
        await self._client_stream(method, requests, context, response, receive)

    async def _client_stream(
        self,
        method: Method,
        requests: _Envelopes,
        context: GatewayContext,
        response: _StreamResponse,
        receive: Receive,
    ) -> None:
        queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=8)
        gone = asyncio.Event()
        failure: list[status_pb2.Status] = []

        async def messages() -> AsyncIterator[Message]:
            while (item := await queue.get()) is not None:
                yield item

        work = asyncio.create_task(self._run_stream(method, messages(), context, response))

        async def read() -> None:
            try:
                async for message in requests.each(receive, gone):
                    await queue.put(message)
                if gone.is_set():
                    return
                await queue.put(None)
                # Keeps reading after the request ended, so that a disconnect is noticed.
                await wait_for_disconnect(receive)
                gone.set()
            except ConnectError as error:
                # A bad request message ends the call with its error, whatever the servicer does.
                failure.append(error.status)
                work.cancel()

        reader = asyncio.create_task(read())
        waiting = asyncio.create_task(gone.wait())
        try:
            await asyncio.wait((work, waiting), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                context.cancel_by_peer()
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            if failure and not gone.is_set():
                await response.finish(failure[0])
        finally:
            for task in (reader, work, waiting):
                task.cancel()
            await asyncio.gather(reader, waiting, return_exceptions=True)
            context.finish()

    async def _run_stream(
        self, method: Method, request: Any, context: GatewayContext, response: _StreamResponse
    ) -> None:
        kind = method.kind
        try:
            if kind.response_streaming:
                async with contextlib.aclosing(method.behavior(request, context)) as answers:
                    async for answer in answers:
                        await response.message(answer)
            else:
                answer = await method.behavior(request, context)
                if _status_of(context) is None and answer is not None:
                    await response.message(answer)
        except _ABORTED:
            pass
        except Exception:
            log.exception("Connect stream %s failed outside the interceptor chain", method.path)
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details("internal error")
        await response.finish(_status_of(context), context.trailing_metadata)

    # -- shared --------------------------------------------------------------------------------

    def _context(
        self,
        scope: Scope,
        method: Method,
        headers: dict[bytes, bytes],
        on_initial_metadata: Callable[[MetadataItems], Awaitable[None]] | None,
    ) -> GatewayContext:
        return GatewayContext(
            method.path,
            _metadata(scope["headers"]),
            timeout=_timeout(headers.get(b"connect-timeout-ms")),
            peer=wire.peer(scope.get("client")),
            on_initial_metadata=on_initial_metadata,
            protocol="connect",
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        body = bytearray()
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            body += event.get("body", b"")
            if len(body) > self._max:
                raise self._too_large(len(body))
            if not event.get("more_body", False):
                return bytes(body)

    def _too_large(self, size: int) -> ConnectError:
        return ConnectError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, wire.larger_than_max(size, self._max)
        )


def _side_effect_free(method: Method) -> bool:
    return (
        method.kind is CallKind.UNARY_UNARY
        and method.descriptor.GetOptions().idempotency_level == _NO_SIDE_EFFECTS
    )


def _base64url(value: bytes) -> bytes:
    stripped = value.strip().rstrip(b"=")
    try:
        return base64.b64decode(
            stripped + b"=" * (-len(stripped) % 4), altchars=b"-_", validate=True
        )
    except binascii.Error:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, "message is not valid base64url"
        ) from None


# -- running a call --------------------------------------------------------------------------


async def _refuse(receive: Receive, answer: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Answers a request we will not serve once its body is in (discarded), or after a grace
    period: answering mid-upload can make Hypercorn drop the whole HTTP/2 connection."""
    ended = asyncio.Event()

    async def discard() -> None:
        while True:
            event = await receive()
            if event["type"] == "http.disconnect" or not event.get("more_body", False):
                ended.set()
            if event["type"] == "http.disconnect":
                return

    drain = asyncio.create_task(discard())
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REFUSAL_GRACE_SECONDS):
                await ended.wait()
        await answer(*args)
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)


async def _plain(send: Send, status: int, headers: Headers) -> None:
    headers = [*headers, (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


# -- responses -------------------------------------------------------------------------------


class _UnaryResponse:
    """One unary answer: the message, or the error as JSON, with metadata in headers."""

    def __init__(self, send: Send, codec: _Codec | None = None) -> None:
        self._send = send
        self.codec = codec or _CODECS["json"]
        self.compression = "identity"

    def encode(self, answer: Message) -> bytes:
        return self.codec.encode(answer)

    async def success(self, payload: bytes, context: GatewayContext, compress_min: int) -> None:
        headers = [
            (b"content-type", b"application/" + self.codec.name.encode()),
            (b"accept-encoding", ACCEPTED_ENCODINGS.encode()),
        ]
        if self.compression == "gzip" and len(payload) >= compress_min:
            payload = await _gzip(payload)
            headers.append((b"content-encoding", b"gzip"))
        headers += _call_headers(context)
        await self._respond(200, headers, payload)

    async def error(
        self, status: status_pb2.Status, context: GatewayContext | None = None, http: int = 0
    ) -> None:
        headers: Headers = [
            (b"content-type", b"application/json"),
            (b"accept-encoding", ACCEPTED_ENCODINGS.encode()),
        ]
        if context is not None:
            headers += _call_headers(context)
        if status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]:
            headers.append((b"www-authenticate", b"Bearer"))
        await self._respond(http or http_status_for(_code_of(status)), headers, _error_body(status))

    async def _respond(self, status: int, headers: Headers, body: bytes) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def _call_headers(context: GatewayContext) -> Headers:
    return _encode_metadata(context.initial_metadata or ()) + _encode_metadata(
        context.trailing_metadata, b"trailer-"
    )


class _StreamResponse:
    """A streaming answer: headers once, enveloped messages, then the end-of-stream message."""

    def __init__(self, send: Send, codec: _Codec, compress_min: int) -> None:
        self._send = send
        self._codec = codec
        self._compress_min = compress_min
        self.compression = "identity"
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self, initial_metadata: MetadataItems = ()) -> None:
        async with self._lock:
            await self._start(initial_metadata)

    async def _start(self, initial_metadata: MetadataItems) -> None:
        if self._started:
            return
        self._started = True
        headers = [
            (b"content-type", b"application/connect+" + self._codec.name.encode()),
            (b"connect-accept-encoding", ACCEPTED_ENCODINGS.encode()),
        ]
        if self.compression != "identity":
            headers.append((b"connect-content-encoding", self.compression.encode()))
        headers += _encode_metadata(initial_metadata)
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def message(self, answer: Message) -> None:
        payload = self._codec.encode(answer)
        flags = 0
        if self.compression == "gzip" and len(payload) >= self._compress_min:
            payload, flags = await _gzip(payload), _COMPRESSED
        async with self._lock:
            await self._start(())
            await self._send(
                {
                    "type": "http.response.body",
                    "body": wire.frame(payload, flags),
                    "more_body": True,
                }
            )

    async def finish(self, status: status_pb2.Status | None, trailing: MetadataItems = ()) -> None:
        try:
            document: dict[str, Any] = {}
            if status is not None:
                document["error"] = error_document(status)
            metadata = _metadata_object(trailing)
            if metadata:
                document["metadata"] = metadata
            end = json.dumps(document, separators=(",", ":")).encode()
        except Exception:
            log.exception("failed to write a Connect end-of-stream message")
            end = b'{"error":{"code":"internal","message":"failed to write the status"}}'
        async with self._lock:
            await self._start(())
            await self._send(
                {
                    "type": "http.response.body",
                    "body": wire.frame(end, _END_STREAM),
                    "more_body": False,
                }
            )


# -- streaming requests ----------------------------------------------------------------------


class _Envelopes:
    """The request's enveloped messages, decoded, each bounded by the message limit."""

    def __init__(self, codec: _Codec, method: Method, compression: str, limit: int) -> None:
        self._codec = codec
        self._method = method
        self._compression = compression
        self._max = limit
        self._buffer = bytearray()

    async def read_all(self, receive: Receive) -> list[Message] | None:
        """Every message of the body (None if the client left first)."""
        messages = []
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            ended = not event.get("more_body", False)
            messages += [await self._decode(*item) for item in self._feed(event.get("body", b""))]
            if ended:
                self._finish()
                return messages

    async def each(self, receive: Receive, gone: asyncio.Event) -> AsyncIterator[Message]:
        """Messages as they arrive, until the request ends; sets `gone` if the client leaves."""
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                gone.set()
                return
            ended = not event.get("more_body", False)
            for item in self._feed(event.get("body", b"")):
                yield await self._decode(*item)
            if ended:
                self._finish()
                return

    def _feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        found = []
        while len(self._buffer) >= wire.FRAME_HEADER_BYTES:
            flags, length = wire.frame_header(self._buffer)
            if flags & ~_COMPRESSED:
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"invalid request envelope flags {flags:#x}"
                )
            if length > self._max:
                raise ConnectError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, wire.larger_than_max(length, self._max)
                )
            end = wire.FRAME_HEADER_BYTES + length
            if len(self._buffer) < end:
                break
            found.append((flags, bytes(self._buffer[wire.FRAME_HEADER_BYTES : end])))
            del self._buffer[:end]
        return found

    def _finish(self) -> None:
        if self._buffer:
            raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "request ended inside a message")

    async def _decode(self, flags: int, payload: bytes) -> Message:
        if flags & _COMPRESSED:
            if self._compression == "identity":
                raise ConnectError(
                    grpc.StatusCode.INTERNAL,
                    "compressed message without a connect-content-encoding",
                )
            payload = await _inflate(payload, self._max)
        return self._codec.decode(payload, self._method)
