"""Every registered method over gRPC-web (binary and text), fed malformed frames and payloads.

The answer is always a gRPC-web response (HTTP 200, a grpc-status), never UNKNOWN, and INTERNAL
only where gRPC prescribes it for a protocol fault (a frame or message that cannot be read),
never the chain's "internal error" of a servicer that broke on what it was given.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

import grpc
import httpx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from gateway.registry import Method
from tests.e2e.conftest import Roz
from tests.fuzz import strategies
from tests.fuzz.conftest import assert_healthy, fuzz_settings

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

EXAMPLES = 12
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
# What gRPC-web answers INTERNAL for: faults of the wire, as grpcio's own server does.
PROTOCOL_FAULTS = re.compile(
    r"could not parse the request message|truncated message frame|text body is not"
    r"|expected 1 request message|malformed grpc-timeout|.* is not valid base64"
)


def methods(roz: Roz) -> list[Method]:
    return sorted(roz.app.registry.methods(), key=lambda method: method.path)


def status_of(response: httpx.Response, text: bool) -> tuple[int, str]:
    """grpc-status and grpc-message, from the headers or the trailer frame."""
    fields = {k.lower(): v for k, v in response.headers.items()}
    body = response.content
    if text:  # each flush is its own padded base64 chunk
        body = b"".join(base64.b64decode(part) for part in re.split(rb"(?<==)(?=[^=])", body))
    while len(body) >= 5:
        flags, length = body[0], int.from_bytes(body[1:5], "big")
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            for line in frame.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
    return int(fields["grpc-status"]), unquote(fields.get("grpc-message", ""))


def fuzz_method(client: httpx.Client, key: str, method: Method) -> None:
    descriptor = method.request_class.DESCRIPTOR

    @fuzz_settings(EXAMPLES)
    @given(body=strategies.framed_body(descriptor), text=st.booleans())
    def fuzz(body: bytes, text: bool) -> None:
        headers = {
            "content-type": "application/grpc-web-text" if text else "application/grpc-web+proto",
            "authorization": f"Bearer {key}",
            # Streams (health Watch) would never end; a deadline ends them.
            "grpc-timeout": "300m" if method.kind.response_streaming else "10S",
        }
        content = base64.b64encode(body) if text else body
        note(f"{method.path} text={text} body={body!r}")
        response = client.post(method.path, content=content, headers=headers)
        assert response.status_code == 200, response.text
        code, message = status_of(response, text)
        assert code != UNKNOWN, message
        if code == INTERNAL:
            assert PROTOCOL_FAULTS.match(message), message

    fuzz()


def test_no_method_breaks_on_malformed_grpc_web(fuzzed: Roz) -> None:
    found = methods(fuzzed)
    assert len(found) > 30
    with httpx.Client(base_url=fuzzed.url, timeout=30) as client:
        for method in found:
            fuzz_method(client, fuzzed.new_tenant("fuzz-web"), method)
            assert_healthy(fuzzed)


def test_an_out_of_range_timestamp_is_invalid_argument(fuzzed: Roz) -> None:
    from google.protobuf import timestamp_pb2
    from roz.v1 import metrics_pb2

    request = metrics_pb2.GetTaskMetricsRequest(
        start_time=timestamp_pb2.Timestamp(seconds=0, nanos=-1)
    )
    payload = strategies.frame(request.SerializeToString())
    response = httpx.post(
        fuzzed.url + "/roz.v1.MetricsService/GetTaskMetrics",
        content=payload,
        headers={
            "content-type": "application/grpc-web+proto",
            "authorization": f"Bearer {fuzzed.admin_key}",
        },
        timeout=10,
    )
    code, message = status_of(response, text=False)
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
