"""Content-Encoding of REST request bodies: gzip inflated within the body limit, others refused.

The limit counts the bytes received and, separately, the bytes inflated: a small gzip bomb is
refused with 413 as soon as its output passes the limit, never inflated further. An encoding
the gateway cannot decode is 415 with `Accept-Encoding` naming what it can (RFC 7694).
"""

from __future__ import annotations

import zlib

import grpc

from gateway.rest.status import RestError, bad_request

ACCEPTED = b"gzip, identity"
_GZIP = frozenset({b"gzip", b"x-gzip"})
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_BODY = "body"


class GzipBody:
    """Inflates a gzip body chunk by chunk (several members, as RFC 1952 allows)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._fed = False
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            self._fed = True
            if self._inflater.eof:
                self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
            try:
                piece = self._inflater.decompress(data, self._limit - self._size + 1)
            except zlib.error:
                raise bad_request(_BODY, "the body is not valid gzip") from None
            self._size += len(piece)
            if self._size > self._limit:
                raise too_large(self._limit, inflated=True)
            out += piece
            # Output stopped short of the cap, so all input was used unless a member ended.
            data = self._inflater.unused_data if self._inflater.eof else b""
        return bytes(out)

    def finish(self) -> bytes:
        if self._fed and not self._inflater.eof:
            raise bad_request(_BODY, "the gzip body is truncated")
        return b""


def body_decoder(codings: list[bytes], limit: int) -> GzipBody | None:
    """The decoder for a request's Content-Encoding codings (None: the body is as sent)."""
    applied = [coding for coding in codings if coding != b"identity"]
    if not applied:
        return None
    if len(applied) == 1 and applied[0] in _GZIP:
        return GzipBody(limit)
    shown = ", ".join(coding.decode("latin-1") for coding in applied)
    raise RestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"unsupported content encoding {shown!r}; send gzip or identity",
        http_status=415,
        headers=[(b"accept-encoding", ACCEPTED)],
    )


def too_large(limit: int, *, inflated: bool = False) -> RestError:
    after = " once decompressed" if inflated else ""
    return RestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the request body is larger than {limit} bytes{after}",
        http_status=413,
    )
