"""Triggers, free of I/O: what a valid trigger is, what its events match, how a webhook delivery
is verified, and the guard that stops triggers firing on their own tasks for ever.

A trigger creates a task from its template (environment, optional host, prompt, timeout) each
time its condition fires: a schedule (server/domain/schedules.py), a signed webhook delivery,
or an event in the tenant. Every fire, and every record of fires that did not happen, is a
TriggerFire; storage keeps them unique per trigger and dedup key, which is what makes a fire
happen exactly once.
"""

from __future__ import annotations

import base64
import enum
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from standardwebhooks.webhooks import Webhook

from server.domain.commands import CommandState
from server.domain.errors import FieldViolation, InvalidArgument, Unauthenticated
from server.domain.schedules import Schedule
from server.domain.tasks import TaskDraft, TaskFields, TaskState

MAX_NAME_LENGTH = 128
# A task created by an event trigger is one deeper than the task whose end fired it; a fire that
# would create a task deeper than this is recorded as SUPPRESSED instead.
MAX_TRIGGER_DEPTH = 3
# Standard Webhooks: a signing secret is "whsec_" + base64 of 24 to 64 random bytes.
WEBHOOK_SECRET_BYTES = 32
DEFAULT_SECRET_OVERLAP = timedelta(hours=24)
MAX_SECRET_OVERLAP = timedelta(days=7)
MAX_WEBHOOK_ID_LENGTH = 256
WEBHOOK_SIGNATURE_INVALID = "WEBHOOK_SIGNATURE_INVALID"
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]+")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# Standard Webhooks: reject timestamps further than this from now, either way (replays).
WEBHOOK_TOLERANCE = timedelta(minutes=5)
# A sender rotating keys offers a few signatures; more than this are not looked at.
_MAX_SIGNATURES = 8
_EVENT_STATE_LIMIT = 16


class TriggerKind(enum.Enum):
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    EVENT = "event"


class EventType(enum.Enum):
    TASK_ENDED = "task.ended"
    COMMAND_ENDED = "command.ended"
    HOST_ONLINE = "host.online"
    HOST_OFFLINE = "host.offline"
    ESTOP_ENGAGED = "estop.engaged"


# The states an event of each type can carry, and a trigger may filter on.
EVENT_STATES: Mapping[EventType, frozenset[str]] = {
    EventType.TASK_ENDED: frozenset(s.value for s in TaskState if s.terminal),
    EventType.COMMAND_ENDED: frozenset(s.value for s in CommandState if s.is_terminal),
    EventType.HOST_ONLINE: frozenset(),
    EventType.HOST_OFFLINE: frozenset(),
    EventType.ESTOP_ENGAGED: frozenset(),
}


class FireSource(enum.Enum):
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    EVENT = "event"


class FireOutcome(enum.Enum):
    CREATED = "created"
    MISSED = "missed"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class EventCondition:
    """Fires on events of `type`, in one of `states` (any when empty), of `host_id` (any when
    None)."""

    type: EventType
    states: tuple[str, ...] = ()
    host_id: UUID | None = None

    def matches(self, event: TriggerEvent) -> bool:
        if event.type is not self.type:
            return False
        if self.states and event.state not in self.states:
            return False
        return self.host_id is None or event.host_id == self.host_id


@dataclass(frozen=True)
class EventDraft:
    """An event condition as the client sent it."""

    type: str = ""
    states: Sequence[str] = ()
    host_id: str | UUID = ""

    def validate(self, where: str) -> EventCondition:
        violations: list[FieldViolation] = []
        try:
            kind = EventType(self.type)
        except ValueError:
            known = ", ".join(t.value for t in EventType)
            raise InvalidArgument(
                "the trigger is not valid",
                [FieldViolation(f"{where}.type", f"type must be one of {known}")],
            ) from None
        allowed = EVENT_STATES[kind]
        states: list[str] = []
        if len(self.states) > _EVENT_STATE_LIMIT:
            violations.append(FieldViolation(f"{where}.states", "at most 16 states"))
        for index, state in enumerate(self.states):
            if state not in allowed:
                choices = ", ".join(sorted(allowed)) if allowed else "none (leave states empty)"
                violations.append(
                    FieldViolation(
                        f"{where}.states[{index}]",
                        f"{state[:32]!r} is not a state of {kind.value}; it has {choices}",
                    )
                )
            elif state not in states:
                states.append(state)
        host: UUID | None = None
        if isinstance(self.host_id, UUID):
            host = self.host_id
        elif self.host_id:
            try:
                host = UUID(self.host_id)
            except ValueError:
                violations.append(
                    FieldViolation(f"{where}.host_id", f"{self.host_id[:64]!r} is not a valid id")
                )
        if violations:
            raise InvalidArgument("the trigger is not valid", violations)
        return EventCondition(kind, tuple(states), host)


# The fields an update mask may name; the condition is one of them, as a whole.
UPDATABLE = frozenset(
    {
        "name",
        "environment_id",
        "task_prompt",
        "enabled",
        "host_id",
        "task_timeout",
        "schedule",
        "event",
    }
)
# Task field names → the trigger's names for them, in field violations.
_TEMPLATE_FIELDS = {
    "prompt": "task_prompt",
    "timeout": "task_timeout",
    "environment_id": "environment_id",
    "host_id": "host_id",
}


@dataclass(frozen=True)
class TriggerDraft:
    """A trigger as the client sent it: ids are wire strings, "" meaning none. Exactly one of
    `schedule`, `webhook` (True) and `event` is its condition."""

    name: str = ""
    environment_id: str | UUID = ""
    task_prompt: str = ""
    host_id: str | UUID = ""
    task_timeout: timedelta | None = None
    enabled: bool = True
    schedule: Schedule | None = None
    webhook: bool = False
    event: EventDraft | None = None

    def validate(self, resource_field: str = "trigger") -> TriggerFields:
        """Every problem at once, each on its wire name ("trigger.schedule.cron")."""
        violations: list[FieldViolation] = []
        name = self.name.strip()
        if not name:
            violations.append(FieldViolation(f"{resource_field}.name", "name is required"))
        elif len(self.name) > MAX_NAME_LENGTH or any(c < " " for c in self.name):
            violations.append(
                FieldViolation(
                    f"{resource_field}.name",
                    f"name must be at most {MAX_NAME_LENGTH} characters, without control"
                    " characters",
                )
            )
        template: TaskFields | None = None
        try:
            template = TaskDraft(
                prompt=self.task_prompt,
                environment_id=self.environment_id,
                host_id=self.host_id,
                timeout=self.task_timeout,
            ).validate("")
        except InvalidArgument as exc:
            for v in exc.violations:
                task_field = v.field.lstrip(".")
                named = _TEMPLATE_FIELDS.get(task_field, task_field)
                described = v.description.replace(task_field, named, 1)
                violations.append(FieldViolation(f"{resource_field}.{named}", described))
        conditions = [
            kind
            for kind, given in (
                (TriggerKind.SCHEDULE, self.schedule is not None),
                (TriggerKind.WEBHOOK, self.webhook),
                (TriggerKind.EVENT, self.event is not None),
            )
            if given
        ]
        schedule: Schedule | None = None
        event: EventCondition | None = None
        if len(conditions) != 1:
            violations.append(
                FieldViolation(
                    resource_field,
                    "a trigger needs exactly one condition: schedule, webhook or event",
                )
            )
        else:
            try:
                if self.schedule is not None:
                    schedule = self.schedule.validate(f"{resource_field}.schedule")
                if self.event is not None:
                    event = self.event.validate(f"{resource_field}.event")
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        if violations:
            raise InvalidArgument("the trigger is not valid", violations)
        assert template is not None
        return TriggerFields(
            name=name,
            template=template,
            explicit_timeout=self.task_timeout is not None,
            enabled=self.enabled,
            kind=conditions[0],
            schedule=schedule,
            event=event,
        )


@dataclass(frozen=True)
class TriggerFields:
    """A validated trigger: what storage checks against the tenant's rows, then writes."""

    name: str
    template: TaskFields
    # False: the tasks take the default timeout as it is when each is created.
    explicit_timeout: bool
    enabled: bool
    kind: TriggerKind
    schedule: Schedule | None
    event: EventCondition | None


@dataclass(frozen=True)
class Trigger:
    id: UUID
    tenant_id: UUID
    name: str
    environment_id: UUID
    host_id: UUID | None
    task_prompt: str
    task_timeout: timedelta | None
    enabled: bool
    kind: TriggerKind
    schedule: Schedule | None
    event: EventCondition | None
    next_fire_time: datetime | None
    last_fire_time: datetime | None
    create_time: datetime
    update_time: datetime
    # Only in the answer that made it (create, rotation): never stored anywhere else readable.
    webhook_secret: str | None = None
    previous_secret_expire_time: datetime | None = None

    def draft(self) -> TriggerDraft:
        """The trigger as a draft, for an update to change some of its fields."""
        return TriggerDraft(
            name=self.name,
            environment_id=self.environment_id,
            task_prompt=self.task_prompt,
            host_id=self.host_id or "",
            task_timeout=self.task_timeout,
            enabled=self.enabled,
            schedule=self.schedule,
            webhook=self.kind is TriggerKind.WEBHOOK,
            event=None
            if self.event is None
            else EventDraft(self.event.type.value, self.event.states, self.event.host_id or ""),
        )


@dataclass(frozen=True)
class TriggerEvent:
    """Something that happened in a tenant, from the outbox: its type, subject, state, host,
    and how deep in a chain of triggers the change that caused it was."""

    id: int
    tenant_id: UUID
    type: EventType
    subject_id: UUID
    state: str
    host_id: UUID | None
    depth: int


@dataclass(frozen=True)
class TriggerFire:
    id: UUID
    trigger_id: UUID
    source: FireSource
    outcome: FireOutcome
    create_time: datetime
    scheduled_time: datetime | None = None
    task_id: UUID | None = None
    error: str = ""
    webhook_id: str | None = None
    event_type: str | None = None
    event_subject_id: UUID | None = None
    event_state: str | None = None
    missed_count: int = 0
    first_missed_time: datetime | None = None
    last_missed_time: datetime | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """A delivery whose signature verified: its id (the idempotency key) and signed time."""

    id: str
    timestamp: datetime


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode("ascii")


def check_overlap(overlap: timedelta | None) -> timedelta:
    if overlap is None:
        return DEFAULT_SECRET_OVERLAP
    if not timedelta(0) <= overlap <= MAX_SECRET_OVERLAP:
        raise InvalidArgument(
            "the rotation is not valid",
            [FieldViolation("overlap", "overlap must be between 0s and 7 days (604800s)")],
        )
    return overlap


def verify_delivery(
    body: bytes, headers: Mapping[str, str], signing_secrets: Sequence[str], now: datetime
) -> WebhookDelivery:
    """The delivery, if its Standard Webhooks signature verifies under one of the secrets and its
    timestamp is within WEBHOOK_TOLERANCE of `now`; else Unauthenticated, saying only which
    header is wrong (never what the right signature would be).

    The body is the raw bytes as received; nothing of it is parsed before this succeeds. The
    library signs; the timestamp is judged here, against the server's injected clock.
    """
    given = {name: headers.get(name, "") for name in WEBHOOK_HEADERS}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise _unsigned(f"the delivery is not signed: {', '.join(missing)} missing")
    webhook_id = given["webhook-id"]
    if len(webhook_id) > MAX_WEBHOOK_ID_LENGTH or not _WEBHOOK_ID.fullmatch(webhook_id):
        raise _unsigned("webhook-id must be 1 to 256 visible ASCII characters")
    if not _TIMESTAMP.fullmatch(given["webhook-timestamp"]):
        raise _unsigned("webhook-timestamp is not a Unix time in seconds")
    timestamp = datetime.fromtimestamp(int(given["webhook-timestamp"]), tz=UTC)
    if abs(now - timestamp) > WEBHOOK_TOLERANCE:
        raise _unsigned("webhook-timestamp is more than five minutes from the server's clock")
    offered = [entry.encode() for entry in given["webhook-signature"].split(" ") if entry]
    for secret in signing_secrets:
        expected = Webhook(secret).sign(webhook_id, timestamp, body).encode()
        # Every offered signature is compared, in constant time, whatever matched before.
        if sum(hmac.compare_digest(expected, entry) for entry in offered[:_MAX_SIGNATURES]):
            return WebhookDelivery(webhook_id, timestamp)
    raise _unsigned("webhook-signature does not match the body under the trigger's secret")


def _unsigned(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=WEBHOOK_SIGNATURE_INVALID)
