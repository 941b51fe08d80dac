"""Per-method REST options (forms, an error writer, fixed and forwarded headers); running writers.

Options are keyed by the full method path ("/pkg.Service/Method") and checked at start-up. An
error writer takes over the status, headers and body of every error of the method's bindings,
whether the gateway found it (malformed body, 413, 415, bad path or query values) or the call
returned it (servicer or interceptor); errors of requests no binding matched (404, 405) keep the
google.rpc.Status shape, and a stream that has started reports its failure in its framing.
The writer is given the default HTTP status; the usual headers (Retry-After, WWW-Authenticate,
metadata, fixed headers) are still sent, except those the writer sets itself. A writer is
application code on the error path, which must not fail: what it raises or returns malformed is
logged and the default body is sent instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from gateway.asgi import Headers
from gateway.rest.headers import FORWARDED_HEADERS

log = logging.getLogger(__name__)

# Framing is the gateway's: a wrong length breaks the connection, a second type is ambiguous.
FRAMING_HEADERS = frozenset(
    {b"content-length", b"content-type", b"connection", b"transfer-encoding"}
)
# Not forwarded either: hop-by-hop headers describe the connection, and the gateway decodes the
# body, so its Content-Encoding describes bytes the servicer never sees.
_UNFORWARDABLE = FRAMING_HEADERS | {
    b"content-encoding",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
}
# A lower-case HTTP token that is also a gRPC metadata key.
_FORWARDABLE_NAME = re.compile(rb"[0-9a-z_.\-]+")


class RestErrorResponse(NamedTuple):
    """What an error writer answers. Content-Length is computed by the gateway."""

    http_status: int
    headers: Headers
    body: bytes
    content_type: bytes


# (the error as google.rpc.Status, the HTTP status the gateway would answer) → the response.
ErrorWriter = Callable[[status_pb2.Status, int], RestErrorResponse]


@dataclass(frozen=True)
class RestMethodOptions:
    """How one method's REST bindings differ from the defaults.

    form_body: the bindings (all `body: "*"`) also take application/x-www-form-urlencoded bodies.
    error_writer: writes the method's error responses instead of the google.rpc.Status JSON.
    response_headers: added to every response of the method, success or error (lower-case names).
    forward_headers: request headers (lower-case names) passed to the servicer as metadata under
        their own names, as FORWARDED_HEADERS are for every method; each occurrence of a
        repeated header is an entry of its own. E.g. a webhook's signature headers.
    """

    form_body: bool = False
    error_writer: ErrorWriter | None = None
    response_headers: tuple[tuple[bytes, bytes], ...] = ()
    forward_headers: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        for header in self.response_headers:
            problem = _header_problem(header)
            if problem is None and header[0] != header[0].lower():
                problem = f"{header[0]!r} is not lower case"
            if problem is not None:
                raise ValueError(f"response header: {problem}")
        if not isinstance(self.forward_headers, tuple):
            raise ValueError(f"forward_headers: {self.forward_headers!r} is not a tuple")
        for index, name in enumerate(self.forward_headers):
            problem = _forwarding_problem(name)
            if problem is None and name in self.forward_headers[:index]:
                problem = f"{name!r} is named twice"
            if problem is not None:
                raise ValueError(f"forward header: {problem}")


NO_OPTIONS = RestMethodOptions()


def write_error(
    writer: ErrorWriter, status: status_pb2.Status, http_status: int, method: str
) -> RestErrorResponse | None:
    """The writer's response with lower-cased header names; None (logged) if it failed."""
    try:
        written = writer(status, http_status)
        problem = _problem_with(written)
    except Exception:
        log.exception("%s: the REST error writer failed; sending the default error", method)
        return None
    if problem is not None:
        log.error("%s: the REST error writer %s; sending the default error", method, problem)
        return None
    headers = [(name.lower(), value) for name, value in written.headers]
    return written._replace(headers=headers)


def _problem_with(written: object) -> str | None:
    if not isinstance(written, RestErrorResponse):
        return f"returned {type(written).__name__}, not RestErrorResponse"
    status = written.http_status
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        return f"returned HTTP status {status!r}"
    if not isinstance(written.body, bytes) or not isinstance(written.content_type, bytes):
        return "returned a body or content type that is not bytes"
    if not written.content_type or any(c in written.content_type for c in b"\r\n\0"):
        return f"returned content type {written.content_type!r}"
    for header in written.headers:
        problem = _header_problem(header)
        if problem is not None:
            return f"returned a bad header: {problem}"
    return None


def _forwarding_problem(name: object) -> str | None:
    if not isinstance(name, bytes):
        return f"{name!r} is not bytes"
    if not _FORWARDABLE_NAME.fullmatch(name):
        return f"{name!r} is not a lower-case header name of letters, digits and - _ ."
    if name.startswith(b"grpc-"):
        return f"{name!r}: grpc-* names are the protocol's"
    if name.endswith(b"-bin"):
        return f"{name!r}: a -bin metadata key holds binary values, a header holds text"
    if name in _UNFORWARDABLE:
        return f"{name!r} is the gateway's to read"
    if name in FORWARDED_HEADERS:
        return f"{name!r} is forwarded for every method already"
    return None


def _header_problem(header: object) -> str | None:
    if not (
        isinstance(header, tuple)
        and len(header) == 2
        and isinstance(header[0], bytes)
        and isinstance(header[1], bytes)
    ):
        return f"{header!r} is not a (bytes, bytes) pair"
    name, value = header
    if not name or any(c in name for c in b" \t\r\n:\0"):
        return f"{name!r} is not a header name"
    if any(c in value for c in b"\r\n\0"):
        return f"the value of {name!r} holds a line break or NUL"
    if name.lower() in FRAMING_HEADERS:
        return f"{name!r} is set by the gateway"
    return None
