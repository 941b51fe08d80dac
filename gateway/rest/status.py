"""THE gRPC code → HTTP status table, and the google.rpc.Status JSON body of every REST error.

The table is the one google/rpc/code.proto, grpc-gateway and Envoy share. Errors found by the
gateway itself (routing, body, query) are `RestError`s and take the same shape as a servicer's
errors, unless the method has an error writer of its own (options.py). Writing an error must not
fail: an undecodable detail is dropped rather than turned into a 500, and a last hard-coded body
stands behind everything else.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format

# error_details_pb2 also registers BadRequest, RetryInfo ... so Any details can be rendered.
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    code_pb2,
    error_details_pb2,
    status_pb2,
)

from gateway.asgi import Headers

log = logging.getLogger(__name__)


_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # deliberately not 412: the client must change state
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_HTTP_BY_NUMBER = {code.value[0]: status for code, status in _HTTP_STATUS.items()}
_DETAILS_KEY = "grpc-status-details-bin"
_LAST_RESORT = b'{"code":13,"message":"failed to write the error","details":[]}'


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC code; 500 for anything outside the table."""
    return _HTTP_STATUS.get(code, 500)


def http_status_for_number(code: int) -> int:
    return _HTTP_BY_NUMBER.get(code, 500)


def code_for_number(code: int) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)


class RestError(Exception):
    """A request the gateway answers itself, with a google.rpc.Status body."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        violations: Sequence[tuple[str, str]] = (),
        http_status: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status_pb2.Status(code=code.value[0], message=message)
        if violations:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in violations
                    ]
                )
            )
            self.status.details.append(detail)
        self.http_status = http_status if http_status is not None else http_status_for(code)
        self.headers = headers or []


def bad_request(field: str, description: str) -> RestError:
    return RestError(
        grpc.StatusCode.INVALID_ARGUMENT, description, violations=[(field, description)]
    )


def status_from_call(
    code: grpc.StatusCode | None, details: str | None, trailing: Iterable[tuple[str, Any]]
) -> status_pb2.Status:
    """The servicer's status, with details from grpc-status-details-bin when it carries them."""
    number = (code or grpc.StatusCode.UNKNOWN).value[0]
    for key, value in trailing:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            rich = status_pb2.Status.FromString(value)
        except Exception:
            log.warning("undecodable %s dropped", _DETAILS_KEY)
            break
        if rich.code == number:
            return rich
        # The code the context carries is the truth; keep the rich details with it.
        rich.code = number
        return rich
    return status_pb2.Status(code=number, message=details or "")


def status_headers(status: status_pb2.Status) -> Headers:
    """WWW-Authenticate on 401 (RFC 7235 requires it), Retry-After from a RetryInfo detail."""
    headers: Headers = []
    if status.code == code_pb2.UNAUTHENTICATED:
        headers.append((b"www-authenticate", b"Bearer"))
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                headers.append((b"retry-after", str(max(0, math.ceil(delay))).encode()))
            break
    return headers


def status_to_dict(status: status_pb2.Status) -> dict[str, Any]:
    """google.rpc.Status as proto3 JSON; details whose type is unknown here are left out."""
    try:
        return _to_dict(status)
    except Exception:
        kept = status_pb2.Status(code=status.code, message=status.message)
        for detail in status.details:
            try:
                _to_dict(status_pb2.Status(details=[detail]))
            except Exception:
                log.warning("error detail %s cannot be rendered as JSON", detail.type_url)
                continue
            kept.details.append(detail)
        return _to_dict(kept)


def status_body(status: status_pb2.Status, indent: int | None = None) -> bytes:
    try:
        text = json.dumps(
            status_to_dict(status),
            ensure_ascii=False,
            indent=indent,
            separators=None if indent else (",", ":"),
        )
        return text.encode()
    except Exception:
        log.exception("failed to write an error body")
        return _LAST_RESORT


def _to_dict(status: status_pb2.Status) -> dict[str, Any]:
    return json_format.MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
