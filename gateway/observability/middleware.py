"""`Observed`: the outermost ASGI app, which gives every HTTP request one access-log line, its
metrics and (when tracing is on) a SERVER span — refused requests included.

It wraps the router, so it sees what nothing inside does on its own: requests answered before
any RPC runs (no route, a body the transcoder refuses, 413, 415, preflights, mounted pages), the
HTTP status actually sent, and `grpc-status` in response headers (trailers-only answers) or in
trailers (native gRPC, whose HTTP status is always 200). The interceptor chain fills in the rest
through the request's `Exchange` (exchange.py): the RPC, its code, the tenant and key that
interceptors put in `Call.log_fields`. A stream is logged once, when it ends.

The line, in the text format (JSON lines carry the same fields):

    grpc POST /roz.v1.HostService/GetHost 200 NOT_FOUND 2.3ms request_id=… protocol=grpc
    rpc=/roz.v1.HostService/GetHost http_method=POST path=/roz.v1.HostService/GetHost status=200
    code=NOT_FOUND peer=ipv4:127.0.0.1:50412 duration_ms=2.31 tenant=… api_key=…

(with `trace_id=…` too when tracing is on).

No header, query string or body is logged: the path alone (as sent, percent-encoded, without
its query), so API keys, webhook signatures and device codes never reach the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import grpc

from gateway import wire
from gateway.asgi import ASGIApp, Message, Receive, Scope, Send
from gateway.observability.exchange import CURRENT_EXCHANGE, Exchange
from gateway.observability.metrics import UNKNOWN_METHOD, RequestMetrics
from gateway.observability.tracing import Tracing

access_log = logging.getLogger("gateway.access")

_CODE_NAMES = {str(code.value[0]).encode(): code.name for code in grpc.StatusCode}
# Protocols whose path is "/pkg.Service/Method" itself, so a known path names the RPC even when
# the request was refused before the chain ran.
_RPC_PATH_PROTOCOLS = frozenset({"grpc", "grpc-web", "connect"})
_MAX_PATH = 512


class Observed:
    """Wraps `app` (the router). `methods` are the registry's paths ("/pkg.Service/Method"),
    the only paths that may name an RPC in a log line or a metric label."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: RequestMetrics,
        methods: Collection[str],
        tracing: Tracing | None = None,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._methods = frozenset(methods)
        self._tracing = tracing
        self._in_flight = 0

    def requests_in_flight(self) -> int:
        return self._in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = Exchange("")
        token = CURRENT_EXCHANGE.set(exchange)
        tracing = self._tracing
        span = span_token = None
        if tracing is not None:
            span, span_token = tracing.start(scope["method"], scope["headers"])
        response = _Response()

        async def sending(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response.status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"grpc-status":
                        response.grpc_status = value
                    elif name == b"x-request-id":
                        response.request_id = value
            elif kind == "http.response.trailers":
                for name, value in message.get("headers", ()):
                    if name == b"grpc-status":
                        response.grpc_status = value
            await send(message)

        self._in_flight += 1
        try:
            await self._app(scope, receive, sending)
        except BaseException:
            if not response.status:
                response.status = 500  # what the server answers for an app that failed
            raise
        finally:
            self._in_flight -= 1
            CURRENT_EXCHANGE.reset(token)
            self._finish(scope, exchange, response, time.perf_counter() - started, span, span_token)

    def _finish(
        self,
        scope: Scope,
        exchange: Exchange,
        response: _Response,
        seconds: float,
        span: Any,
        span_token: Any,
    ) -> None:
        protocol = exchange.protocol or _protocol_of(scope)
        rpc = exchange.rpc
        path: str = scope["path"]
        if not rpc and protocol in _RPC_PATH_PROTOCOLS and path in self._methods:
            rpc = path
        code = exchange.code or _CODE_NAMES.get(response.grpc_status, "")
        status = response.status
        self._metrics.record(
            protocol,
            self._metrics.method_label(rpc) if rpc else UNKNOWN_METHOD,
            code,
            status,
            seconds,
        )
        if span is None and not access_log.isEnabledFor(logging.INFO):
            return
        logged_path = _loggable_path(scope)
        if span is not None:
            attributes: dict[str, Any] = {
                "http.request.method": scope["method"],
                "url.path": logged_path,
            }
            client = scope.get("client")
            if client:
                attributes["client.address"] = client[0]
                attributes["client.port"] = client[1]
            Tracing.end(
                span,
                span_token,
                protocol=protocol,
                rpc=rpc,
                code=code,
                status=status,
                attributes=attributes,
            )
        if not access_log.isEnabledFor(logging.INFO):
            return
        request_id = response.request_id or _header(scope, b"x-request-id")
        fields: dict[str, Any] = {
            "request_id": request_id.decode("latin-1"),
            "protocol": protocol,
        }
        if rpc:
            fields["rpc"] = rpc
        fields["http_method"] = scope["method"]
        fields["path"] = logged_path
        fields["status"] = status
        if code:
            fields["code"] = code
        fields["peer"] = wire.peer(scope.get("client"))
        fields["duration_ms"] = round(seconds * 1000, 2)
        if span is not None:
            # The line and its trace, found from each other.
            fields["trace_id"] = format(span.get_span_context().trace_id, "032x")
        fields.update(exchange.log_fields)
        access_log.info(
            "%s %s %s %d %s %.1fms",
            protocol,
            scope["method"],
            logged_path,
            status,
            code or "-",
            seconds * 1000,
            extra=fields,
        )


class _Response:
    __slots__ = ("grpc_status", "request_id", "status")

    def __init__(self) -> None:
        self.status = 0  # 0: nothing was sent (the client went away first)
        self.grpc_status = b""
        self.request_id = b""


def carrying(protocol: str, app: ASGIApp) -> ASGIApp:
    """`app`, whose requests are logged and counted as `protocol` even when no call runs: for
    the apps the router picks by more than content-type (Connect: any RPC path no REST binding
    claims; mounted pages: "http")."""

    async def carried(scope: Scope, receive: Receive, send: Send) -> None:
        exchange = CURRENT_EXCHANGE.get()
        if exchange is not None:
            exchange.protocol = protocol
        await app(scope, receive, send)

    return carried


def as_pages(mounts: Mapping[str, ASGIApp]) -> dict[str, ASGIApp]:
    """Every mount of a router (pages, /metrics: no RPC), logged and counted as "http"."""
    return {prefix: carrying("http", app) for prefix, app in mounts.items()}


def _protocol_of(scope: Scope) -> str:
    """What carried a request no call ran for and no `carrying` app claimed: the router's choice
    by content-type; a CORS preflight (which the router answers itself) is plain HTTP."""
    content_type = b""
    preflight = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif name == b"access-control-request-method":
            preflight = True
    if preflight and scope["method"] == "OPTIONS":
        return "http"
    if content_type.startswith(b"application/grpc-web"):
        return "grpc-web"
    if content_type == b"application/grpc" or content_type.startswith(b"application/grpc+"):
        return "grpc"
    return "rest"


def _loggable_path(scope: Scope) -> str:
    """The path as sent (percent-encoded, never its query), bounded and printable."""
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1") if raw else scope["path"]
    if len(path) > _MAX_PATH:
        path = path[:_MAX_PATH] + "…"
    if not path.isprintable():
        path = path.encode("unicode_escape").decode("ascii")
    return path


def _header(scope: Scope, wanted: bytes) -> bytes:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return b""
