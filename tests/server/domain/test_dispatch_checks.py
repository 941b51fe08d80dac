"""The check a command passes again when it is about to be sent: current policies win, approvals
are needed and expire, and the refusal carries creation's per-constraint causes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.domain.commands import MAX_REASON_LENGTH, Command, CommandState, CommandTransition
from server.domain.dispatch_checks import (
    APPROVAL_EXPIRED,
    APPROVAL_REQUIRED,
    PARAMS_INVALID,
    approve_time,
    refusal_at_dispatch,
)
from server.domain.errors import FailedPrecondition
from server.domain.safety import COMMAND_TYPE_DENIED, SAFETY_LIMIT_EXCEEDED, evaluate, motion_of
from server.domain.safety_policies import Limits, SafetyPolicy, Workspace

S = CommandState
CREATED = datetime(2030, 1, 2, 3, 0, 0, tzinfo=UTC)
APPROVED = CREATED + timedelta(minutes=1)
TTL = timedelta(minutes=5)


def policy(
    name: str = "cell",
    *,
    version: int = 1,
    limits: Limits | None = None,
    denied: frozenset[str] = frozenset(),
    approval: frozenset[str] = frozenset(),
    approval_ttl: timedelta | None = None,
) -> SafetyPolicy:
    return SafetyPolicy(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        name=name,
        description="",
        version=version,
        limits=limits or Limits(),
        workspace=Workspace(),
        allowed_command_types=frozenset(),
        denied_command_types=denied,
        approval_command_types=approval,
        create_time=CREATED,
        update_time=CREATED,
        approval_ttl=approval_ttl,
    )


def command(type_: str = "move_to", *, approved: datetime | None = None, **params: Any) -> Command:
    transitions = [CommandTransition(None, S.PENDING, "created", None, CREATED)]
    if approved is not None:
        transitions = [
            CommandTransition(None, S.AWAITING_APPROVAL, "created", None, CREATED),
            CommandTransition(S.AWAITING_APPROVAL, S.PENDING, "ok", uuid.uuid4(), approved),
        ]
    return Command(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        host_id=uuid.uuid4(),
        type=type_,
        params=params,
        idempotency_key="",
        timeout=None,
        state=S.PENDING,
        applied_policies=(),
        transitions=tuple(transitions),
        create_time=CREATED,
        update_time=approved or CREATED,
    )


def test_a_command_the_current_policies_allow_is_sent() -> None:
    slow = policy(limits=Limits(max_linear_velocity=1.0))
    assert refusal_at_dispatch(command(velocity=1.0), [slow], APPROVED) is None
    assert refusal_at_dispatch(command(velocity=1.0), [], APPROVED) is None


def test_a_tightened_policy_refuses_with_the_causes_creation_gives() -> None:
    tightened = policy("slow", version=2, limits=Limits(max_linear_velocity=0.5, max_force=1.0))
    denies = policy("no-moves", denied=frozenset({"move_to"}))
    sent = command(velocity=2, force=3)

    refusal = refusal_at_dispatch(sent, [tightened, denies], APPROVED)

    assert refusal is not None
    with pytest.raises(FailedPrecondition) as at_creation:
        evaluate("move_to", motion_of(sent.params), [tightened, denies]).enforce()
    assert refusal.message == at_creation.value.message
    assert refusal.causes == at_creation.value.causes
    assert [cause.reason for cause in refusal.causes] == [
        SAFETY_LIMIT_EXCEEDED,
        SAFETY_LIMIT_EXCEEDED,
        COMMAND_TYPE_DENIED,
    ]
    assert refusal.reason == f"refused at dispatch: {at_creation.value.message}"
    assert "velocity 2 m/s exceeds max_linear_velocity 0.5 m/s (policy 'slow' v2)" in (
        refusal.reason
    )
    assert refusal.result() == {
        "refused_at": "dispatch",
        "message": at_creation.value.message,
        "violations": [
            {"reason": cause.reason, "metadata": dict(cause.metadata)}
            for cause in at_creation.value.causes
        ],
    }


def test_a_type_that_now_needs_approval_is_refused_unless_approved() -> None:
    gate = policy("gate", version=4, approval=frozenset({"grip", "move_to"}))

    refusal = refusal_at_dispatch(command(), [gate], APPROVED)

    assert refusal is not None
    assert refusal.message == (
        "type 'move_to' now needs a person's approval (policy 'gate' v4), and the command was "
        "never approved"
    )
    (cause,) = refusal.causes
    assert cause.reason == APPROVAL_REQUIRED
    assert cause.metadata == {
        "policy_id": str(gate.id),
        "policy_version": "4",
        "policy_name": "gate",
        "constraint": "approval_command_types",
        "limit": "grip,move_to",
        "value": "move_to",
    }
    assert refusal_at_dispatch(command(approved=APPROVED), [gate], APPROVED) is None


def test_an_approval_is_good_for_its_ttl_and_no_longer() -> None:
    gate = policy("gate", version=2, approval=frozenset({"move_to"}), approval_ttl=TTL)
    approved = command(approved=APPROVED)

    assert refusal_at_dispatch(approved, [gate], APPROVED) is None
    assert refusal_at_dispatch(approved, [gate], APPROVED + TTL) is None
    late = APPROVED + TTL + timedelta(microseconds=1)
    refusal = refusal_at_dispatch(approved, [gate], late)

    assert refusal is not None
    assert refusal.message == (
        "approval expired after 300s (policy 'gate' v2): approved at "
        "2030-01-02T03:01:00+00:00, 300.000001s before dispatch"
    )
    assert refusal.reason.startswith("refused at dispatch: approval expired after 300s")
    (cause,) = refusal.causes
    assert cause.reason == APPROVAL_EXPIRED
    assert cause.metadata == {
        "policy_id": str(gate.id),
        "policy_version": "2",
        "policy_name": "gate",
        "constraint": "approval_ttl",
        "limit": "300s",
        "value": "300.000001s",
        "approve_time": "2030-01-02T03:01:00+00:00",
    }


def test_each_policy_whose_ttl_has_passed_is_named_and_only_those() -> None:
    short = policy("short", approval=frozenset({"move_to"}), approval_ttl=timedelta(seconds=10))
    long = policy("long", approval=frozenset({"move_to"}), approval_ttl=timedelta(hours=1))
    endless = policy("endless", approval=frozenset({"move_to"}))
    other = policy("other", approval=frozenset({"grip"}), approval_ttl=timedelta(seconds=1))
    policies = [short, long, endless, other]
    approved = command(approved=APPROVED)

    refusal = refusal_at_dispatch(approved, policies, APPROVED + timedelta(minutes=1))
    assert refusal is not None
    assert [cause.metadata["policy_name"] for cause in refusal.causes] == ["short"]
    refusal = refusal_at_dispatch(approved, policies, APPROVED + timedelta(hours=2))
    assert refusal is not None
    assert [cause.metadata["policy_name"] for cause in refusal.causes] == ["short", "long"]
    assert refusal.message.startswith(
        "approval expired after 10s (policy 'short' v1); approval expired after 3600s"
    )


def test_an_old_approval_no_policy_asks_for_any_more_does_not_matter() -> None:
    approved = command(approved=APPROVED)
    assert refusal_at_dispatch(approved, [policy()], APPROVED + timedelta(days=365)) is None


def test_a_violation_wins_over_the_approval_checks() -> None:
    gate = policy(
        "gate",
        limits=Limits(max_force=1.0),
        approval=frozenset({"move_to"}),
        approval_ttl=TTL,
    )
    refusal = refusal_at_dispatch(command(force=5), [gate], APPROVED + timedelta(days=1))
    assert refusal is not None
    assert [cause.reason for cause in refusal.causes] == [SAFETY_LIMIT_EXCEEDED]


def test_the_reason_is_cut_to_a_reasons_length_and_the_result_keeps_every_cause() -> None:
    policies = [
        policy(f"policy-{index:03d}-{'x' * 40}", limits=Limits(max_linear_velocity=0.1))
        for index in range(30)
    ]
    refusal = refusal_at_dispatch(command(velocity=1), policies, APPROVED)
    assert refusal is not None
    assert len(refusal.reason) == MAX_REASON_LENGTH
    assert refusal.reason.endswith("…")
    assert len(refusal.result()["violations"]) == 30


def test_params_that_no_longer_read_are_refused_not_sent() -> None:
    refusal = refusal_at_dispatch(command(velocity="fast"), [policy()], APPROVED)
    assert refusal is not None
    (cause,) = refusal.causes
    assert cause.reason == PARAMS_INVALID
    assert cause.metadata["field"] == "command.params.velocity"


def test_the_approval_is_the_move_out_of_awaiting_approval() -> None:
    assert approve_time(command()) is None
    assert approve_time(command(approved=APPROVED)) == APPROVED
