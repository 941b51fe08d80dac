"""The pages' defences against cross-site requests: tokens in forms, and the Origin check.

Before sign-in there is no session to bind a token to, so the sign-in form uses a double-submit
cookie: a random value set on GET that the form must repeat. Once signed in, forms carry a
token derived from the session id, which only the session's own pages can know. Both are
compared in constant time. SameSite=Strict cookies already keep other sites' posts from
carrying the session; the tokens and the Origin check each hold even if one of them fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

CSRF_COOKIE = "roz_device_csrf"
_TOKEN_BYTES = 32
_SESSION_TOKEN_MESSAGE = b"roz device csrf"
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def mint_form_token() -> str:
    """The double-submit cookie's value: 256 random bits, base64url."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def looks_like_form_token(value: str) -> bool:
    """Whether a cookie could be one of ours, so an odd value is replaced instead of echoed."""
    return 40 <= len(value) <= 64 and all(ch.isalnum() or ch in "-_" for ch in value)


def session_token(session_id: str) -> str:
    """base64url(HMAC-SHA256(key=session id, "roz device csrf")): says nothing of the id."""
    digest = hmac.new(session_id.encode(), _SESSION_TOKEN_MESSAGE, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def tokens_match(expected: str, given: str) -> bool:
    """Constant-time equality of two tokens; an empty expected token matches nothing."""
    if not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of a URL or of an Origin header; None for "null" or garbage."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def same_origin(origin_header: str, allowed: set[Origin]) -> bool:
    found = origin_of(origin_header)
    return found is not None and found in allowed
