"""What the pages read from an ASGI request: its headers and cookies, its query, a bounded form.

Everything here is client input, so every failure is a `BadRequest` with the status to answer
(400, 413, 415), never an exception the page would have to guess about.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from gateway.asgi import Receive, Scope

FORM = b"application/x-www-form-urlencoded"
# The approval page's forms have a handful of fields; a scope checkbox each at most.
MAX_FIELDS = 100


class BadRequest(Exception):
    """A request the page cannot read; `message` is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query_string: bytes
    scheme: str
    host: str  # the Host header (":authority" over HTTP/2), "" when absent
    origin: str | None  # the Origin header, None when absent
    content_type: bytes
    content_length: int | None
    cookies: dict[str, str]
    client: str  # the peer's address

    def query(self) -> list[tuple[str, str]]:
        return parse_pairs(self.query_string, what="query string")


def read_request(scope: Scope) -> Request:
    """The parts of an http scope the pages look at; nothing here can fail."""
    host = content_type = b""
    origin: bytes | None = None
    content_length: int | None = None
    cookie_headers: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
        elif name == b"origin":
            origin = value
        elif name == b"content-type":
            content_type = value
        elif name == b"content-length":
            content_length = int(value) if value.isdigit() else None
        elif name == b"cookie":
            cookie_headers.append(value)  # HTTP/2 may split cookies over several headers
    client = scope.get("client")
    return Request(
        method=scope["method"],
        path=scope["path"],
        query_string=scope.get("query_string", b""),
        scheme=scope.get("scheme", "http"),
        host=host.decode("latin-1"),
        origin=None if origin is None else origin.decode("latin-1"),
        content_type=content_type,
        content_length=content_length,
        cookies=parse_cookies(b"; ".join(cookie_headers)),
        client=str(client[0]) if client else "unknown",
    )


def parse_cookies(header: bytes) -> dict[str, str]:
    """RFC 6265 §5.4 "name=value; name=value"; the first of a repeated name wins (browsers send
    the cookie with the longest path first). Pairs that are not name=value are skipped, so one
    odd cookie of another app on this host cannot hide ours (as it can from SimpleCookie)."""
    cookies: dict[str, str] = {}
    for pair in header.decode("latin-1").split(";"):
        name, equals, value = pair.partition("=")
        name = name.strip()
        if equals and name and name not in cookies:
            cookies[name] = value.strip()
    return cookies


def parse_pairs(data: bytes, *, what: str) -> list[tuple[str, str]]:
    """application/x-www-form-urlencoded pairs, strictly UTF-8, at most MAX_FIELDS of them."""
    try:
        return parse_qsl(
            data.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadRequest(400, f"The {what} is not valid UTF-8.") from None
    except ValueError:
        raise BadRequest(400, f"The {what} has too many fields.") from None


async def read_form(request: Request, receive: Receive, limit: int) -> list[tuple[str, str]]:
    """The pairs of a form body of at most `limit` bytes (else 413); 415 for other bodies."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, "The form is too large.")
    media = request.content_type.split(b";", 1)[0].strip().lower()
    if media != FORM:
        raise BadRequest(415, "This page only accepts the forms it shows.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, "The form is too large.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return parse_pairs(b"".join(chunks), what="form")


def first(pairs: list[tuple[str, str]], name: str) -> str:
    """The first value of `name`, "" when absent."""
    return next((value for key, value in pairs if key == name), "")


def every(pairs: list[tuple[str, str]], name: str) -> list[str]:
    """Every distinct non-empty value of `name`, in order."""
    return list(dict.fromkeys(value for key, value in pairs if key == name and value))
