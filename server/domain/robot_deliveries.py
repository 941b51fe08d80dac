"""Deliveries to robots: what may be sent down a robot's link, numbered per host, and the rules
of the robot's cumulative acknowledgement."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server.domain.errors import InvalidArgument

# The most deliveries one read returns; a robot further behind is caught up in several reads.
MAX_BATCH = 1000


class DeliveryKind(enum.Enum):
    """What a delivery carries; the value is stored (roz.robot_deliveries.kind)."""

    COMMAND = "command"
    TASK = "task"
    CANCEL_COMMAND = "cancel_command"
    CANCEL_TASK = "cancel_task"
    # An event of an agent session, for the robot's agent (server/storage/sessions.py).
    SESSION_EVENT = "session_event"


# The cancellation that stops a delivered item of each kind.
CANCELLATION_OF: dict[DeliveryKind, DeliveryKind] = {
    DeliveryKind.COMMAND: DeliveryKind.CANCEL_COMMAND,
    DeliveryKind.TASK: DeliveryKind.CANCEL_TASK,
}


@dataclass(frozen=True)
class Delivery:
    """One numbered entry of a host's log; the item itself is loaded by its kind and id."""

    host_id: UUID
    sequence: int
    kind: DeliveryKind
    item_id: UUID
    create_time: datetime
    deliver_time: datetime | None
    acknowledge_time: datetime | None


def check_batch(after_sequence: int, limit: int) -> None:
    if after_sequence < 0:
        raise InvalidArgument("a sequence is never negative")
    if not 1 <= limit <= MAX_BATCH:
        raise InvalidArgument(f"a batch holds 1 to {MAX_BATCH} deliveries")


def check_acknowledgement(sequence: int, last_sequence: int) -> None:
    """A robot can only have received what was numbered for it: 0 up to the host's last."""
    if sequence < 0:
        raise InvalidArgument("a sequence is never negative")
    if sequence > last_sequence:
        raise InvalidArgument(
            f"sequence {sequence} was never sent to this host; the last one is {last_sequence}"
        )
