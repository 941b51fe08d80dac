"""Commands: one instruction for one host, its validation, and its state-transition table.

A command starts PENDING, or AWAITING_APPROVAL when a safety policy names its type for approval
(see server/domain/safety.py). `TRANSITIONS` is the state machine: storage checks every
change against it under a row lock, and the server's own sweep uses it too (for TIMED_OUT);
`SERVER_MOVES` adds the one move only the server makes (a command refused at dispatch).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ReportViolation,
)
from server.domain.json_objects import check_json_object
from server.domain.safety import Motion, PolicyVersion, motion_of
from server.domain.safety_policies import MAX_COMMAND_TYPE_LENGTH, command_type_problem

MAX_PARAMS_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 128
MAX_REASON_LENGTH = 1024
MAX_TIMEOUT = timedelta(days=7)
# Printable ASCII, as the HTTP Idempotency-Key header carries it.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")


class CommandState(enum.Enum):
    AWAITING_APPROVAL = "awaiting_approval"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        return not TRANSITIONS[self]


_S = CommandState
# The state machine: every legal move, and nothing else. Approve is AWAITING_APPROVAL → PENDING,
# deny is AWAITING_APPROVAL → REJECTED; terminal states have no way out.
TRANSITIONS: Mapping[CommandState, frozenset[CommandState]] = {
    _S.AWAITING_APPROVAL: frozenset({_S.PENDING, _S.REJECTED, _S.CANCELLED}),
    _S.PENDING: frozenset({_S.RUNNING, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED, _S.TIMED_OUT}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.TIMED_OUT: frozenset(),
    _S.REJECTED: frozenset(),
}
# States only the server itself may enter: a client cannot claim that a command timed out.
SERVER_ONLY_STATES: frozenset[CommandState] = frozenset({_S.TIMED_OUT})
# Moves only the server makes, outside the table clients and robots are held to: a PENDING
# command refused by the check when it is about to be sent (server/domain/dispatch_checks.py)
# fails without ever running. A robot refuses work by running and failing it instead.
SERVER_MOVES: Mapping[CommandState, frozenset[CommandState]] = {_S.PENDING: frozenset({_S.FAILED})}
# What a robot may report over its link: starting, and how it ended. Cancelling is an
# operator's move, and the server's sweep times commands out.
ROBOT_REPORTS: frozenset[CommandState] = frozenset({_S.RUNNING, _S.COMPLETED, _S.FAILED})
# What DELETE does in each non-terminal state it accepts: cancel (and keep the record).
CANCELLED_BY_DELETE: frozenset[CommandState] = frozenset({_S.PENDING, _S.AWAITING_APPROVAL})

INVALID_TRANSITION = "INVALID_TRANSITION"
COMMAND_RUNNING = "COMMAND_RUNNING"


def wire_name(state: CommandState | None) -> str:
    """The proto name a client sees in error metadata ("RUNNING"); "" before creation."""
    return "" if state is None else state.name


def initial_state(needs_approval: bool) -> CommandState:
    """Where a command starts: waiting for a person when a policy asks for approval."""
    return CommandState.AWAITING_APPROVAL if needs_approval else CommandState.PENDING


def check_requested_state(target: CommandState) -> None:
    """A client may ask for any state but those only the server enters (whatever the current)."""
    if target in SERVER_ONLY_STATES:
        raise InvalidArgument(
            f"{target.name} is set by the server only",
            [FieldViolation("state", f"{target.name} is set by the server only")],
        )


def check_transition(
    current: CommandState, target: CommandState, *, by_server: bool = False
) -> None:
    """Raises unless `current` → `target` is in the table (server-only targets, and the
    SERVER_MOVES: by the server)."""
    if not by_server:
        check_requested_state(target)
    legal = TRANSITIONS[current]
    if by_server:
        legal = legal | SERVER_MOVES.get(current, frozenset())
    if target not in legal:
        allowed = sorted(state.name for state in TRANSITIONS[current] - SERVER_ONLY_STATES)
        hint = f"; from {current.name} it may go to {', '.join(allowed)}" if allowed else ""
        raise FailedPrecondition(
            f"a command cannot go from {current.name} to {target.name}{hint}",
            reason=INVALID_TRANSITION,
            metadata={"from": current.name, "to": target.name},
        )


class Deletion(enum.Enum):
    """What DELETE does to a command, decided by its state."""

    CANCEL = "cancel"
    REMOVE = "remove"


def deletion_of(state: CommandState) -> Deletion:
    """Pending (or awaiting approval): cancel; terminal: remove; running: refused."""
    if state in CANCELLED_BY_DELETE:
        return Deletion.CANCEL
    if state.is_terminal:
        return Deletion.REMOVE
    raise FailedPrecondition(
        f"a {state.name} command cannot be deleted; move it to CANCELLED first",
        reason=COMMAND_RUNNING,
        metadata={"state": state.name},
    )


def check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(
            "the reason is too long",
            [FieldViolation("reason", f"reason must be at most {MAX_REASON_LENGTH} characters")],
        )
    if "\x00" in reason:
        raise InvalidArgument(
            "the reason is not valid",
            [FieldViolation("reason", "reason must not contain NUL characters")],
        )
    return reason


@dataclass(frozen=True)
class CommandTransition:
    """One recorded change; `from_state` is None for the creation, `actor` None for the server."""

    from_state: CommandState | None
    to_state: CommandState
    reason: str
    actor: UUID | None
    transition_time: datetime


@dataclass(frozen=True)
class Command:
    id: UUID
    tenant_id: UUID
    host_id: UUID
    type: str
    params: dict[str, Any]
    idempotency_key: str
    timeout: timedelta | None
    state: CommandState
    applied_policies: tuple[PolicyVersion, ...]
    transitions: tuple[CommandTransition, ...]
    create_time: datetime
    update_time: datetime
    # When it entered RUNNING, and when the sweep may time it out (with a timeout only).
    start_time: datetime | None = None
    run_deadline: datetime | None = None
    # First sent to the host's robot, and first acknowledged by it (the robot link).
    deliver_time: datetime | None = None
    acknowledge_time: datetime | None = None
    # What the robot reported with the command's last state over the robot link.
    result: Mapping[str, Any] | None = None
    # For an action a robot's agent proposed in a session: the session and the agent's call id.
    session_id: UUID | None = None
    session_call_id: str | None = None
    # False for the answer of a dry run (validate_only): nothing was stored, `id` means nothing.
    stored: bool = True


@dataclass(frozen=True)
class SessionAction:
    """Where a command an agent proposed comes from: its session, call id and turn."""

    session_id: UUID
    call_id: str
    turn: int


@dataclass(frozen=True)
class CommandFields:
    """A validated command request: what storage checks against policies and writes."""

    host_id: UUID
    type: str
    params: dict[str, Any]
    motion: Motion
    idempotency_key: str
    timeout: timedelta | None
    # sha256 of the request without its idempotency key: same key + same body → same command.
    fingerprint: bytes


@dataclass(frozen=True)
class CommandDraft:
    """A command as the client sent it; ids are still wire strings."""

    host_id: str | UUID = ""
    type: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str = ""
    timeout: timedelta | None = None

    def validate(self, resource_field: str = "command") -> CommandFields:
        """Every problem at once, each on its wire name ("command.params.velocity")."""
        violations: list[FieldViolation] = []

        def violation(name: str, description: str) -> None:
            violations.append(FieldViolation(f"{resource_field}.{name}", description))

        host_id = _check_host_id(self.host_id, violation)
        if not self.type:
            violation("type", "type is required")
        # A type any policy could list ("move_to"), so that every policy can name it.
        elif command_type_problem(self.type) is not None:
            violation(
                "type",
                f"type has 1 to {MAX_COMMAND_TYPE_LENGTH} letters, digits or _ . : - "
                "(e.g. move_to)",
            )
        motion = Motion()
        if isinstance(self.params, Mapping):
            # Before the JSON check, so a NaN velocity is reported on its own name too.
            try:
                motion = motion_of(self.params, f"{resource_field}.params")
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        params = check_json_object("params", self.params, MAX_PARAMS_BYTES, violation)
        if self.idempotency_key and (
            len(self.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH
            or _IDEMPOTENCY_KEY.fullmatch(self.idempotency_key) is None
        ):
            violation(
                "idempotency_key",
                f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII "
                "characters without spaces",
            )
        if self.timeout is not None and not timedelta(0) < self.timeout <= MAX_TIMEOUT:
            violation("timeout", "timeout must be positive and at most 7 days")
        if violations:
            raise InvalidArgument("the command is not valid", violations)
        assert host_id is not None
        assert params is not None
        return CommandFields(
            host_id=host_id,
            type=self.type,
            params=params,
            motion=motion,
            idempotency_key=self.idempotency_key,
            timeout=self.timeout,
            fingerprint=_fingerprint(host_id, self.type, params, self.timeout),
        )


def with_idempotency_key(draft: CommandDraft, header: str | None) -> CommandDraft:
    """The key from the body or from the `Idempotency-Key` header; both must agree."""
    if not header:
        return draft
    if draft.idempotency_key and draft.idempotency_key != header:
        raise InvalidArgument(
            "the idempotency key of the body differs from the Idempotency-Key header",
            [
                FieldViolation(
                    "command.idempotency_key",
                    "must be empty or equal to the Idempotency-Key header",
                )
            ],
        )
    return CommandDraft(
        host_id=draft.host_id,
        type=draft.type,
        params=draft.params,
        idempotency_key=header,
        timeout=draft.timeout,
    )


def unknown_host(resource_field: str = "command") -> InvalidArgument:
    """The host named by a command does not exist in the tenant (or is another tenant's)."""
    return InvalidArgument(
        "the command's host does not exist",
        [FieldViolation(f"{resource_field}.host_id", "no host with this id exists")],
    )


def _check_host_id(value: str | UUID, violation: ReportViolation) -> UUID | None:
    if isinstance(value, UUID):
        return value
    if not value:
        violation("host_id", "host_id is required")
        return None
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        violation("host_id", f"{str(value)[:64]!r} is not a valid id")
        return None


def _canonical(value: Any) -> Any:
    """JSON numbers as floats: a Struct carries 1 as 1.0, so a body means the same either way."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # beyond any double: no Struct can carry it, keep it exact
            return value
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    return [_canonical(item) for item in value]


def _fingerprint(
    host_id: UUID, command_type: str, params: Mapping[str, Any], timeout: timedelta | None
) -> bytes:
    micros = None if timeout is None else timeout // timedelta(microseconds=1)
    canonical = json.dumps(
        [str(host_id), command_type, _canonical(params), micros],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()
