"""application/x-www-form-urlencoded request bodies: recognising them and reading their pairs.

Only a method whose options ask for it (`form_body`) takes forms. Its pairs set request fields
as query parameters would (the same names, repeated keys for repeated fields, enum names), with
the rules forms carry in OAuth 2.0 (RFC 6749 §3.1, §3.2), which are sound for any form:
- a pair without a value counts as omitted: it sets nothing, and does not count as a repetition;
- a singular field given twice is a 400;
- a name that is no field is ignored.
The body is always UTF-8 (the WHATWG URL standard's form encoding); a charset parameter of the
content type is tolerated and not read.
"""

from __future__ import annotations

from gateway.rest.codec import BODY
from gateway.rest.query import parse_pairs

FORM = b"application/x-www-form-urlencoded"


def media_type(content_type: bytes | None) -> bytes:
    """The lower-cased media type without parameters ("" for none)."""
    if content_type is None:
        return b""
    return content_type.split(b";", 1)[0].strip().lower()


def read_form(body: bytes) -> list[tuple[str, str]]:
    """The form's pairs that carry a value, in order."""
    return [pair for pair in parse_pairs(body, field=BODY, what="form") if pair[1]]
