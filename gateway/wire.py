"""gRPC's wire, written once for the native and the gRPC-web adapters.

Both speak PROTOCOL-HTTP2's length-prefixed messages (PROTOCOL-WEB adds trailer frames), its
grpc-timeout, its grpc-message percent-encoding, its metadata (`-bin` values in base64) and its
peer spelling. Each adapter decides what a fault costs (the status it answers with); what the
bytes mean is decided here, so the two cannot drift apart again.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Collection, Iterable
from typing import Any

from gateway.asgi import Headers
from gateway.context import MetadataItems

log = logging.getLogger(__name__)

FRAME_HEADER_BYTES = 5  # one flags byte, then the payload's length, 4 bytes big-endian
COMPRESSED_FLAG = 0x01
TRAILER_FLAG = 0x80  # gRPC-web only: the frame carries the trailers as HTTP/1-style lines
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_TIMEOUT_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")


# -- messages -------------------------------------------------------------------------------------


def frame(payload: bytes, flags: int = 0) -> bytes:
    """One length-prefixed frame."""
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def frame_header(buffer: bytes | bytearray, offset: int = 0) -> tuple[int, int]:
    """(flags, declared length) of the frame starting at `offset`; the caller has checked that
    FRAME_HEADER_BYTES are there."""
    length = int.from_bytes(buffer[offset + 1 : offset + FRAME_HEADER_BYTES], "big")
    return buffer[offset], length


def larger_than_max(length: int, limit: int) -> str:
    """What both adapters say (RESOURCE_EXHAUSTED) for a message over the limit, as grpcio does."""
    return f"received message larger than max ({length} vs. {limit})"


# -- headers --------------------------------------------------------------------------------------


def parse_timeout(value: str) -> float:
    """grpc-timeout ("100m", "5S", …) in seconds; ValueError when it does not follow the spec
    (at most 8 digits, then one of H M S m u n)."""
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"malformed grpc-timeout {value!r}")
    return int(match.group(1)) * _TIMEOUT_UNIT_SECONDS[match.group(2)]


def percent_encode(message: str) -> str:
    """grpc-message encoding: UTF-8, then every byte outside printable ASCII, and '%', as %XX."""
    raw = message.encode("utf-8")
    if all(0x20 <= byte <= 0x7E and byte != 0x25 for byte in raw):
        return message
    return "".join(
        chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}" for byte in raw
    )


def status_headers(code_number: int, message: str) -> Headers:
    """grpc-status, and grpc-message when there is one."""
    headers = [(b"grpc-status", str(code_number).encode("ascii"))]
    if message:
        headers.append((b"grpc-message", percent_encode(message).encode("ascii")))
    return headers


def decode_binary_value(value: bytes) -> bytes:
    """A `-bin` metadata value; padded and unpadded base64 are both accepted, as the spec asks.
    ValueError when it is not base64."""
    value = value.strip()
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("not valid base64") from exc


def encode_metadata(
    items: MetadataItems,
    *,
    reserved: Collection[str],
    allow_status_details: bool,
    pad_binary: bool,
) -> Headers:
    """Servicer metadata as response headers, minus what would break the header block.

    This runs on error paths too, so it drops (with a warning) instead of failing: keys that
    are invalid, `reserved` (the transport's), or the gRPC runtime's (grpc-*, except the status
    details where `allow_status_details`), and text values that are not printable ASCII.
    `-bin` values go out in base64, padded when `pad_binary` (browsers decode with atob()).
    """
    headers: Headers = []
    for raw_key, value in items:
        key = raw_key.lower()
        runtime = key.startswith("grpc-") and not (
            allow_status_details and key == STATUS_DETAILS_KEY
        )
        if key in reserved or runtime or not _METADATA_KEY.fullmatch(key):
            log.warning("dropped response metadata with a reserved or invalid key %r", raw_key)
            continue
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            encoded = base64.b64encode(raw)
            headers.append((key.encode("ascii"), encoded if pad_binary else encoded.rstrip(b"=")))
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not all(0x20 <= ord(char) <= 0x7E for char in text):
            log.warning("dropped response metadata %r: value is not printable ASCII", raw_key)
            continue
        headers.append((key.encode("ascii"), text.strip().encode("ascii")))
    return headers


def peer(client: Iterable[Any] | None) -> str:
    """The client address as grpcio spells it (ipv4:1.2.3.4:5, ipv6:[::1]:5), so that log lines
    compare across protocols."""
    if not client:
        return ""
    host, port, *_ = client
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
