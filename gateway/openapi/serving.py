"""GET /openapi.json and the /docs page (Swagger UI 5 from the swagger-ui-py package) as ASGI.

The document is rendered once, at construction, and served with a strong ETag so clients can
revalidate it. The page and its initializer are ours; only Swagger UI's own static files come
from the package, read with importlib.resources on first use, so nothing is fetched from the
internet at run time. The page's Content-Security-Policy allows scripts only from this server
(the initializer is a file, not an inline script), connections only to this server (the
document and "Try it out"), and no validator badge calling out.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from gateway.asgi import Receive, Scope, Send

DOCUMENT_PATH = "/openapi.json"
DOCS_PATH = "/docs"
_ASSETS = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "favicon-32x32.png": b"image/png",
    "favicon-16x16.png": b"image/png",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%(title)s</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
# No validator (it would call out), the key kept only for the page's life, "Try it out" against
# the document's own origin (it names no servers).
_INIT = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
    persistAuthorization: false,
    displayOperationId: true,
    showExtensions: true
  });
});
"""
_PAGE_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


@cache
def _asset(name: str) -> bytes:
    return (resources.files("swagger_ui") / "static" / name).read_bytes()


class OpenApiPages:
    """Mount it at DOCUMENT_PATH and DOCS_PATH; it answers both and the page's assets."""

    def __init__(self, document: bytes, *, title: str = "API reference") -> None:
        self.document = document
        self.etag = b'"' + hashlib.sha256(document).hexdigest()[:32].encode() + b'"'
        escaped = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        self._page = _PAGE % {b"title": escaped.encode()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        if method not in ("GET", "HEAD"):
            await _answer(
                send, 405, b"text/plain", b"GET or HEAD\n", method, [(b"allow", b"GET, HEAD")]
            )
            return
        if path == DOCUMENT_PATH:
            # Public knowledge, read without credentials: any site's tools may fetch it.
            headers = [
                (b"etag", self.etag),
                (b"cache-control", b"no-cache"),
                (b"access-control-allow-origin", b"*"),
            ]
            if _matches(scope, self.etag):
                await _answer(send, 304, None, b"", method, headers)
                return
            await _answer(send, 200, b"application/json", self.document, method, headers)
        elif path in (DOCS_PATH, DOCS_PATH + "/"):
            await _answer(send, 200, b"text/html; charset=utf-8", self._page, method, _PAGE_HEADERS)
        elif path == DOCS_PATH + "/init.js":
            await _answer(send, 200, b"text/javascript; charset=utf-8", _INIT, method, [])
        elif path.startswith(DOCS_PATH + "/") and path[len(DOCS_PATH) + 1 :] in _ASSETS:
            name = path[len(DOCS_PATH) + 1 :]
            cache_control = [(b"cache-control", b"public, max-age=86400")]
            await _answer(send, 200, _ASSETS[name], _asset(name), method, cache_control)
        else:
            await _answer(send, 404, b"text/plain", b"not found\n", method, [])


def _matches(scope: Scope, etag: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            tags = [tag.strip().removeprefix(b"W/") for tag in value.split(b",")]
            return etag in tags or b"*" in tags
    return False


async def _answer(
    send: Send,
    status: int,
    content_type: bytes | None,
    body: bytes,
    method: str,
    extra: list[tuple[bytes, bytes]],
) -> None:
    headers = list(extra)
    if content_type is not None:
        headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
