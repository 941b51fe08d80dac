"""gRPC-web's wire as a test reads it: length-prefixed frames, the last one the trailers."""

from __future__ import annotations

import struct


def frames(body: bytes) -> list[tuple[int, bytes]]:
    """The (flags, payload) frames of a gRPC-web body, in order."""
    found = []
    while len(body) >= 5:
        flags, length = struct.unpack(">BI", body[:5])
        found.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return found


def trailers(body: bytes) -> dict[str, str]:
    """The trailer frame's fields (flag 0x80: HTTP/1-style "name: value" lines), names lower."""
    fields: dict[str, str] = {}
    for flags, payload in frames(body):
        if flags & 0x80:
            for line in payload.decode("latin-1").split("\r\n"):
                name, colon, value = line.partition(":")
                if colon:
                    fields[name.strip().lower()] = value.strip()
    return fields
