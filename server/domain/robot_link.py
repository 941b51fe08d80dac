"""The robot link's rules, free of I/O: the link's terms, where a reconnecting robot resumes,
what a robot may report and what a report does, and what presence means for a host's status."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

from server.domain.errors import FieldViolation, InvalidArgument, PermissionDenied
from server.domain.estop import MAX_REASON_LENGTH, Source
from server.domain.hosts import HostStatus
from server.domain.sessions import AgentUpdate

State = TypeVar("State", bound=enum.Enum)

# Why a stream ended, as recorded in the host's status history.
CONNECTED = "robot connected"
DISCONNECTED = "robot disconnected"
SILENT = "robot silent past the presence window"
TAKEN_OVER = "robot link taken over by a newer stream"


@dataclass(frozen=True)
class LinkTerms:
    """What the welcome tells the robot, and what the server holds it to."""

    # How often the robot must send something (a heartbeat at least).
    heartbeat_interval: timedelta
    # Silence longer than this and the robot is taken for gone (OFFLINE, stream ended).
    presence_window: timedelta
    # How long the server itself stays quiet before it sends a keepalive.
    keepalive_interval: timedelta
    # How long a new stream has to say hello.
    hello_timeout: timedelta

    def __post_init__(self) -> None:
        if self.presence_window <= self.heartbeat_interval:
            raise ValueError("the presence window must be longer than the heartbeat interval")
        if self.presence_window <= self.keepalive_interval:
            # The robot's own deadman listens for the server within the same window.
            raise ValueError("the presence window must be longer than the keepalive interval")


def held_to(terms: LinkTerms, window: timedelta | None) -> LinkTerms:
    """The terms of a host whose safety policies set a heartbeat window: silence longer than
    `window` either way ends the link (the robot's deadman stops its motion; the server takes
    the robot for gone), and both sides speak at least three times per window."""
    if window is None:
        return terms
    third = window / 3
    return replace(
        terms,
        presence_window=window,
        heartbeat_interval=min(terms.heartbeat_interval, third),
        keepalive_interval=min(terms.keepalive_interval, third),
    )


def check_own_host(named: str, bound: str) -> str:
    """The host a hello names must be the one the key is bound to (empty: that one)."""
    if named and named != bound:
        raise PermissionDenied("a robot key opens the link of its own host only")
    return bound


def resume_after(named: int, last_sequence: int, acknowledged: int) -> int:
    """Where deliveries resume: after what the robot says it received, unless it names a
    sequence the server never numbered (its record is from before the host was re-created, or
    corrupt); then after what it last acknowledged, so nothing it may lack is skipped."""
    if 0 <= named <= last_sequence:
        return named
    return acknowledged


class Verdict(enum.Enum):
    """What a robot's report does."""

    APPLIED = "applied"
    # The item is already in the reported state: a resent report.
    REPLAYED = "replayed"
    # The item has moved on to a final state (done, cancelled, timed out) before the report.
    LATE = "late"
    # Not a move the table allows from the item's state, or not one a robot reports.
    REFUSED = "refused"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""

    @property
    def applies(self) -> bool:
        return self.verdict is Verdict.APPLIED


def judge_report(
    current: State,
    reported: State,
    transitions: Mapping[State, Collection[State]],
    reportable: Collection[State],
) -> Judgement:
    """A robot's report of `reported` on an item in `current`, under the item's one transition
    table: applied only if the table allows the move; otherwise it changes nothing, and the
    robot hears why and the current state."""
    if reported not in reportable:
        names = ", ".join(sorted(state.name for state in reportable))
        return Judgement(Verdict.REFUSED, f"a robot reports {names}, not {reported.name}")
    if reported == current:
        return Judgement(Verdict.REPLAYED, f"already {current.name}")
    if not transitions[current]:
        return Judgement(Verdict.LATE, f"already {current.name}")
    if reported not in transitions[current]:
        return Judgement(Verdict.REFUSED, f"cannot go from {current.name} to {reported.name}")
    return Judgement(Verdict.APPLIED)


def presence_status(current: HostStatus, connected: bool) -> HostStatus | None:
    """The status a host takes when its robot connects or goes; None: unchanged.

    Connecting makes an OFFLINE host ONLINE; going makes an ONLINE or DEGRADED one OFFLINE.
    DEGRADED (a state someone reported) survives a reconnect, and MAINTENANCE (an operator's
    decision) is never changed by presence.
    """
    if connected:
        return HostStatus.ONLINE if current is HostStatus.OFFLINE else None
    if current in (HostStatus.ONLINE, HostStatus.DEGRADED):
        return HostStatus.OFFLINE
    return None


# -- what flows on a link, once decoded --------------------------------------------------------


class ItemKind(enum.Enum):
    COMMAND = "command"
    TASK = "task"


@dataclass(frozen=True)
class Hello:
    host_id: str
    last_received_sequence: int
    client: str


@dataclass(frozen=True)
class Ack:
    sequence: int


@dataclass(frozen=True)
class Report:
    """A robot's report on one of its commands or tasks; `state` is already the item kind's
    state enum, `result` plain JSON."""

    kind: ItemKind
    item_id: str
    state: enum.Enum
    reason: str
    result: Mapping[str, object] | None
    report_id: str


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class Telemetry:
    state: Mapping[str, object]
    sample_time: datetime | None


@dataclass(frozen=True)
class EstopAck:
    """The robot has the e-stop epochs the server last sent it."""

    host_epoch: int
    environment_epoch: int


@dataclass(frozen=True)
class EstopRaise:
    """The robot stopped itself; `source` is one of the robot sources."""

    source: Source
    reason: str


def raised_reason(source: Source, reason: str) -> str:
    """What a robot's own e-stop is recorded with. A robot's stop is never refused for its
    words: an empty or unusable reason becomes a description of the source instead."""
    cleaned = reason.replace("\x00", "").strip()[:MAX_REASON_LENGTH]
    return cleaned or f"raised by the robot ({source.value.replace('_', ' ')})"


def check_estop_ack(ack: EstopAck, sent: tuple[int, int]) -> None:
    """A robot acknowledges only what it was sent: epochs above those name a change it never
    had (a robot's bug, never trusted as an acknowledgement)."""
    if ack.host_epoch > sent[0] or ack.environment_epoch > sent[1]:
        raise InvalidArgument(
            f"the e-stop acknowledgement names epochs {ack.host_epoch}/{ack.environment_epoch}, "
            f"but the last e-stop sent was {sent[0]}/{sent[1]}",
            [FieldViolation("estop_ack", "acknowledge the epochs of the last estop received")],
        )


RobotMessage = Ack | Report | Heartbeat | Telemetry | EstopAck | EstopRaise | AgentUpdate
