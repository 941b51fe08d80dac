"""The REST transcoder as an ASGI app: route, read, build the request, call in process, answer.

The servicer runs in the request's own task, through the registry's wrapped handler (so the
interceptor chain is the same as for gRPC). A small watcher task waits for `http.disconnect`;
when the client leaves, the context is marked cancelled by the peer and the call is cancelled,
so the servicer sees CancelledError as it would under grpc.aio.

Once a request has matched a binding, every response to it carries the method's fixed
`response_headers`, and every error response before the body starts goes through the method's
error writer when it has one (options.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc import aio

from gateway.asgi import Headers, Receive, Scope, Send
from gateway.context import GatewayContext
from gateway.observability.exchange import refused_before_call
from gateway.registry import MethodRegistry
from gateway.rest import codec
from gateway.rest.bindings import Binding, read_bindings
from gateway.rest.encoding import body_decoder, too_large
from gateway.rest.form import FORM, media_type, read_form
from gateway.rest.headers import (
    METADATA_PREFIX,
    TRAILER_PREFIX,
    RequestHeaders,
    metadata_headers,
    read_headers,
)
from gateway.rest.options import NO_OPTIONS, RestMethodOptions, write_error
from gateway.rest.printer import to_jsonable
from gateway.rest.query import parse_pairs
from gateway.rest.request import PRETTY
from gateway.rest.routes import Route, RouteTable
from gateway.rest.status import (
    RestError,
    bad_request,
    http_status_for_number,
    status_body,
    status_from_call,
    status_headers,
)
from gateway.rest.streaming import StreamFormat, stream_format

log = logging.getLogger(__name__)

_ABORTED = (aio.AbortError, grpc.RpcError)
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
_STREAM_TYPES = frozenset({b"application/x-ndjson", b"application/jsonl", b"application/json-seq"})
_PRETTY_VALUES = frozenset({"", "true", "1"})
_NO_METHOD_OPTIONS: Mapping[str, RestMethodOptions] = MappingProxyType({})


class _Exchange(NamedTuple):
    """A routed request whose message is built, ready for the call."""

    binding: Binding
    request: Any  # the request message, or the list of them for a client stream
    headers: RequestHeaders
    pretty: bool
    head: bool


@dataclass(slots=True)
class _Watch:
    gone: bool = False


@dataclass(slots=True)
class _Progress:
    complete: bool = False  # the whole request body has been received


class _ClientGone(Exception):
    """The client disconnected before the request was read."""


class RestApp:
    """JSON REST over the registry's methods, routed by their google.api.http rules.

    `method_options` maps full method paths ("/pkg.Service/Method") to RestMethodOptions.
    """

    def __init__(
        self,
        registry: MethodRegistry,
        *,
        max_body_bytes: int = 4 * 1024 * 1024,
        lenient_enums: bool = True,
        reject_unknown_query_parameters: bool = False,
        method_options: Mapping[str, RestMethodOptions] = _NO_METHOD_OPTIONS,
    ) -> None:
        self._max_body_bytes = max_body_bytes
        self._routes: RouteTable[Binding] = RouteTable()
        for binding in read_bindings(
            registry,
            lenient_enums=lenient_enums,
            strict_query=reject_unknown_query_parameters,
            method_options=method_options,
        ):
            self._routes.add(Route(binding.http_method, binding.template, binding, binding.origin))

    def bindings(self) -> list[Binding]:
        """Every binding the routes serve, in registration order (the OpenAPI document's)."""
        return [route.target for route in self._routes]

    def allowed_methods(self, path: str) -> set[str] | None:
        """What `Allow` lists for a path: the bound methods, HEAD with GET, and OPTIONS.

        None when no route matches. Takes the raw (percent-encoded) path; a decoded one works
        as well unless it contained escaped slashes.
        """
        try:
            methods = self._routes.methods_for(path)
        except ValueError:
            return None
        if not methods:
            return None
        if "GET" in methods:
            methods.add("HEAD")
        methods.add("OPTIONS")
        return methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"RestApp serves HTTP requests, not {scope['type']!r}")
        exchange = await self._prepare(scope, receive, send)
        if exchange is not None:
            await self._call(exchange, scope, receive, send)

    # -- before the call -------------------------------------------------------------------------

    async def _prepare(self, scope: Scope, receive: Receive, send: Send) -> _Exchange | None:
        """Routes and reads the request; answers it itself (and returns None) when it must."""
        method: str = scope["method"]
        raw_path: bytes | None = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        query: bytes = scope.get("query_string", b"")
        pretty = False
        head = method == "HEAD"
        progress = _Progress()
        matched: Binding | None = None
        try:
            hit = self._routes.find(method, path)
            if hit is None and head:
                hit = self._routes.find("GET", path)
            if hit is None:
                pretty = _wants_pretty(_parse_query(query) if query else [])
                allowed = self.allowed_methods(path)
                if method == "OPTIONS" and allowed is not None:
                    await self._drain(receive, progress)
                    allow = [(b"allow", ", ".join(sorted(allowed)).encode())]
                    await send({"type": "http.response.start", "status": 204, "headers": allow})
                    await send({"type": "http.response.body", "body": b""})
                    return None
                raise _unrouted(method, path, allowed)
            binding = matched = hit.route.target
            pairs = _parse_query(query) if query else []
            pretty = binding.plan.reserves_pretty and _wants_pretty(pairs)
            headers = read_headers(scope["headers"], binding.forwarded_headers)
            body = await self._read_body(receive, headers, binding, progress)
            request = self._build(binding, hit.segments, body, headers.content_type, pairs)
        except RestError as error:
            # An unread body is consumed so that an HTTP/1 connection can carry the next request;
            # one too large to be worth reading is left, and the router then closes the
            # connection and says so.
            if not progress.complete and error.http_status != 413:
                await self._drain(receive, progress)
            refused_before_call(matched.method.path if matched else "", error.status.code)
            await _send_error(
                send, error.status, error.http_status, error.headers, pretty, head, matched
            )
            return None
        except _ClientGone:
            return None
        return _Exchange(binding, request, headers, pretty, head)

    async def _drain(self, receive: Receive, progress: _Progress) -> None:
        """Reads and drops the request body, up to the body limit (a larger one is left unread:
        the router then closes an HTTP/1 connection and says so)."""
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self._max_body_bytes:
                return
            if not message.get("more_body", False):
                progress.complete = True
                return

    async def _read_body(
        self, receive: Receive, headers: RequestHeaders, binding: Binding, progress: _Progress
    ) -> bytes:
        limit = self._max_body_bytes
        declared = headers.content_length
        if declared is not None and declared > limit:
            raise too_large(limit)  # refused before a byte of it is read
        if declared and not _accepts(headers.content_type, binding):
            raise _unsupported(headers.content_type, binding)
        decoder = body_decoder(headers.content_encoding, limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)  # stop reading: the rest is never buffered
            chunks.append(decoder.feed(chunk) if decoder is not None else chunk)
            if not message.get("more_body", False):
                break
        progress.complete = True
        if decoder is not None:
            chunks.append(decoder.finish())
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if body and not _accepts(headers.content_type, binding):
            raise _unsupported(headers.content_type, binding)
        return body

    def _build(
        self,
        binding: Binding,
        segments: list[str],
        body: bytes,
        content_type: bytes | None,
        pairs: list[tuple[str, str]],
    ) -> Any:
        plan = binding.plan
        if plan.raw:
            return plan.build_raw(segments, body, content_type, pairs)
        blank = not body or body.isspace()
        if binding.method.kind.request_streaming:
            documents = [] if blank else codec.load_json_sequence(body)
            return plan.build_stream(segments, documents, pairs)
        if plan.form is not None and media_type(content_type) == FORM:
            return plan.build_form(segments, read_form(body), pairs)
        if not plan.takes_body:
            if not blank and body.strip() != b"{}":
                raise bad_request(codec.BODY, "this method takes no request body")
            return plan.build(segments, None, pairs)
        return plan.build(segments, None if blank else codec.load_json(body), pairs)

    # -- the call ------------------------------------------------------------------------------

    async def _call(self, exchange: _Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        binding, request, headers, pretty, head = exchange
        context = GatewayContext(
            binding.method.path,
            headers.metadata,
            timeout=headers.timeout,
            peer=_peer(scope.get("client")),
            protocol="rest",
        )
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch()
        watcher = asyncio.get_running_loop().create_task(_watch(receive, task, watch, context))
        try:
            if binding.method.kind.response_streaming:
                await self._stream(binding, request, context, headers, scope, send, head)
            else:
                await self._unary(binding, request, context, send, pretty, head)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()  # the client is gone; nothing is left to answer
        finally:
            watcher.cancel()
            context.finish()

    async def _unary(
        self,
        binding: Binding,
        request: Any,
        context: GatewayContext,
        send: Send,
        pretty: bool,
        head: bool,
    ) -> None:
        behavior = binding.method.behavior
        argument = _message_stream(request) if binding.method.kind.request_streaming else request
        try:
            response = await behavior(argument, context)
        except _ABORTED:
            response = None
        except Exception:
            log.exception("%s failed outside the interceptor chain", binding.method.path)
            _internal(context, "internal error")
            response = None
        code = context.code()
        if response is None or (code is not None and code != grpc.StatusCode.OK):
            if code is None or code == grpc.StatusCode.OK:
                _internal(context, "the method returned no response")
            await _send_call_error(binding, context, send, pretty, head)
            return
        extra = _call_headers(context)
        extra.extend(binding.options.response_headers)
        status = binding.success_status
        if status == 204:
            await send({"type": "http.response.start", "status": 204, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            if binding.raw_response:
                body, content_type = _raw_payload(binding, response)
            else:
                body, content_type = codec.dumps(_payload(binding, response), pretty), _JSON
        except Exception:
            log.exception("%s: the response cannot be written", binding.method.path)
            _internal(context, "the response cannot be written")
            await _send_call_error(binding, context, send, pretty, head)
            return
        extra.append((b"content-type", content_type))
        extra.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _stream(
        self,
        binding: Binding,
        request: Any,
        context: GatewayContext,
        headers: RequestHeaders,
        scope: Scope,
        send: Send,
        head: bool,
    ) -> None:
        frames = stream_format(headers.accept)
        argument = _message_stream(request) if binding.method.kind.request_streaming else request
        responses = binding.method.behavior(argument, context)
        trailers = headers.te_trailers and "http.response.trailers" in scope.get("extensions", {})
        started = False
        failure: status_pb2.Status | None = None
        try:
            async for response in responses:
                frame = frames.message(_payload(binding, response), _event_id(binding, response))
                if not started:
                    await _start_stream(send, frames, binding, context, trailers)
                    started = True
                    if head:
                        break
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        except _ABORTED:
            failure = status_from_call(context.code(), context.details(), context.trailing_metadata)
        except Exception:
            log.exception("%s: the response stream failed", binding.method.path)
            failure = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
        finally:
            await _close(responses)
        if failure is not None and not started:
            await _send_error(
                send,
                failure,
                http_status_for_number(failure.code),
                status_headers(failure) + _call_headers(context),
                False,
                head,
                binding,
            )
            return
        if not started:
            await _start_stream(send, frames, binding, context, trailers)
        tail = frames.error(failure) if failure is not None and not head else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        if trailers:
            await send(
                {
                    "type": "http.response.trailers",
                    "headers": metadata_headers(TRAILER_PREFIX, context.trailing_metadata),
                    "more_trailers": False,
                }
            )


# -- helpers -------------------------------------------------------------------------------------


async def _watch(
    receive: Receive, task: asyncio.Task[Any], watch: _Watch, context: GatewayContext
) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            watch.gone = True
            context.cancel_by_peer()
            task.cancel()
            return


async def _message_stream(messages: list[Message]) -> AsyncIterator[Message]:
    for message in messages:
        yield message


async def _close(responses: Any) -> None:
    close = getattr(responses, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.debug("closing a response stream failed", exc_info=True)


async def _start_stream(
    send: Send, frames: StreamFormat, binding: Binding, context: GatewayContext, trailers: bool
) -> None:
    headers = [(b"content-type", frames.content_type), *frames.extra_headers]
    headers += metadata_headers(METADATA_PREFIX, context.initial_metadata)
    headers += binding.options.response_headers
    await send(
        {"type": "http.response.start", "status": 200, "headers": headers, "trailers": trailers}
    )


async def _send_call_error(
    binding: Binding, context: GatewayContext, send: Send, pretty: bool, head: bool
) -> None:
    status = status_from_call(context.code(), context.details(), context.trailing_metadata)
    extra = status_headers(status) + _call_headers(context)
    http_status = http_status_for_number(status.code)
    await _send_error(send, status, http_status, extra, pretty, head, binding)


async def _send_error(
    send: Send,
    status: status_pb2.Status,
    http_status: int,
    extra: Headers,
    pretty: bool,
    head: bool,
    binding: Binding | None = None,
) -> None:
    """The error response: the method's writer's when it has one that works, else the default.

    `binding` is None when no binding matched: such errors keep the default shape. The writer's
    headers win over the gateway's of the same name (status, call and fixed headers).
    """
    options = binding.options if binding is not None else NO_OPTIONS
    extra = [*extra, *options.response_headers]
    written = None
    if binding is not None and options.error_writer is not None:
        written = write_error(options.error_writer, status, http_status, binding.method.path)
    if written is None:
        body = status_body(status, indent=2 if pretty else None)
        content_type = _JSON
    else:
        http_status, body, content_type = written.http_status, written.body, written.content_type
        own = {name for name, _ in written.headers}
        extra = [*written.headers, *(header for header in extra if header[0] not in own)]
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": http_status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _internal(context: GatewayContext, details: str) -> None:
    context.set_code(grpc.StatusCode.INTERNAL)
    context.set_details(details)


def _call_headers(context: GatewayContext) -> Headers:
    headers = metadata_headers(METADATA_PREFIX, context.initial_metadata)
    headers += metadata_headers(TRAILER_PREFIX, context.trailing_metadata)
    return headers


def _event_id(binding: Binding, response: Message) -> str | None:
    if binding.event_id_field is None:
        return None
    return str(getattr(response, binding.event_id_field))


def _payload(binding: Binding, response: Message) -> Any:
    value = to_jsonable(response)
    if binding.response_field is not None:
        return value.get(binding.response_field)
    return value


def _raw_payload(binding: Binding, response: Message) -> tuple[bytes, bytes]:
    """An HttpBody response's data and content type (octet-stream when it names none)."""
    field = binding.response_field
    raw: Any = response if field is None else getattr(response, field)
    # Beyond Latin-1 (UnicodeEncodeError) or with a line break, it is no header value.
    content_type: bytes = raw.content_type.encode("latin-1")
    if any(c in content_type for c in b"\r\n\0"):
        raise ValueError(f"the HttpBody content type {raw.content_type!r} is not a header value")
    return raw.data, content_type or _OCTETS


def _parse_query(query: bytes) -> list[tuple[str, str]]:
    return parse_pairs(query, field="query", what="query")


def _wants_pretty(pairs: list[tuple[str, str]]) -> bool:
    return any(name == PRETTY and value.lower() in _PRETTY_VALUES for name, value in pairs)


def _accepts(content_type: bytes | None, binding: Binding) -> bool:
    if binding.plan.raw:
        return True  # an HttpBody takes any body, and its type along with it
    if content_type is None:
        return True  # a body without a declared type is taken for what the route expects
    media = media_type(content_type)
    if media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json")):
        return True
    if media == FORM:
        return binding.plan.form is not None
    return binding.method.kind.request_streaming and media in _STREAM_TYPES


def _unrouted(method: str, path: str, allowed: set[str] | None) -> RestError:
    if allowed is None:
        return RestError(grpc.StatusCode.NOT_FOUND, f"no REST route matches {path}")
    listed = ", ".join(sorted(allowed))
    return RestError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not allowed on {path}; allowed: {listed}",
        http_status=405,
        headers=[(b"allow", listed.encode())],
    )


def _unsupported(content_type: bytes | None, binding: Binding) -> RestError:
    shown = (content_type or b"").decode("latin-1")
    wanted = "application/json"
    if binding.plan.form is not None:
        wanted += f" or {FORM.decode()}"
    return RestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"unsupported content type {shown!r}; send {wanted}",
        http_status=415,
    )


def _peer(client: Any) -> str:
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
