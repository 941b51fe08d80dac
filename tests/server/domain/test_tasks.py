"""The task rules: every pair of the transition table, drafts, references, idempotency keys."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.domain.errors import FailedPrecondition, InvalidArgument
from server.domain.metrics import TaskMetricsQuery
from server.domain.tasks import (
    DEFAULT_TIMEOUT,
    INVALID_TRANSITION,
    MAX_PROMPT_BYTES,
    TERMINAL_STATES,
    TaskDraft,
    TaskState,
    check_idempotency_key,
    check_reason,
    check_transition,
    parse_optional_id,
    resolve_tools,
)

S = TaskState
# Written out independently of the module's table: (from, to) a client may ask for.
CLIENT_MOVES = {
    (S.PENDING, S.QUEUED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.SAFETY_STOPPED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.QUEUED, S.SAFETY_STOPPED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.SAFETY_STOPPED),
}
SERVER_MOVES = CLIENT_MOVES | {(S.RUNNING, S.TIMED_OUT)}
ENV = uuid.uuid4()


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(TaskState, TaskState)),
    ids=lambda state: state.name,
)
def test_every_pair_of_states(current: TaskState, target: TaskState) -> None:
    # A client.
    if (current, target) in CLIENT_MOVES:
        assert check_transition(current, target) is target
    elif target is S.TIMED_OUT:
        with pytest.raises(InvalidArgument) as invalid:
            check_transition(current, target)
        assert [v.field for v in invalid.value.violations] == ["state"]
    else:
        with pytest.raises(FailedPrecondition) as refused:
            check_transition(current, target)
        assert refused.value.reason == INVALID_TRANSITION
        assert refused.value.metadata == {"from": current.name, "to": target.name}
        assert current.name in refused.value.message
        assert target.name in refused.value.message
    # The server's sweep.
    if (current, target) in SERVER_MOVES:
        assert check_transition(current, target, by_server=True) is target
    else:
        with pytest.raises(FailedPrecondition):
            check_transition(current, target, by_server=True)


@pytest.mark.parametrize("current", list(TaskState), ids=lambda state: state.name)
def test_no_target_is_invalid_whatever_the_state(current: TaskState) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_transition(current, None)
    assert [v.field for v in raised.value.violations] == ["state"]


def test_terminal_states_are_exactly_those_without_a_way_out() -> None:
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.SAFETY_STOPPED} == TERMINAL_STATES
    assert all(state.terminal for state in TERMINAL_STATES)
    assert not any(state.terminal for state in (S.PENDING, S.QUEUED, S.RUNNING))
    with pytest.raises(FailedPrecondition, match="final"):
        check_transition(S.SUCCEEDED, S.FAILED)


def test_pending_is_never_a_target() -> None:
    for current in TaskState:
        with pytest.raises(FailedPrecondition):
            check_transition(current, S.PENDING, by_server=True)


def test_a_minimal_draft_gets_the_default_timeout() -> None:
    fields = TaskDraft(prompt="pick the red cube", environment_id=str(ENV)).validate()
    assert fields.environment_id == ENV
    assert (fields.host_id, fields.parent_task_id) == (None, None)
    assert fields.timeout == DEFAULT_TIMEOUT == timedelta(hours=1)
    assert (fields.allowed_tools, dict(fields.labels)) == ((), {})


def _fields(draft: TaskDraft) -> list[str]:
    with pytest.raises(InvalidArgument) as raised:
        draft.validate()
    return [v.field for v in raised.value.violations]


def test_every_problem_is_reported_on_its_wire_name() -> None:
    draft = TaskDraft(
        prompt=" ",
        environment_id="",
        host_id="h",
        parent_task_id="p",
        timeout=timedelta(milliseconds=999),
        allowed_tools=("camera", "camera"),
        labels={"-bad": "x", "ok": "\x00"},
    )
    assert _fields(draft) == [
        "task.prompt",
        "task.environment_id",
        "task.host_id",
        "task.parent_task_id",
        "task.timeout",
        "task.allowed_tools[1]",
        "task.labels['-bad']",
        "task.labels['ok']",
    ]


@pytest.mark.parametrize(
    ("prompt", "valid"),
    [
        ("x" * MAX_PROMPT_BYTES, True),
        ("x" * (MAX_PROMPT_BYTES + 1), False),
        # Bytes of UTF-8, not characters: 2 bytes each.
        ("é" * (MAX_PROMPT_BYTES // 2), True),
        ("é" * (MAX_PROMPT_BYTES // 2 + 1), False),
        ("nul\x00", False),
        ("", False),
        ("\n\t", False),
    ],
)
def test_prompt_bounds(prompt: str, valid: bool) -> None:
    draft = TaskDraft(prompt=prompt, environment_id=ENV)
    if valid:
        assert draft.validate().prompt == prompt
    else:
        assert _fields(draft) == ["task.prompt"]


@pytest.mark.parametrize(
    ("timeout", "valid"),
    [
        (timedelta(seconds=1), True),
        (timedelta(hours=24), True),
        (timedelta(seconds=0), False),
        (timedelta(seconds=-5), False),
        (timedelta(hours=24, microseconds=1), False),
    ],
)
def test_timeout_bounds(timeout: timedelta, valid: bool) -> None:
    draft = TaskDraft(prompt="p", environment_id=ENV, timeout=timeout)
    if valid:
        assert draft.validate().timeout == timeout
    else:
        assert _fields(draft) == ["task.timeout"]


def test_label_bounds() -> None:
    assert _fields(TaskDraft(prompt="p", environment_id=ENV, labels={"k" * 64: "v"})) == [
        f"task.labels[{'k' * 64!r}]"
    ]
    assert _fields(
        TaskDraft(prompt="p", environment_id=ENV, labels={f"k{i}": "v" for i in range(65)})
    ) == ["task.labels"]
    fields = TaskDraft(
        prompt="p", environment_id=ENV, labels={"team/arm": "a" * 256, "zone.1": ""}
    ).validate()
    assert dict(fields.labels) == {"team/arm": "a" * 256, "zone.1": ""}


def test_the_fingerprint_is_the_meaning_of_the_request() -> None:
    base = TaskDraft(prompt="p", environment_id=ENV, labels={"a": "1", "b": "2"})
    same = TaskDraft(
        prompt="p", environment_id=str(ENV), labels={"b": "2", "a": "1"}, timeout=DEFAULT_TIMEOUT
    )
    assert base.validate().fingerprint() == same.validate().fingerprint()
    assert len(base.validate().fingerprint()) == 32
    for changed in (
        TaskDraft(prompt="q", environment_id=ENV, labels={"a": "1", "b": "2"}),
        TaskDraft(prompt="p", environment_id=ENV, labels={"a": "1"}),
        TaskDraft(
            prompt="p", environment_id=ENV, labels={"a": "1", "b": "2"}, allowed_tools=("x",)
        ),
        TaskDraft(
            prompt="p",
            environment_id=ENV,
            labels={"a": "1", "b": "2"},
            timeout=timedelta(seconds=30),
        ),
    ):
        assert changed.validate().fingerprint() != base.validate().fingerprint()


def _resolve(**overrides: object) -> tuple[str, ...]:
    draft_fields = {
        "prompt": "p",
        "environment_id": ENV,
        "allowed_tools": ("camera",),
        **{
            k: v
            for k, v in overrides.items()
            if k in {"host_id", "parent_task_id", "allowed_tools"}
        },
    }
    fields = TaskDraft(**draft_fields).validate()  # type: ignore[arg-type]
    facts = {
        "environment_tools": ("camera", "gripper"),
        "host_exists": False,
        "host_environment": None,
        "parent_exists": False,
        **{k: v for k, v in overrides.items() if k not in draft_fields},
    }
    return resolve_tools(fields, **facts)  # type: ignore[arg-type]


def test_references_are_checked_against_the_tenants_rows() -> None:
    host, parent = uuid.uuid4(), uuid.uuid4()
    assert _resolve() == ("camera",)
    # No tools named: every tool of the environment.
    assert _resolve(allowed_tools=()) == ("camera", "gripper")
    assert _resolve(host_id=host, host_exists=True, host_environment=ENV) == ("camera",)
    assert _resolve(parent_task_id=parent, parent_exists=True) == ("camera",)

    def fields_of(**overrides: object) -> list[tuple[str, str]]:
        with pytest.raises(InvalidArgument) as raised:
            _resolve(**overrides)
        return [(v.field, v.description) for v in raised.value.violations]

    assert [f for f, _ in fields_of(environment_tools=None)] == ["task.environment_id"]
    assert fields_of(host_id=host) == [("task.host_id", f"there is no host {host}")]
    elsewhere = fields_of(host_id=host, host_exists=True, host_environment=uuid.uuid4())
    assert elsewhere == [("task.host_id", f"host {host} does not belong to environment {ENV}")]
    unassigned = fields_of(host_id=host, host_exists=True, host_environment=None)
    assert [f for f, _ in unassigned] == ["task.host_id"]
    assert [f for f, _ in fields_of(parent_task_id=parent)] == ["task.parent_task_id"]
    tools = fields_of(allowed_tools=("gripper", "laser", "camera", "drill"))
    assert [f for f, _ in tools] == ["task.allowed_tools[1]", "task.allowed_tools[3]"]


def test_idempotency_keys() -> None:
    assert check_idempotency_key("", "") is None
    assert check_idempotency_key("k-1", "") == "k-1"
    assert check_idempotency_key("", "k-1") == "k-1"
    assert check_idempotency_key("k-1", "k-1") == "k-1"
    for field, metadata in (("a", "b"), ("with space", ""), ("x" * 129, ""), ("", "é")):
        with pytest.raises(InvalidArgument) as raised:
            check_idempotency_key(field, metadata)
        assert [v.field for v in raised.value.violations] == ["idempotency_key"]


def test_reasons_are_bounded() -> None:
    assert check_reason("r" * 4096) == "r" * 4096
    for bad in ("r" * 4097, "nul\x00"):
        with pytest.raises(InvalidArgument) as raised:
            check_reason(bad)
        assert [v.field for v in raised.value.violations] == ["reason"]


def test_optional_ids() -> None:
    assert parse_optional_id("", "host_id") is None
    assert parse_optional_id(str(ENV), "host_id") == ENV
    with pytest.raises(InvalidArgument) as raised:
        parse_optional_id("nope", "host_id")
    assert [v.field for v in raised.value.violations] == ["host_id"]


def test_a_metrics_window_must_not_be_empty() -> None:
    now = datetime.now(UTC)
    assert TaskMetricsQuery(start_time=now, end_time=now + timedelta(seconds=1))
    assert TaskMetricsQuery(start_time=now)
    for end in (now, now - timedelta(seconds=1)):
        with pytest.raises(InvalidArgument) as raised:
            TaskMetricsQuery(start_time=now, end_time=end)
        assert [v.field for v in raised.value.violations] == ["end_time"]
