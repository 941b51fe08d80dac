"""How a server stream is framed over HTTP: NDJSON (grpc-gateway's wrapper) or server-sent events.

NDJSON is the default for compatibility with grpc-gateway clients: `{"result": <msg>}` per line
and a final `{"error": <Status>}` line if the stream fails after its first message. A client
that asks for `text/event-stream` gets SSE: `data: <msg>` events (with `id: <id>` when the
method names an event id field, so that EventSource resumes with Last-Event-ID) and
`event: error` for the final status, which EventSource can tell apart without parsing the data.
"""

from __future__ import annotations

from typing import Any

from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from gateway.rest.codec import dumps_line
from gateway.rest.status import status_to_dict


class StreamFormat:
    content_type: bytes = b"application/x-ndjson"
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()

    def message(self, value: Any, event_id: str | None = None) -> bytes:
        return _dumps({"result": value}) + b"\n"

    def error(self, status: status_pb2.Status) -> bytes:
        return _dumps({"error": status_to_dict(status)}) + b"\n"


class ServerSentEvents(StreamFormat):
    content_type = b"text/event-stream"
    # Proxies must neither cache nor buffer an event stream.
    extra_headers = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))

    def message(self, value: Any, event_id: str | None = None) -> bytes:
        data = b"data: " + _dumps(value) + b"\n\n"
        if event_id is None:
            return data
        # An id never holds a line break or NUL (the spec ignores such a field).
        clean = event_id.replace("\n", "").replace("\r", "").replace("\x00", "")
        return b"id: " + clean.encode() + b"\n" + data

    def error(self, status: status_pb2.Status) -> bytes:
        return b"event: error\ndata: " + _dumps(status_to_dict(status)) + b"\n\n"


NDJSON = StreamFormat()
SSE = ServerSentEvents()


def stream_format(accept: bytes) -> StreamFormat:
    return SSE if b"text/event-stream" in accept else NDJSON


_dumps = dumps_line  # compact, and one line per message for every line reader
