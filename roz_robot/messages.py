"""The robot link's messages as the robot builds and reads them: requests, Structs, timestamps,
durations, and item states spelled as the proto does without its "STATE_" prefix."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from grpc import aio
from roz.v1 import commands_pb2, estop_pb2, robot_link_pb2, tasks_pb2

from roz_robot.record import ItemKind

# What call.read() returns once the server has closed the stream (missing from grpc-stubs).
EOF: object = aio.EOF  # type: ignore[attr-defined]

# The states in which an item is over, per kind.
TERMINAL_STATES: Mapping[ItemKind, frozenset[str]] = {
    ItemKind.COMMAND: frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "REJECTED"}),
    ItemKind.TASK: frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "SAFETY_STOPPED"}),
}
SUCCESS_STATE: Mapping[ItemKind, str] = {ItemKind.COMMAND: "COMPLETED", ItemKind.TASK: "SUCCEEDED"}


def hello(host_id: str, last_received_sequence: int, client: str) -> Any:
    return robot_link_pb2.ConnectRequest(
        hello=robot_link_pb2.Hello(
            host_id=host_id, last_received_sequence=last_received_sequence, client=client
        )
    )


def ack(sequence: int) -> Any:
    return robot_link_pb2.ConnectRequest(ack=robot_link_pb2.Ack(sequence=sequence))


def estop_ack(host_epoch: int, environment_epoch: int) -> Any:
    return robot_link_pb2.ConnectRequest(
        estop_ack=robot_link_pb2.EstopAck(
            host_epoch=host_epoch, environment_epoch=environment_epoch
        )
    )


# The sources a robot may raise an e-stop from, by the name `RobotClient.raise_estop` takes.
ESTOP_SOURCES: Mapping[str, Any] = {
    "button": estop_pb2.EstopLatch.SOURCE_ROBOT_BUTTON,
    "deadman": estop_pb2.EstopLatch.SOURCE_ROBOT_DEADMAN,
    "guard": estop_pb2.EstopLatch.SOURCE_ROBOT_GUARD,
}


def estop_raise(source: str, reason: str) -> Any:
    """KeyError for a source not in ESTOP_SOURCES."""
    return robot_link_pb2.ConnectRequest(
        estop_raise=robot_link_pb2.EstopRaise(source=ESTOP_SOURCES[source], reason=reason)
    )


def heartbeat() -> Any:
    return robot_link_pb2.ConnectRequest(heartbeat=robot_link_pb2.Heartbeat(robot_time=now()))


def telemetry(state: Mapping[str, Any]) -> Any:
    """TypeError or ValueError when `state` is not a JSON object."""
    sample = robot_link_pb2.Telemetry(state=to_struct(state), sample_time=now())
    return robot_link_pb2.ConnectRequest(telemetry=sample)


def report(
    kind: ItemKind,
    item_id: str,
    state: str,
    *,
    reason: str,
    result: Mapping[str, Any],
    report_id: str,
) -> Any:
    """A CommandReport or TaskReport in its ConnectRequest."""
    fields: dict[str, Any] = {
        "state": state_value(kind, state),
        "reason": reason,
        "result": to_struct(result),
        "report_id": report_id,
    }
    if kind is ItemKind.COMMAND:
        return robot_link_pb2.ConnectRequest(
            command_report=robot_link_pb2.CommandReport(command_id=item_id, **fields)
        )
    return robot_link_pb2.ConnectRequest(
        task_report=robot_link_pb2.TaskReport(task_id=item_id, **fields)
    )


def session_update(session_id: str, sequence: int, **event: Any) -> Any:
    """A SessionUpdate in its ConnectRequest; `event` is its one event (`text_delta=…`)."""
    return robot_link_pb2.ConnectRequest(
        session_update=robot_link_pb2.SessionUpdate(
            session_id=session_id, sequence=sequence, **event
        )
    )


def to_struct(mapping: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON-like mapping as a google.protobuf.Struct; TypeError/ValueError if it is not."""
    struct = struct_pb2.Struct()
    struct.update(mapping)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return dict(json_format.MessageToDict(struct))


def state_value(kind: ItemKind, name: str) -> int:
    return int(_state_enum(kind).Value(f"STATE_{name}"))


def state_name(kind: ItemKind, value: int) -> str:
    try:
        return str(_state_enum(kind).Name(value)).removeprefix("STATE_")
    except ValueError:  # a state of a newer server
        return str(value)


def seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def duration(seconds: float) -> duration_pb2.Duration:
    made = duration_pb2.Duration()
    made.FromNanoseconds(round(seconds * 1e9))
    return made


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def _state_enum(kind: ItemKind) -> Any:
    return commands_pb2.Command.State if kind is ItemKind.COMMAND else tasks_pb2.Task.State
