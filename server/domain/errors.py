"""The domain's error vocabulary; server/api/errors.py maps each to a gRPC status in one table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


# How a check reports one problem and carries on: (field, description). The validator that
# collects them raises one InvalidArgument with all of them at the end.
ReportViolation = Callable[[str, str], None]


class DomainError(Exception):
    """Base of every error a client can cause or meet; never carries database text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations = tuple(violations)

    def explained(self) -> str:
        """The message with each bad field, for answers that carry text only (a stream's
        refusal event, a robot's ack)."""
        if not self.violations:
            return self.message
        return (
            self.message + ": " + "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        )


class NotFound(DomainError):
    def __init__(self, resource: str, resource_id: str = "") -> None:
        super().__init__(f"{resource} not found")
        self.resource = resource
        self.resource_id = resource_id


class AlreadyExists(DomainError):
    def __init__(self, message: str, resource: str = "") -> None:
        super().__init__(message)
        self.resource = resource


@dataclass(frozen=True)
class ErrorReason:
    """One machine-readable cause: a reason constant and its facts (google.rpc.ErrorInfo)."""

    reason: str
    metadata: Mapping[str, str]


class FailedPrecondition(DomainError):
    """The request is fine but the system's state refuses it (an illegal transition, …).

    `reason`/`metadata` describe the cause; `causes` lists several when there are several
    (e.g. one per violated safety constraint). Each becomes an ErrorInfo detail.
    """

    def __init__(
        self,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        causes: Sequence[ErrorReason] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})
        first = (ErrorReason(reason, self.metadata),) if reason else ()
        self.causes: tuple[ErrorReason, ...] = first + tuple(causes)


class Aborted(DomainError):
    """The operation lost a race with another (a robot link taken over by a newer stream);
    `reason`/`metadata` say which."""

    def __init__(
        self, message: str, reason: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class Unauthenticated(DomainError):
    def __init__(self, message: str, reason: str = "API_KEY_INVALID") -> None:
        super().__init__(message)
        # Machine-readable: API_KEY_MISSING, API_KEY_INVALID.
        self.reason = reason


class PermissionDenied(DomainError):
    def __init__(
        self, message: str, required_scope: str = "", reason: str = "SCOPE_MISSING"
    ) -> None:
        super().__init__(message)
        self.required_scope = required_scope
        # Machine-readable: SCOPE_MISSING; ROBOT_KEY_REFUSED (a key bound to a host called a
        # method robots may not); ROBOT_ONLY (another key called a method only robots may).
        self.reason = reason


class ResourceExhausted(DomainError):
    def __init__(self, message: str, retry_after_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(DomainError):
    """Not now (the database is away, the server not ready); `retry_after_seconds` > 0 says when
    to try again."""

    def __init__(self, message: str, retry_after_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
