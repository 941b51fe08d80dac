"""The top-level ASGI app: picks the protocol by content-type, stamps request ids, answers CORS.

One Hypercorn port carries four protocols. `application/grpc` and `application/grpc+<codec>` go to
the native gRPC app, `application/grpc-web*` to the gRPC-web app. Any other request on an RPC path
(`/pkg.Service/Method`) that no REST binding claims goes to the Connect app when there is one
(`application/proto`, `application/json`, `application/connect+*`, Connect's GET, and whatever a
confused client sends there, which Connect refuses in its own terms); everything else to REST.
Work done here happens on every request, so headers are scanned once and every constant header
value is built once, at construction.

Mounts: a non-gRPC HTTP request whose path is a mount's prefix, or starts with prefix + "/", goes
to that ASGI app (e.g. HTML pages) with its scope unchanged, full path included; the longest
prefix wins. It gets the request id like any request, but none of the CORS handling: no CORS
headers are added, and a preflight is passed to the mount, which answers it as it sees fit.
Mounts see no lifespan events and no websockets.

CORS policy (origins come from an allow-list; nothing is allowed by default):
- An allowed origin is always echoed, never answered with `*`. An origin allowed by name also gets
  `Access-Control-Allow-Credentials: true`; one allowed only through a `"*"` entry does not, since
  letting every site make credentialed calls is what the wildcard-with-credentials rule forbids.
- A preflight from an origin that is not allowed gets 403 without CORS headers: the browser fails
  the call either way, and a 403 says why in its developer tools, where a bare 204 would not.
- Non-preflight requests from an origin that is not allowed are served, without CORS headers, so
  the browser withholds the response from the page; servers and curl send no Origin at all.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import Any, Protocol

from gateway.asgi import ASGIApp, Message, Receive, Scope, Send

LifespanContext = Callable[[], AbstractAsyncContextManager[Any]]


class RestRoutes(Protocol):
    """The REST app as the router sees it: an ASGI app that knows which methods a path binds."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    def allowed_methods(self, path: str) -> Collection[str] | None: ...


REQUEST_ID = b"x-request-id"
PREFLIGHT_MAX_AGE_SECONDS = 600

_SANE_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
# "/pkg.Service/Method": a dotted service name, then one method name.
_RPC_PATH = re.compile(r"/[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+/[A-Za-z_]\w*")

# Headers a page may read without being told (CORS-safelisted response headers).
_SAFELISTED = frozenset(
    {
        b"cache-control",
        b"content-language",
        b"content-length",
        b"content-type",
        b"expires",
        b"last-modified",
        b"pragma",
    }
)
_ALWAYS_EXPOSED = (b"grpc-status", b"grpc-message", b"grpc-status-details-bin", REQUEST_ID)
_CORS_RESPONSE_HEADERS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
    }
)
_GRPC_WEB_METHODS = b"POST, OPTIONS"
_RPC_METHODS = b"GET, POST, OPTIONS"  # Connect's GET for side-effect-free methods
_MAX_AGE = str(PREFLIGHT_MAX_AGE_SECONDS).encode()
# A preflight's answer depends on all three request headers, so caches must key on them.
_PREFLIGHT_VARY = (
    b"vary",
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
)
_NO_MOUNTS: Mapping[str, ASGIApp] = MappingProxyType({})


class GatewayRouter:
    """The ASGI app Hypercorn serves. `lifespan` is an ASGI app for lifespan scopes, or a
    zero-argument factory of async context managers entered at startup and left at shutdown;
    without one, startup and shutdown complete at once."""

    def __init__(
        self,
        *,
        grpc_app: ASGIApp,
        grpc_web_app: ASGIApp,
        rest_app: RestRoutes,
        allowed_origins: Sequence[str] = (),
        lifespan: ASGIApp | LifespanContext | None = None,
        mounts: Mapping[str, ASGIApp] = _NO_MOUNTS,
        connect_app: ASGIApp | None = None,
    ) -> None:
        self._grpc = grpc_app
        self._connect = connect_app
        self._grpc_web = grpc_web_app
        self._rest = rest_app
        self._mounts = dict(mounts)
        self._mount_path = _mount_pattern(self._mounts)
        self._any_origin = "*" in allowed_origins
        self._named_origins = frozenset(o.encode("latin-1") for o in allowed_origins if o != "*")
        self._cors = bool(allowed_origins)
        self._lifespan_app, self._lifespan_context = _lifespan_of(lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket":
            # Nothing here speaks websocket; closing before accept makes the server answer 403.
            await receive()
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    # -- http --------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = origin = request_method = request_headers = b""
        request_ids: list[bytes] = []
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                has_body = has_body or value.strip() not in (b"", b"0")
            elif name == b"transfer-encoding":
                has_body = True
            elif name == REQUEST_ID:
                request_ids.append(value)
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                request_method = value
            elif name == b"access-control-request-headers":
                request_headers = value

        if len(request_ids) == 1 and _SANE_REQUEST_ID.fullmatch(request_ids[0]):
            request_id = request_ids[0]
        else:
            # A missing, ambiguous or unprintable id is replaced, so that what reaches the
            # metadata and the access log is always one id we would have produced ourselves.
            request_id = uuid.uuid4().hex.encode()
            scope = {
                **scope,
                "headers": [
                    *((n, v) for n, v in scope["headers"] if n != REQUEST_ID),
                    (REQUEST_ID, request_id),
                ],
            }

        if has_body and scope.get("http_version") in ("1.0", "1.1"):
            receive, send = _closing_unless_read(receive, send)

        app = self._app_for(content_type)
        if app is self._rest and self._connect is not None and self._is_rpc(scope["path"]):
            app = self._connect
        if self._mount_path is not None and app is self._rest:
            mounted = self._mount_path.match(scope["path"])
            if mounted is not None:
                mount = self._mounts[mounted.group(1)]
                await mount(scope, receive, _with_headers(send, [(REQUEST_ID, request_id)]))
                return

        credentials = False
        allowed = False
        if origin and self._cors:
            credentials = origin in self._named_origins
            allowed = credentials or self._any_origin

        if scope["method"] == "OPTIONS" and origin and request_method:
            await self._preflight(
                scope, origin, allowed, credentials, request_headers, request_id, send
            )
            return

        extra = [(REQUEST_ID, request_id)]
        if self._cors:
            extra.append((b"vary", b"Origin"))
        if allowed:
            extra.append((b"access-control-allow-origin", origin))
            if credentials:
                extra.append((b"access-control-allow-credentials", b"true"))

        await app(scope, receive, _with_headers(send, extra, expose=allowed))

    def _app_for(self, content_type: bytes) -> ASGIApp:
        media = content_type.split(b";", 1)[0].strip().lower()
        if media.startswith(b"application/grpc"):
            rest = media[len(b"application/grpc") :]
            if rest.startswith(b"-web"):
                return self._grpc_web
            if not rest or rest.startswith(b"+"):
                return self._grpc
        return self._rest

    def _is_rpc(self, path: str) -> bool:
        """An RPC path no REST binding claims (REST paths are the proto's own, e.g. /api/v1/…)."""
        return _RPC_PATH.fullmatch(path) is not None and self._rest.allowed_methods(path) is None

    async def _preflight(
        self,
        scope: Scope,
        origin: bytes,
        allowed: bool,
        credentials: bool,
        request_headers: bytes,
        request_id: bytes,
        send: Send,
    ) -> None:
        path: str = scope["path"]
        vary = _PREFLIGHT_VARY
        if not allowed:
            await _respond(send, 403, [(REQUEST_ID, request_id), vary])
            return
        requested = {h.strip() for h in request_headers.lower().split(b",")}
        if b"x-grpc-web" in requested or (self._connect is None and _RPC_PATH.fullmatch(path)):
            methods = _GRPC_WEB_METHODS
        elif self._connect is not None and self._is_rpc(path):
            methods = _RPC_METHODS
        else:
            # The raw path, so that an escaped "/" inside a {name=**} capture stays one segment.
            raw_path = scope.get("raw_path")
            bound = self._rest.allowed_methods(raw_path.decode("latin-1") if raw_path else path)
            if bound is None:
                body = json.dumps(
                    {"code": 5, "message": f"no route for {path}", "details": []}
                ).encode()
                await _respond(
                    send,
                    404,
                    [(REQUEST_ID, request_id), vary, (b"content-type", b"application/json")],
                    body,
                )
                return
            methods = ", ".join(sorted({*bound, "OPTIONS"})).encode()
        headers = [
            (REQUEST_ID, request_id),
            vary,
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", methods),
            (b"access-control-max-age", _MAX_AGE),
        ]
        if methods is not _GRPC_WEB_METHODS and methods is not _RPC_METHODS:
            headers.append((b"allow", methods))
        if request_headers:
            # Echoed as asked: which metadata a call carries (authorization, grpc-timeout,
            # x-user-agent, custom keys …) is the application's business, not the router's.
            headers.append((b"access-control-allow-headers", request_headers))
        if credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        await _respond(send, 204, headers)

    # -- lifespan ----------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._lifespan_app is not None:
            await self._lifespan_app(scope, receive, send)
            return
        context = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._lifespan_context is not None:
                    context = self._lifespan_context()
                    try:
                        await context.__aenter__()
                    except Exception as exc:
                        await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                        return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if context is not None:
                    try:
                        await context.__aexit__(None, None, None)
                    except Exception as exc:
                        await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                        return
                await send({"type": "lifespan.shutdown.complete"})
                return


def _lifespan_of(
    lifespan: ASGIApp | LifespanContext | None,
) -> tuple[ASGIApp | None, LifespanContext | None]:
    """Tells an ASGI lifespan app (scope, receive, send) from a context-manager factory ()."""
    if lifespan is None:
        return None, None
    parameters = inspect.signature(lifespan).parameters
    if len(parameters) == 3:
        return lifespan, None  # type: ignore[return-value]
    if not parameters:
        return None, lifespan  # type: ignore[return-value]
    raise TypeError("lifespan must be an ASGI app or a factory of async context managers")


def _mount_pattern(mounts: Mapping[str, ASGIApp]) -> re.Pattern[str] | None:
    """One regular expression for all prefixes, longest first so that the longest one wins."""
    for prefix in mounts:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f'mount prefix {prefix!r} must start with "/" and not end with "/"')
    if not mounts:
        return None
    prefixes = "|".join(re.escape(prefix) for prefix in sorted(mounts, key=len, reverse=True))
    # \Z, not $: a path may end in a (decoded) newline, before which $ would match as well.
    return re.compile(rf"({prefixes})(?:/|\Z)")


def _closing_unless_read(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """An HTTP/1 exchange that says `Connection: close` when answered before its body was read.

    Whatever answers early (a 413, a 415, a refused form, a 404), the unread rest of the body
    would be taken for the next request on the connection, so the server closes it after the
    response. Saying so lets a client or proxy open a new connection instead of reusing one it
    would find closed under its next request.
    """
    read = False

    async def receiving() -> Message:
        nonlocal read
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            read = True
        return message

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and not read:
            headers = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"connection"]
            headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return receiving, sending


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]], *, expose: bool = False) -> Send:
    """`send`, with the router's headers added to the response start of whichever app answers."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            names = {name.lower() for name, _ in headers}
            headers.extend((n, v) for n, v in extra if n not in names or n == b"vary")
            if expose and b"access-control-expose-headers" not in names:
                # The fixed grpc-* names (trailers-only errors carry them as headers) plus every
                # other header of this response, e.g. custom initial metadata and Grpc-Metadata-*.
                exposed = list(_ALWAYS_EXPOSED)
                exposed.extend(
                    n
                    for n in sorted(names)
                    if n not in _SAFELISTED
                    and n not in _ALWAYS_EXPOSED
                    and n not in _CORS_RESPONSE_HEADERS
                    and n != b"vary"
                )
                headers.append((b"access-control-expose-headers", b", ".join(exposed)))
            message = {**message, "headers": headers}
        await send(message)

    return sending


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    if status != 204:  # a 204 carries no Content-Length at all (RFC 9110 §8.6)
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
