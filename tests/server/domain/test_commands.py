"""The command state machine and the validation of a command request, without a database."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta

import pytest

from server.domain.commands import (
    INVALID_TRANSITION,
    SERVER_MOVES,
    TRANSITIONS,
    CommandDraft,
    CommandState,
    Deletion,
    check_reason,
    check_transition,
    deletion_of,
    initial_state,
    with_idempotency_key,
)
from server.domain.errors import FailedPrecondition, InvalidArgument

S = CommandState
# The state machine, written out independently of the table under test.
LEGAL = {
    (S.AWAITING_APPROVAL, S.PENDING),  # approve
    (S.AWAITING_APPROVAL, S.REJECTED),  # deny
    (S.AWAITING_APPROVAL, S.CANCELLED),
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.CANCELLED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.TIMED_OUT),  # the server's sweep only
}
# Moves the server alone makes: a pending command refused at dispatch fails without running.
SERVER_ONLY = {(S.PENDING, S.FAILED)}
TERMINAL = {S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.REJECTED}
PAIRS = list(itertools.product(CommandState, CommandState))
HOST = str(uuid.uuid4())


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=lambda s: s.name)
def test_every_pair_of_states_for_a_client(current: CommandState, target: CommandState) -> None:
    if target is S.TIMED_OUT:
        with pytest.raises(InvalidArgument) as refused:
            check_transition(current, target)
        assert [v.field for v in refused.value.violations] == ["state"]
        return
    if (current, target) in LEGAL:
        check_transition(current, target)
        return
    with pytest.raises(FailedPrecondition) as raised:
        check_transition(current, target)
    assert raised.value.reason == INVALID_TRANSITION
    assert raised.value.metadata == {"from": current.name, "to": target.name}
    assert [cause.reason for cause in raised.value.causes] == [INVALID_TRANSITION]


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=lambda s: s.name)
def test_every_pair_of_states_for_the_server(current: CommandState, target: CommandState) -> None:
    if (current, target) in LEGAL | SERVER_ONLY:
        check_transition(current, target, by_server=True)
    else:
        with pytest.raises(FailedPrecondition):
            check_transition(current, target, by_server=True)


def test_the_table_has_exactly_the_legal_moves() -> None:
    moves = {(current, target) for current, targets in TRANSITIONS.items() for target in targets}
    assert moves == LEGAL
    server_moves = {
        (current, target) for current, targets in SERVER_MOVES.items() for target in targets
    }
    assert server_moves == SERVER_ONLY
    assert {state for state in CommandState if state.is_terminal} == TERMINAL


def test_an_illegal_move_says_where_it_may_go() -> None:
    with pytest.raises(FailedPrecondition, match="may go to CANCELLED, RUNNING"):
        check_transition(S.PENDING, S.COMPLETED)
    with pytest.raises(FailedPrecondition) as raised:
        check_transition(S.COMPLETED, S.RUNNING)
    assert "may go" not in raised.value.message  # terminal: nowhere


@pytest.mark.parametrize("state", list(CommandState), ids=lambda s: s.name)
def test_delete_cancels_pending_removes_finished_refuses_running(state: CommandState) -> None:
    if state in (S.PENDING, S.AWAITING_APPROVAL):
        assert deletion_of(state) is Deletion.CANCEL
    elif state in TERMINAL:
        assert deletion_of(state) is Deletion.REMOVE
    else:
        assert state is S.RUNNING
        with pytest.raises(FailedPrecondition) as raised:
            deletion_of(state)
        assert raised.value.reason == "COMMAND_RUNNING"


def test_approval_decides_the_first_state() -> None:
    assert initial_state(needs_approval=True) is S.AWAITING_APPROVAL
    assert initial_state(needs_approval=False) is S.PENDING


def test_a_full_command_validates() -> None:
    fields = CommandDraft(
        host_id=HOST,
        type="move_to",
        params={"velocity": 0.5, "target": {"x": 1, "y": 2, "z": 0.5}, "note": "pick"},
        idempotency_key="order-42",
        timeout=timedelta(seconds=30),
    ).validate()
    assert fields.host_id == uuid.UUID(HOST)
    assert fields.motion.velocity == 0.5
    assert fields.motion.target is not None
    assert (fields.motion.target.x, fields.motion.target.z) == (1.0, 0.5)
    assert fields.params["note"] == "pick"
    assert fields.timeout == timedelta(seconds=30)


def test_every_problem_is_reported_on_its_wire_name() -> None:
    with pytest.raises(InvalidArgument) as raised:
        CommandDraft(
            host_id="not-a-host",
            type="move to!",
            params={"velocity": "fast", "target": {"x": 1, "y": 2}},
            idempotency_key="has space",
            timeout=timedelta(0),
        ).validate()
    assert [v.field for v in raised.value.violations] == [
        "command.host_id",
        "command.type",
        "command.params.velocity",
        "command.params.target.z",
        "command.idempotency_key",
        "command.timeout",
    ]


@pytest.mark.parametrize(
    ("draft", "field"),
    [
        (CommandDraft(type="grip"), "command.host_id"),
        (CommandDraft(host_id=HOST), "command.type"),
        (CommandDraft(host_id=HOST, type="x" * 65), "command.type"),
        (CommandDraft(host_id=HOST, type="g", params={"blob": "x" * 70_000}), "command.params"),
        (CommandDraft(host_id=HOST, type="g", params={"nul": "a\x00b"}), "command.params"),
        (CommandDraft(host_id=HOST, type="g", params={"n": float("nan")}), "command.params"),
        (CommandDraft(host_id=HOST, type="g", params={"n": float("inf")}), "command.params"),
        (
            CommandDraft(host_id=HOST, type="g", idempotency_key="k" * 129),
            "command.idempotency_key",
        ),
        (CommandDraft(host_id=HOST, type="g", idempotency_key="é"), "command.idempotency_key"),
        (CommandDraft(host_id=HOST, type="g", timeout=timedelta(seconds=-1)), "command.timeout"),
        (CommandDraft(host_id=HOST, type="g", timeout=timedelta(days=8)), "command.timeout"),
    ],
)
def test_bounds(draft: CommandDraft, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        draft.validate()
    assert [v.field for v in raised.value.violations] == [field]


def test_bounds_are_inclusive() -> None:
    CommandDraft(
        host_id=HOST,
        type="t" * 64,
        idempotency_key="k" * 128,
        timeout=timedelta(days=7),
        params={"blob": "x" * 60_000},
    ).validate()


def test_the_fingerprint_is_the_body_without_its_key() -> None:
    def fingerprint(**changes: object) -> bytes:
        fields = {"host_id": HOST, "type": "move_to", "params": {"velocity": 1, "a": [1, 2]}}
        fields.update(changes)
        return CommandDraft(**fields).validate().fingerprint  # type: ignore[arg-type]

    base = fingerprint()
    assert fingerprint(idempotency_key="k1") == fingerprint(idempotency_key="k2") == base
    # A Struct carries every number as a double: 1 and 1.0 are the same body.
    assert fingerprint(params={"a": [1.0, 2.0], "velocity": 1.0}) == base
    assert fingerprint(params={"velocity": 2, "a": [1, 2]}) != base
    assert fingerprint(type="grip") != base
    assert fingerprint(host_id=str(uuid.uuid4())) != base
    assert fingerprint(timeout=timedelta(seconds=5)) != base


def test_the_idempotency_key_may_come_from_the_header() -> None:
    draft = CommandDraft(host_id=HOST, type="grip")
    assert with_idempotency_key(draft, "h-1").idempotency_key == "h-1"
    assert with_idempotency_key(draft, None) is draft
    same = CommandDraft(host_id=HOST, type="grip", idempotency_key="h-1")
    assert with_idempotency_key(same, "h-1").idempotency_key == "h-1"
    with pytest.raises(InvalidArgument) as raised:
        with_idempotency_key(same, "h-2")
    assert [v.field for v in raised.value.violations] == ["command.idempotency_key"]


def test_reasons_are_bounded() -> None:
    assert check_reason("r" * 1024) == "r" * 1024
    for bad in ("r" * 1025, "a\x00b"):
        with pytest.raises(InvalidArgument) as raised:
            check_reason(bad)
        assert [v.field for v in raised.value.violations] == ["reason"]
