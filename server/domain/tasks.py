"""Tasks: agent work items — what a valid task is, and the one table of legal state changes.

Storage calls `TaskDraft.validate` before every insert and `check_transition` under a row lock
before every change of state; the database's constraints only back these rules up.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any
from uuid import UUID

from server.domain.environments import TOOLS
from server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ReportViolation,
)

MAX_PROMPT_BYTES = 32 * 1024
MAX_REASON_LENGTH = 4096
MIN_TIMEOUT = timedelta(seconds=1)
MAX_TIMEOUT = timedelta(hours=24)
# A task that names no timeout may stay RUNNING this long.
DEFAULT_TIMEOUT = timedelta(hours=1)
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 256
MAX_IDEMPOTENCY_KEY_LENGTH = 128
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?")
# Visible ASCII only: the key travels as an HTTP header and a gRPC metadata value.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")

INVALID_TRANSITION = "INVALID_TRANSITION"


class TaskState(enum.Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SAFETY_STOPPED = "safety_stopped"

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self]


# The one transition table. A state with no way out is terminal, and final.
# SAFETY_STOPPED is reachable before RUNNING too: a stop for safety must also keep a task that
# has not started yet from ever starting. TIMED_OUT is in the table but only the server's sweep
# may take it (SERVER_ONLY_TARGETS); PENDING is never a target (a task starts there).
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = MappingProxyType(
    {
        TaskState.PENDING: frozenset(
            {TaskState.QUEUED, TaskState.CANCELLED, TaskState.SAFETY_STOPPED}
        ),
        TaskState.QUEUED: frozenset(
            {TaskState.RUNNING, TaskState.CANCELLED, TaskState.SAFETY_STOPPED}
        ),
        TaskState.RUNNING: frozenset(
            {
                TaskState.SUCCEEDED,
                TaskState.FAILED,
                TaskState.CANCELLED,
                TaskState.TIMED_OUT,
                TaskState.SAFETY_STOPPED,
            }
        ),
        TaskState.SUCCEEDED: frozenset(),
        TaskState.FAILED: frozenset(),
        TaskState.CANCELLED: frozenset(),
        TaskState.TIMED_OUT: frozenset(),
        TaskState.SAFETY_STOPPED: frozenset(),
    }
)
# What a robot may report over its link: starting, how it ended, or that it stopped for safety.
ROBOT_REPORTS: frozenset[TaskState] = frozenset(
    {TaskState.RUNNING, TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SAFETY_STOPPED}
)
SERVER_ONLY_TARGETS: frozenset[TaskState] = frozenset({TaskState.TIMED_OUT})
TERMINAL_STATES: frozenset[TaskState] = frozenset(s for s in TaskState if s.terminal)
# The reason the server records when its sweep times a task out.
TIMEOUT_REASON = "timeout"


def check_target(target: TaskState | None, *, by_server: bool = False) -> TaskState:
    """The state a transition asks for, if it may ever be asked for by this mover.

    No target, or a state only the server sets, can never succeed whatever the task's state:
    INVALID_ARGUMENT, before any task is looked at.
    """
    if target is None:
        raise InvalidArgument(
            "the transition names no state",
            [FieldViolation("state", "state is required")],
        )
    if target in SERVER_ONLY_TARGETS and not by_server:
        raise InvalidArgument(
            f"only the server sets {target.name}",
            [
                FieldViolation(
                    "state", f"{target.name} is set by the server when a task's timeout passes"
                )
            ],
        )
    return target


def check_transition(
    current: TaskState, target: TaskState | None, *, by_server: bool = False
) -> TaskState:
    """Raises unless `current` → `target` is legal for this mover; returns the target.

    Besides check_target's refusals, a move the table does not allow from the current state is
    FAILED_PRECONDITION with ErrorInfo INVALID_TRANSITION {"from": …, "to": …}.
    """
    target = check_target(target, by_server=by_server)
    if target not in TRANSITIONS[current]:
        why = "it is final" if current.terminal else "that is not a legal transition"
        raise FailedPrecondition(
            f"a {current.name} task cannot become {target.name}: {why}",
            reason=INVALID_TRANSITION,
            metadata={"from": current.name, "to": target.name},
        )
    return target


def check_reason(reason: str, field_name: str = "reason") -> str:
    problem = _text_problem(reason, MAX_REASON_LENGTH)
    if problem is not None:
        raise InvalidArgument(
            "the transition is not valid", [FieldViolation(field_name, f"reason {problem}")]
        )
    return reason


@dataclass(frozen=True)
class TaskTransition:
    """One recorded change; from_state None is the creation of the task."""

    from_state: TaskState | None
    to_state: TaskState
    reason: str
    # The API key that made the change; None for the server itself.
    actor: UUID | None
    transition_time: datetime


@dataclass(frozen=True)
class Task:
    id: UUID
    tenant_id: UUID
    prompt: str
    environment_id: UUID
    host_id: UUID | None
    timeout: timedelta
    allowed_tools: tuple[str, ...]
    parent_task_id: UUID | None
    labels: Mapping[str, str]
    state: TaskState
    result: str
    create_time: datetime
    update_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    # Oldest first; empty where a read does not load them (lists).
    transitions: tuple[TaskTransition, ...] = ()
    # First sent to the host's robot, and first acknowledged by it (the robot link).
    deliver_time: datetime | None = None
    acknowledge_time: datetime | None = None
    # What the robot reported with the task's last state over the robot link.
    output: Mapping[str, Any] | None = None
    # The trigger, and its fire, that created the task; None for a task created by a call.
    trigger_id: UUID | None = None
    trigger_fire_id: UUID | None = None


@dataclass(frozen=True)
class TaskFields:
    """A validated draft: what storage checks against the tenant's rows, then writes.

    An empty `allowed_tools` means every tool of the environment, resolved when the task is
    created (see `resolve_tools`).
    """

    prompt: str
    environment_id: UUID
    host_id: UUID | None
    timeout: timedelta
    allowed_tools: tuple[str, ...]
    parent_task_id: UUID | None
    labels: Mapping[str, str]

    def fingerprint(self) -> bytes:
        """SHA-256 of the request's meaning: the same body always gives the same bytes."""
        canonical = json.dumps(
            {
                "prompt": self.prompt,
                "environment_id": str(self.environment_id),
                "host_id": str(self.host_id or ""),
                "timeout_us": self.timeout // timedelta(microseconds=1),
                "allowed_tools": list(self.allowed_tools),
                "parent_task_id": str(self.parent_task_id or ""),
                "labels": dict(sorted(self.labels.items())),
            },
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode("utf-8")).digest()


@dataclass(frozen=True)
class TaskDraft:
    """A task as the client sent it: ids are still wire strings, "" meaning none."""

    prompt: str = ""
    environment_id: str | UUID = ""
    host_id: str | UUID = ""
    timeout: timedelta | None = None
    allowed_tools: Sequence[str] = ()
    parent_task_id: str | UUID = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def validate(self, resource_field: str = "task") -> TaskFields:
        """Every problem at once, each on its wire name ("task.allowed_tools[1]")."""
        violations: list[FieldViolation] = []

        def violation(name: str, description: str) -> None:
            violations.append(FieldViolation(f"{resource_field}.{name}", description))

        if not self.prompt.strip():
            violation("prompt", "prompt is required")
        elif len(self.prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
            violation("prompt", f"prompt must be at most {MAX_PROMPT_BYTES} bytes of UTF-8")
        elif "\x00" in self.prompt:
            violation("prompt", "prompt must not contain NUL characters")
        environment = _reference("environment_id", self.environment_id, violation, required=True)
        host = _reference("host_id", self.host_id, violation)
        parent = _reference("parent_task_id", self.parent_task_id, violation)
        timeout = DEFAULT_TIMEOUT if self.timeout is None else self.timeout
        if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
            violation("timeout", "timeout must be between 1s and 24h (86400s)")
        # Each tool is checked against the environment's allowed_tools, in resolve_tools.
        tools = TOOLS.check_list("allowed_tools", self.allowed_tools, violation, check_each=False)
        labels = _check_labels(self.labels, violation)
        if violations:
            raise InvalidArgument("the task is not valid", violations)
        assert environment is not None
        return TaskFields(
            prompt=self.prompt,
            environment_id=environment,
            host_id=host,
            timeout=timeout,
            allowed_tools=tools,
            parent_task_id=parent,
            labels=labels,
        )


def resolve_tools(
    fields: TaskFields,
    *,
    environment_tools: Sequence[str] | None,
    host_exists: bool,
    host_environment: UUID | None,
    parent_exists: bool,
    resource_field: str = "task",
) -> tuple[str, ...]:
    """Checks the task's references against what the tenant holds; returns the task's tools.

    `environment_tools` is None when the environment does not exist (for this tenant: another
    tenant's row looks exactly like a missing one); `host_environment` is the environment an
    existing host belongs to, None when it belongs to none.
    """
    violations: list[FieldViolation] = []

    def violation(name: str, description: str) -> None:
        violations.append(FieldViolation(f"{resource_field}.{name}", description))

    if environment_tools is None:
        violation("environment_id", f"there is no environment {fields.environment_id}")
    if fields.host_id is not None:
        if not host_exists:
            violation("host_id", f"there is no host {fields.host_id}")
        elif host_environment != fields.environment_id:
            violation(
                "host_id",
                f"host {fields.host_id} does not belong to environment {fields.environment_id}",
            )
    if fields.parent_task_id is not None and not parent_exists:
        violation("parent_task_id", f"there is no task {fields.parent_task_id}")
    if environment_tools is not None:
        offered = set(environment_tools)
        for index, tool in enumerate(fields.allowed_tools):
            if tool not in offered:
                violation(
                    f"allowed_tools[{index}]",
                    f"tool {tool!r} is not among the environment's allowed_tools",
                )
    if violations:
        raise InvalidArgument("the task refers to things it may not use", violations)
    assert environment_tools is not None
    return fields.allowed_tools or tuple(environment_tools)


def check_idempotency_key(from_field: str, from_metadata: str) -> str | None:
    """The request's idempotency key, from the field or the `idempotency-key` metadata."""
    if from_field and from_metadata and from_field != from_metadata:
        raise InvalidArgument(
            "two different idempotency keys",
            [
                FieldViolation(
                    "idempotency_key", "differs from the Idempotency-Key header (metadata)"
                )
            ],
        )
    key = from_field or from_metadata
    if not key:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidArgument(
            "the idempotency key is not valid",
            [
                FieldViolation(
                    "idempotency_key",
                    f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters, no spaces",
                )
            ],
        )
    return key


def parse_optional_id(value: str | UUID, field_name: str) -> UUID | None:
    """A filter's or reference's id; "" is none, anything else must be a UUID."""
    violations: list[FieldViolation] = []
    parsed = _reference(
        field_name, value, lambda name, why: violations.append(FieldViolation(name, why))
    )
    if violations:
        raise InvalidArgument(f"{field_name} must be a UUID", violations)
    return parsed


def _reference(
    name: str, value: str | UUID, violation: ReportViolation, *, required: bool = False
) -> UUID | None:
    if isinstance(value, UUID):
        return value
    if not value:
        if required:
            violation(name, f"{name} is required")
        return None
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        violation(name, f"{value[:64]!r} is not a valid id")
        return None


def _check_labels(labels: Mapping[str, str], violation: ReportViolation) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        violation("labels", f"at most {MAX_LABELS} labels are allowed")
    for key, value in labels.items():
        where = f"labels[{key[:64]!r}]"
        if len(key) > MAX_LABEL_KEY_LENGTH or _LABEL_KEY.fullmatch(key) is None:
            violation(
                where,
                f"a label key has 1 to {MAX_LABEL_KEY_LENGTH} letters, digits and _ . - /, "
                "starting and ending with a letter or digit",
            )
        problem = _text_problem(value, MAX_LABEL_VALUE_LENGTH, required=False)
        if problem is not None:
            violation(where, f"a label value {problem}")
    return dict(labels)


def _text_problem(value: str, max_length: int, *, required: bool = False) -> str | None:
    if required and not value:
        return "is required"
    if len(value) > max_length:
        return f"must be at most {max_length} characters"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None
