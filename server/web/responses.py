"""What the pages send: each response with the security headers every page carries.

Pages are HTML that no other site may frame, script or cache; the one stylesheet is the only
thing a browser may keep. HEAD gets the same status and headers as GET, without the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.asgi import Headers, Send

HTML = b"text/html; charset=utf-8"
CSS = b"text/css; charset=utf-8"
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-frame-options", b"DENY"),
    # Not "no-referrer": under it a browser sends "Origin: null" with the page's own form posts
    # (Fetch, "append a request Origin header"), which would defeat the Origin check.
    # "same-origin" sends no referrer to any other site either; these pages link nowhere else.
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
)
NO_STORE = (b"cache-control", b"no-store")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: bytes | None = HTML
    # Cache-Control is no-store unless a header here says otherwise.
    headers: Headers = field(default_factory=list)

    def with_header(self, name: bytes, value: bytes) -> Response:
        self.headers.append((name, value))
        return self

    async def send(self, send: Send, *, head: bool = False) -> None:
        headers = [*SECURITY_HEADERS, *self.headers]
        if not any(name == b"cache-control" for name, _ in self.headers):
            headers.append(NO_STORE)
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type))
        headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else self.body})


def redirect(location: str) -> Response:
    """303 See Other: after a form, the browser GETs `location` (a path of this server)."""
    return Response(303, content_type=None, headers=[(b"location", location.encode("ascii"))])


def set_cookie(
    name: str, value: str, *, path: str, secure: bool, max_age: int | None = None
) -> tuple[bytes, bytes]:
    """A cookie only this site's own requests carry and no script can read. Without
    `max_age` it lasts until the browser closes; 0 deletes it."""
    parts = [f"{name}={value}", "HttpOnly", "SameSite=Strict", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return b"set-cookie", "; ".join(parts).encode("ascii")
