"""The one table from domain errors to gRPC statuses with google.rpc details."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from psycopg import OperationalError
from psycopg_pool import PoolTimeout

from server.domain import device_auth, errors

log = logging.getLogger(__name__)

ERROR_DOMAIN = "roz.dev"
# RetryInfo for a database error met mid-call (a connection lost as the database went away).
RETRY_SECONDS = 1.0


def _status(code: int, message: str, *details: Message) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def _invalid_argument(exc: errors.InvalidArgument) -> status_pb2.Status:
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
        for v in exc.violations
    ]
    return _status(
        code_pb2.INVALID_ARGUMENT,
        exc.message,
        error_details_pb2.BadRequest(field_violations=violations),
    )


def _not_found(exc: errors.NotFound) -> status_pb2.Status:
    return _status(
        code_pb2.NOT_FOUND,
        exc.message,
        error_details_pb2.ResourceInfo(resource_type=exc.resource, resource_name=exc.resource_id),
    )


def _already_exists(exc: errors.AlreadyExists) -> status_pb2.Status:
    return _status(
        code_pb2.ALREADY_EXISTS,
        exc.message,
        error_details_pb2.ResourceInfo(resource_type=exc.resource),
    )


def _failed_precondition(exc: errors.FailedPrecondition) -> status_pb2.Status:
    # One ErrorInfo per cause (e.g. per violated safety constraint); `causes` starts with
    # `reason` when one was given.
    details = [
        error_details_pb2.ErrorInfo(
            reason=cause.reason, domain=ERROR_DOMAIN, metadata=dict(cause.metadata)
        )
        for cause in exc.causes
    ]
    return _status(code_pb2.FAILED_PRECONDITION, exc.message, *details)


def _aborted(exc: errors.Aborted) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(
        reason=exc.reason, domain=ERROR_DOMAIN, metadata=dict(exc.metadata)
    )
    return _status(code_pb2.ABORTED, exc.message, info)


def _unauthenticated(exc: errors.Unauthenticated) -> status_pb2.Status:
    return _status(
        code_pb2.UNAUTHENTICATED,
        exc.message,
        error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN),
    )


def _permission_denied(exc: errors.PermissionDenied) -> status_pb2.Status:
    return _status(
        code_pb2.PERMISSION_DENIED,
        exc.message,
        error_details_pb2.ErrorInfo(
            reason=exc.reason,
            domain=ERROR_DOMAIN,
            metadata={"required_scope": exc.required_scope} if exc.required_scope else {},
        ),
    )


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    whole_seconds = max(1, math.ceil(seconds))
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=whole_seconds))


def _resource_exhausted(exc: errors.ResourceExhausted) -> status_pb2.Status:
    return _status(code_pb2.RESOURCE_EXHAUSTED, exc.message, _retry_info(exc.retry_after_seconds))


def _unavailable(exc: errors.Unavailable) -> status_pb2.Status:
    if exc.retry_after_seconds > 0:
        return _status(code_pb2.UNAVAILABLE, exc.message, _retry_info(exc.retry_after_seconds))
    return _status(code_pb2.UNAVAILABLE, exc.message)


# Each device-flow answer as a gRPC status; its ErrorInfo reason is the RFC 6749 error code in
# upper case, which the REST token endpoint writes back in lower case (server/api/device_auth.py).
_DEVICE_FLOW_CODES = {
    device_auth.OAuthError.INVALID_REQUEST: code_pb2.INVALID_ARGUMENT,
    device_auth.OAuthError.INVALID_GRANT: code_pb2.NOT_FOUND,
    device_auth.OAuthError.INVALID_SCOPE: code_pb2.INVALID_ARGUMENT,
    device_auth.OAuthError.UNSUPPORTED_GRANT_TYPE: code_pb2.INVALID_ARGUMENT,
    device_auth.OAuthError.AUTHORIZATION_PENDING: code_pb2.FAILED_PRECONDITION,
    device_auth.OAuthError.SLOW_DOWN: code_pb2.RESOURCE_EXHAUSTED,
    device_auth.OAuthError.ACCESS_DENIED: code_pb2.PERMISSION_DENIED,
    device_auth.OAuthError.EXPIRED_TOKEN: code_pb2.FAILED_PRECONDITION,
}


def _device_flow(exc: device_auth.DeviceFlowError) -> status_pb2.Status:
    metadata = {}
    details: list[Message] = []
    if exc.interval_seconds is not None:
        metadata["interval"] = str(exc.interval_seconds)
        if exc.error is device_auth.OAuthError.SLOW_DOWN:
            delay = duration_pb2.Duration(seconds=exc.interval_seconds)
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    info = error_details_pb2.ErrorInfo(
        reason=exc.error.value.upper(), domain=ERROR_DOMAIN, metadata=metadata
    )
    return _status(_DEVICE_FLOW_CODES[exc.error], exc.message, info, *details)


def _database_unavailable(exc: Exception) -> status_pb2.Status:
    # The client did nothing wrong and must not see the driver's text. An outage is logged once
    # by server/storage/availability.py, not here per request.
    log.debug("database unavailable: %s", exc)
    return _status(
        code_pb2.UNAVAILABLE, "database unavailable, retry later", _retry_info(RETRY_SECONDS)
    )


_TABLE: tuple[tuple[type[Exception], Callable[..., status_pb2.Status]], ...] = (
    (errors.InvalidArgument, _invalid_argument),
    (errors.NotFound, _not_found),
    (errors.AlreadyExists, _already_exists),
    (errors.FailedPrecondition, _failed_precondition),
    (errors.Aborted, _aborted),
    (errors.Unauthenticated, _unauthenticated),
    (errors.PermissionDenied, _permission_denied),
    (errors.ResourceExhausted, _resource_exhausted),
    (errors.Unavailable, _unavailable),
    (device_auth.DeviceFlowError, _device_flow),
    (PoolTimeout, _database_unavailable),
    (OperationalError, _database_unavailable),
)


def status_for(exc: Exception) -> status_pb2.Status | None:
    """The status a client sees for `exc`, or None for a bug (answered as INTERNAL and logged)."""
    for error_type, convert in _TABLE:
        if isinstance(exc, error_type):
            return convert(exc)
    return None
