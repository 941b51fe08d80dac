"""The check a command passes again when it is about to be sent to its robot.

Creation checked the command against its environment's policies as they were then
(server/domain/safety.py). It may be sent much later, so before each send it is checked again
against the policies as they are now, and a policy tightened since wins. The command is refused
when
- it violates a constraint now: the same per-constraint causes a create would be refused with;
- a policy now names its type for approval, and nobody approved it;
- it was approved longer ago than the `approval_ttl` of a policy naming its type for approval.
A refused command fails (SERVER_MOVES: PENDING → FAILED, by the server) with the refusal as its
reason and its result, and goes out FAILED, so the robot skips it and the host's log keeps every
number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.domain import safety
from server.domain.commands import MAX_REASON_LENGTH, Command, CommandState
from server.domain.errors import ErrorReason, FailedPrecondition, InvalidArgument
from server.domain.safety_policies import SafetyPolicy, describe_duration

APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
PARAMS_INVALID = "PARAMS_INVALID"
REFUSED_AT_DISPATCH = "refused at dispatch"


@dataclass(frozen=True)
class Refusal:
    """Why a command may not be sent: a message, and one cause per broken rule (the ErrorInfo
    details a refused create carries)."""

    message: str
    causes: tuple[ErrorReason, ...]

    @property
    def reason(self) -> str:
        """The failure's recorded reason, cut to what a transition's reason holds."""
        text = f"{REFUSED_AT_DISPATCH}: {self.message}"
        if len(text) <= MAX_REASON_LENGTH:
            return text
        return text[: MAX_REASON_LENGTH - 1] + "…"

    def result(self) -> dict[str, Any]:
        """What the command keeps as its result: every cause in full, though the reason is cut."""
        return {
            "refused_at": "dispatch",
            "message": self.message,
            "violations": [
                {"reason": cause.reason, "metadata": dict(cause.metadata)} for cause in self.causes
            ],
        }


def approve_time(command: Command) -> datetime | None:
    """When the command was approved (AWAITING_APPROVAL → PENDING); None if it never was."""
    for transition in reversed(command.transitions):
        if (
            transition.from_state is CommandState.AWAITING_APPROVAL
            and transition.to_state is CommandState.PENDING
        ):
            return transition.transition_time
    return None


def refusal_at_dispatch(
    command: Command, policies: Sequence[SafetyPolicy], now: datetime
) -> Refusal | None:
    """Why `command` may not be sent at `now` under `policies` (its environment's latest
    versions, in attachment order); None when it may. Never raises."""
    try:
        motion = safety.motion_of(command.params)
    except InvalidArgument as invalid:  # creation took these params; fail closed all the same
        return Refusal(
            invalid.message,
            tuple(
                ErrorReason(PARAMS_INVALID, {"field": v.field, "description": v.description})
                for v in invalid.violations
            ),
        )
    verdict = safety.evaluate(command.type, motion, policies)
    try:
        verdict.enforce()
    except FailedPrecondition as refused:
        return Refusal(refused.message, refused.causes)
    if not verdict.needs_approval:
        return None
    approvers = [policy for policy in policies if command.type in policy.approval_command_types]
    approved = approve_time(command)
    if approved is None:
        return _never_approved(command.type, approvers)
    return _expired(approved, approvers, now)


def _never_approved(command_type: str, approvers: Sequence[SafetyPolicy]) -> Refusal:
    names = ", ".join(f"{policy.name!r} v{policy.version}" for policy in approvers)
    return Refusal(
        f"type {command_type!r} now needs a person's approval (policy {names}), and the command "
        "was never approved",
        tuple(
            ErrorReason(
                APPROVAL_REQUIRED,
                {
                    **_policy_facts(policy),
                    "constraint": "approval_command_types",
                    "limit": ",".join(sorted(policy.approval_command_types)),
                    "value": command_type,
                },
            )
            for policy in approvers
        ),
    )


def _expired(
    approved: datetime, approvers: Sequence[SafetyPolicy], now: datetime
) -> Refusal | None:
    age = now - approved
    expired = [
        (policy, ttl)
        for policy in approvers
        if (ttl := policy.approval_ttl) is not None and age > ttl
    ]
    if not expired:
        return None
    descriptions = "; ".join(
        f"approval expired after {describe_duration(ttl)}"
        f" (policy {policy.name!r} v{policy.version})"
        for policy, ttl in expired
    )
    return Refusal(
        f"{descriptions}: approved at {approved.isoformat()}, {describe_duration(age)} before "
        "dispatch",
        tuple(
            ErrorReason(
                APPROVAL_EXPIRED,
                {
                    **_policy_facts(policy),
                    "constraint": "approval_ttl",
                    "limit": describe_duration(ttl),
                    "value": describe_duration(age),
                    "approve_time": approved.isoformat(),
                },
            )
            for policy, ttl in expired
        ),
    )


def _policy_facts(policy: SafetyPolicy) -> dict[str, str]:
    return {
        "policy_id": str(policy.id),
        "policy_version": str(policy.version),
        "policy_name": policy.name,
    }
