"""HTTP headers ⇄ gRPC metadata, grpc-gateway style, read in one pass over the request headers.

In: the headers in FORWARDED_HEADERS, and a method's own `forward_headers` (options.py), keep
their names, each occurrence of a repeated one an entry of its own, in order;
`Grpc-Metadata-<Key>` becomes `<key>` (`-bin` values base64-decoded); `Grpc-Timeout` becomes the
call's timeout. Everything else stays at the HTTP layer. Out: initial metadata as
`Grpc-Metadata-<key>`, trailing metadata as `Grpc-Trailer-<key>`; reserved `grpc-*` keys never
leave.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.asgi import Headers
from gateway.rest.status import bad_request

log = logging.getLogger(__name__)

# Request headers forwarded to the servicer as metadata under their own (lower-case) names.
FORWARDED_HEADERS: frozenset[bytes] = frozenset(
    {
        b"authorization",
        b"user-agent",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"forwarded",
        b"traceparent",
        b"tracestate",
        # draft-ietf-httpapi-idempotency-key-header: lets a servicer deduplicate retried creates.
        b"idempotency-key",
        # Server-sent events: where a reconnecting EventSource left off.
        b"last-event-id",
    }
)
METADATA_PREFIX = b"grpc-metadata-"
TRAILER_PREFIX = b"grpc-trailer-"

_KEY = re.compile(r"[0-9a-z_.\-]+")
_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_PRINTABLE = re.compile(r"[\x20-\x7e\t]*")

MetadataValue = str | bytes


@dataclass
class RequestHeaders:
    metadata: list[tuple[str, MetadataValue]] = field(default_factory=list)
    content_type: bytes | None = None
    content_length: int | None = None
    content_encoding: list[bytes] = field(default_factory=list)  # codings, lower-case, in order
    accept: bytes = b""
    timeout: float | None = None
    te_trailers: bool = False


def read_headers(
    raw: Iterable[tuple[bytes, bytes]], forwarded: frozenset[bytes] = FORWARDED_HEADERS
) -> RequestHeaders:
    """Everything the gateway needs from the request headers; 400 for malformed values.

    `forwarded`: the lower-case names passed on as metadata (a superset of FORWARDED_HEADERS).
    """
    headers = RequestHeaders()
    metadata = headers.metadata
    for name, value in raw:
        if name in forwarded:
            metadata.append((name.decode("ascii"), value.decode("latin-1")))
        elif name.startswith(METADATA_PREFIX):
            entry = _metadata_entry(name[len(METADATA_PREFIX) :], value)
            if entry is not None:
                metadata.append(entry)
        elif name == b"content-type":
            headers.content_type = value
        elif name == b"content-length":
            if not value.isdigit():
                raise bad_request("content-length", "Content-Length must be a number")
            headers.content_length = int(value)
        elif name == b"content-encoding":
            codings = (coding.strip().lower() for coding in value.split(b","))
            headers.content_encoding.extend(coding for coding in codings if coding)
        elif name == b"accept":
            headers.accept = value
        elif name == b"grpc-timeout":
            headers.timeout = parse_timeout(value)
        elif name == b"te":
            headers.te_trailers = b"trailers" in value
    return headers


def _metadata_entry(raw_key: bytes, value: bytes) -> tuple[str, MetadataValue] | None:
    key = raw_key.decode("latin-1").lower()
    if not _KEY.fullmatch(key) or key.startswith("grpc-"):
        log.debug("request header grpc-metadata-%s is not a usable metadata key", key)
        return None
    if key.endswith("-bin"):
        try:
            padded = value.strip() + b"=" * (-len(value.strip()) % 4)
            return key, base64.b64decode(padded, validate=True)
        except binascii.Error:
            raise bad_request(
                f"Grpc-Metadata-{key}", "binary metadata must be base64-encoded"
            ) from None
    return key, value.decode("latin-1")


def parse_timeout(value: bytes) -> float:
    """gRPC's `Grpc-Timeout` syntax: up to 8 digits and a unit (H M S m u n)."""
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise bad_request(
            "grpc-timeout", "Grpc-Timeout must be up to 8 digits and a unit (H, M, S, m, u, n)"
        )
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def metadata_headers(prefix: bytes, items: Iterable[tuple[str, MetadataValue]] | None) -> Headers:
    """Servicer metadata as response headers; keys or values HTTP cannot carry are dropped."""
    headers: Headers = []
    for key, value in items or ():
        key = key.lower()
        if key.startswith("grpc-") or not _KEY.fullmatch(key):
            continue
        if key.endswith("-bin"):
            data = value if isinstance(value, bytes) else value.encode()
            headers.append((prefix + key.encode(), base64.b64encode(data)))
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not _PRINTABLE.fullmatch(text):
            log.warning("metadata %s has characters an HTTP header cannot carry; dropped", key)
            continue
        headers.append((prefix + key.encode(), text.encode("ascii")))
    return headers
