"""E-stops, free of I/O: the latch of a host or an environment, what stops a host, who has
acknowledged it, and the refusal that new work meets while a host is stopped.

A latch is engaged or clear; each change (an engage, a clear) gets the latch's next epoch, so a
robot's acknowledgement names exactly the change it has seen. A host is stopped while its own
latch or its environment's is engaged. Clearing restores permission, not motion: what the e-stop
failed stays failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument

MAX_REASON_LENGTH = 1024
# The reason every item an e-stop ended carries starts with this.
ESTOP_REASON = "E-STOP"
ENGAGED = "ESTOP_ENGAGED"


class Source(enum.Enum):
    """Who pressed it: an operator through the API, or the robot itself over its link."""

    OPERATOR = "operator"
    ROBOT_BUTTON = "robot_button"
    ROBOT_DEADMAN = "robot_deadman"
    ROBOT_GUARD = "robot_guard"


ROBOT_SOURCES = frozenset({Source.ROBOT_BUTTON, Source.ROBOT_DEADMAN, Source.ROBOT_GUARD})


class TargetKind(enum.Enum):
    HOST = "host"
    ENVIRONMENT = "environment"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    id: UUID

    def __str__(self) -> str:
        return f"{self.kind.value} {self.id}"


@dataclass(frozen=True)
class Latch:
    """One latch as it is now; epoch 0 is one never engaged."""

    engaged: bool = False
    epoch: int = 0
    reason: str = ""
    source: Source = Source.OPERATOR
    actor: UUID | None = None
    change_time: datetime | None = None


NEVER = Latch()


@dataclass(frozen=True)
class Acknowledgement:
    """What one robot has said it has of the latches that cover its host."""

    host_id: UUID
    connected: bool
    host_epoch: int
    environment_id: UUID | None
    environment_epoch: int
    acknowledge_time: datetime | None

    def covers(self, host: Latch, environment_id: UUID | None, environment: Latch) -> bool:
        """Whether the robot has seen the latest change of both latches over it."""
        if self.host_epoch < host.epoch:
            return False
        if environment_id is None or environment.epoch == 0:
            return True
        return self.environment_id == environment_id and self.environment_epoch >= environment.epoch


@dataclass(frozen=True)
class HostStop:
    """A host's e-stop: its own latch, its environment's, and whether its robot has them."""

    host_id: UUID
    host: Latch
    environment_id: UUID | None
    environment: Latch
    acknowledgement: Acknowledgement | None = None

    @property
    def stopped(self) -> bool:
        return self.host.engaged or self.environment.engaged

    @property
    def acknowledged(self) -> bool:
        ack = self.acknowledgement
        return ack is not None and ack.covers(self.host, self.environment_id, self.environment)

    @property
    def epochs(self) -> tuple[int, int]:
        return self.host.epoch, self.environment.epoch

    def why(self) -> str:
        """The reason of the latch that stops the host (its own first)."""
        latch = self.host if self.host.engaged else self.environment
        return latch.reason


@dataclass(frozen=True)
class EnvironmentStop:
    """An environment's latch and, for each of its hosts, whether its robot has it."""

    environment_id: UUID
    latch: Latch
    hosts: tuple[HostStop, ...]


def check_reason(reason: str) -> str:
    """An engage or a clear says why; the reason is recorded with the change and shown to
    operators and robots."""
    problem = ""
    if not reason.strip():
        problem = "reason is required: say why"
    elif len(reason) > MAX_REASON_LENGTH:
        problem = f"reason must be at most {MAX_REASON_LENGTH} characters"
    elif "\x00" in reason:
        problem = "reason must not contain NUL characters"
    if problem:
        raise InvalidArgument(
            "the e-stop request is not valid", [FieldViolation("reason", problem)]
        )
    return reason


def refusal(stop: HostStop, what: str) -> FailedPrecondition:
    """The answer to new work (`what`: "new commands") for a host that is stopped."""
    latch, by = (
        (stop.host, f"host {stop.host_id}")
        if stop.host.engaged
        else (stop.environment, f"environment {stop.environment_id}")
    )
    return FailedPrecondition(
        f"the e-stop of {by} is engaged ({latch.reason}); {what} are refused until it is cleared",
        reason=ENGAGED,
        metadata={
            "host_id": str(stop.host_id),
            "estop": by.split(" ")[0],
            "epoch": str(latch.epoch),
        },
    )


def stopped_reason(latch: Latch) -> str:
    """The reason recorded on what an engage ended: "E-STOP: <the latch's reason>"."""
    return f"{ESTOP_REASON}: {latch.reason}"
