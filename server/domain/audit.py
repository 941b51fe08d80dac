"""The audit trail: who did what to which robot, how, when; its entries' hash chain and its check.

Entries are written by the database (server/storage/migrations/0012_audit.sql), in the
transaction of the change they record. Each tenant's entries are numbered 1, 2, 3 … and each
carries sha256 over its canonical form, which ends with the previous entry's hash. `entry_hash`
computes that form again here, independently of the database's function: a verification that
only asked the database to agree with itself would prove less. `verify_chain` walks a chain and
names the first entry that breaks it.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from server.domain.errors import FieldViolation, InvalidArgument

CANONICAL_VERSION = "roz.audit.v1"
_KIND = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Protocol(enum.Enum):
    """What carried the call that caused an event; SERVER: no call, the server's own work."""

    SERVER = ""
    GRPC = "grpc"
    GRPC_WEB = "grpc-web"
    REST = "rest"
    CONNECT = "connect"


# What migration 0012's triggers record; e-stops add estop.* (migration 0014).
KINDS: tuple[str, ...] = (
    "command.created",
    "command.approved",
    "command.delivered",
    "command.acknowledged",
    "command.running",
    "command.ended",
    "task.created",
    "task.queued",
    "task.delivered",
    "task.acknowledged",
    "task.running",
    "task.ended",
    "safety_policy.created",
    "safety_policy.changed",
    "safety_policy.deleted",
    "safety_policy.attached",
    "safety_policy.detached",
    "robot.connected",
    "robot.disconnected",
)


@dataclass(frozen=True)
class Actor:
    """Who is acting in the current call, and over what; written into each tenant transaction.

    `key_id` is the API key, `host_id` the host of a robot key; `request_id` the call's
    x-request-id (printable ASCII, at most 128 characters, else not recorded).
    """

    key_id: UUID | None
    host_id: UUID | None
    protocol: Protocol
    request_id: str

    def __post_init__(self) -> None:
        if self.request_id and not _REQUEST_ID.fullmatch(self.request_id):
            object.__setattr__(self, "request_id", "")


@dataclass(frozen=True)
class AuditEvent:
    tenant_id: UUID
    sequence: int
    kind: str
    event_time: datetime
    actor_key_id: UUID | None
    actor_host_id: UUID | None
    protocol: Protocol
    request_id: str
    host_id: UUID | None
    environment_id: UUID | None
    subject_id: UUID | None
    # The JSON object's text exactly as PostgreSQL renders the stored jsonb: the hash covers it.
    detail_json: str
    previous_hash: bytes | None
    hash: bytes


@dataclass(frozen=True)
class AuditQuery:
    """Which entries to list: every filter set must match. Sequences bound the range exclusively;
    times bound it inclusively at the start and exclusively at the end."""

    host_id: UUID | None = None
    environment_id: UUID | None = None
    subject_id: UUID | None = None
    kind: str | None = None
    after_sequence: int | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    # Oldest first (the order to tail the trail in) instead of newest first.
    ascending: bool = False


def check_query(query: AuditQuery) -> AuditQuery:
    violations: list[FieldViolation] = []
    if query.kind is not None and not _KIND.fullmatch(query.kind):
        violations.append(
            FieldViolation("kind", "kind is '<noun>.<verb>' in lower case, e.g. command.created")
        )
    if query.after_sequence is not None and query.after_sequence < 0:
        violations.append(FieldViolation("after_sequence", "after_sequence must not be negative"))
    if (
        query.start_time is not None
        and query.end_time is not None
        and query.end_time <= query.start_time
    ):
        violations.append(FieldViolation("end_time", "end_time must be after start_time"))
    if violations:
        raise InvalidArgument("the audit event query is not valid", violations)
    return query


def _field(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return str(len(encoded)).encode("ascii") + b":" + encoded + b","


def _text(value: UUID | None) -> str:
    return "" if value is None else str(value)


def entry_hash(event: AuditEvent, previous_hash: bytes | None) -> bytes:
    """sha256 of the canonical form: netstrings of the fields in roz.audit_hash's order."""
    microseconds = (event.event_time - _EPOCH) // _MICROSECOND
    canonical = b"".join(
        _field(value)
        for value in (
            CANONICAL_VERSION,
            str(event.tenant_id),
            str(event.sequence),
            event.kind,
            str(microseconds),
            _text(event.actor_key_id),
            _text(event.actor_host_id),
            event.protocol.value,
            event.request_id,
            _text(event.host_id),
            _text(event.environment_id),
            _text(event.subject_id),
            event.detail_json,
            "" if previous_hash is None else previous_hash.hex(),
        )
    )
    return hashlib.sha256(canonical).digest()


class Break(enum.Enum):
    """How a chain is broken at its first bad entry."""

    # The entry's content is not what its hash was computed over: it was altered.
    ALTERED = "altered"
    # Entries are missing before this one (deleted): its sequence skips some.
    MISSING = "missing"
    # The entry does not follow the one before it: it was moved, or the one before replaced.
    UNLINKED = "unlinked"
    # The chain's head names entries that are not there (the last ones were deleted), or a hash
    # the last entry does not have.
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class ChainHead:
    last_sequence: int
    last_hash: bytes | None


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification: intact up to `verified_sequence`, or broken at
    `broken_sequence` (the first bad entry, or for TRUNCATED the first one missing)."""

    entries: int
    verified_sequence: int
    head: ChainHead
    broken: Break | None = None
    broken_sequence: int = 0
    description: str = ""

    @property
    def intact(self) -> bool:
        return self.broken is None


class ChainCheck:
    """Verifies a chain fed to it in sequence order, a batch at a time; stops at the first
    break (later entries cannot be trusted to say more)."""

    def __init__(self, head: ChainHead) -> None:
        self._head = head
        self._entries = 0
        self._last_sequence = 0
        self._last_hash: bytes | None = None
        self._verdict: Verdict | None = None

    @property
    def done(self) -> bool:
        return self._verdict is not None

    @property
    def last_sequence(self) -> int:
        return self._last_sequence

    def feed(self, events: Iterable[AuditEvent]) -> None:
        for event in events:
            if self._verdict is not None:
                return
            self._check(event)

    def _check(self, event: AuditEvent) -> None:
        expected = self._last_sequence + 1
        if event.sequence != expected:
            self._break(
                Break.MISSING,
                expected,
                f"entry {expected} is missing: after entry {self._last_sequence} comes "
                f"entry {event.sequence}",
            )
            return
        if event.previous_hash != self._last_hash:
            self._break(
                Break.UNLINKED,
                event.sequence,
                f"entry {event.sequence} does not follow entry {self._last_sequence}: the "
                "previous hash it was chained to is not that entry's hash",
            )
            return
        if entry_hash(event, event.previous_hash) != event.hash:
            self._break(
                Break.ALTERED,
                event.sequence,
                f"entry {event.sequence} was altered: its content does not match its hash",
            )
            return
        self._entries += 1
        self._last_sequence = event.sequence
        self._last_hash = event.hash

    def _break(self, kind: Break, sequence: int, description: str) -> None:
        self._verdict = Verdict(
            entries=self._entries,
            verified_sequence=self._last_sequence,
            head=self._head,
            broken=kind,
            broken_sequence=sequence,
            description=description,
        )

    def verdict(self) -> Verdict:
        """The outcome once every entry up to the head has been fed."""
        if self._verdict is not None:
            return self._verdict
        head = self._head
        if head.last_sequence != self._last_sequence or head.last_hash != self._last_hash:
            missing = self._last_sequence + 1
            return Verdict(
                entries=self._entries,
                verified_sequence=self._last_sequence,
                head=head,
                broken=Break.TRUNCATED,
                broken_sequence=missing,
                description=(
                    f"the chain's head is entry {head.last_sequence}, but the trail ends at "
                    f"entry {self._last_sequence}"
                    if head.last_sequence != self._last_sequence
                    else f"the chain's head does not hold entry {self._last_sequence}'s hash"
                ),
            )
        return Verdict(
            entries=self._entries,
            verified_sequence=self._last_sequence,
            head=head,
            description=f"{self._entries} entries verified",
        )
