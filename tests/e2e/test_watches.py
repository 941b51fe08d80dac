"""Live watches over a real listener: a host's, a command's, a task's and the fleet's, over
native gRPC (grpcio), gRPC-web (frames read as they arrive) and REST (NDJSON, and SSE with
Last-Event-ID), resumed without loss or repeat, each tenant's only, and a watcher that stops
reading."""

from __future__ import annotations

import json
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from roz.v1 import commands_pb2, watch_pb2, watch_pb2_grpc
from roz.v1 import robot_link_pb2 as pb

from server.domain.commands import CommandDraft
from server.services.watches import RING
from server.storage.commands import CommandRepository
from tests.e2e.conftest import Roz
from tests.e2e.test_commands import rest
from tests.e2e.test_estop import clear, engage, tenant_of
from tests.e2e.test_robot_link import Fleet, eventually, report

RUNNING = commands_pb2.Command.STATE_RUNNING
COMPLETED = commands_pb2.Command.STATE_COMPLETED


@pytest.fixture
def fleet(roz: Roz) -> Fleet:
    return Fleet(roz)


def sse(fleet: Any, path: str, last_event_id: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, data) of each server-sent event of a REST watch, as EventSource would read them.
    `fleet` is anything with the caller's `key` and its `roz`."""
    headers = {"authorization": f"Bearer {fleet.key}", "accept": "text/event-stream"}
    if last_event_id:
        headers["last-event-id"] = last_event_id
    with httpx.stream("GET", fleet.roz.url + path, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id, data = "", ""
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                yield event_id, json.loads(data)
                event_id, data = "", ""


def changes_until(events: Iterator[tuple[str, dict[str, Any]]], kind: str) -> list[Any]:
    """The (id, event) pairs read up to and including the first change of `kind`."""
    read = []
    for event_id, event in events:
        read.append((event_id, event))
        if event.get("change", {}).get("kind") == kind:
            return read
    raise AssertionError(f"the stream ended before {kind}")


def grpc_watch(fleet: Fleet, method: str, request: Any) -> Any:
    channel = fleet.roz.channel()
    stub = watch_pb2_grpc.WatchServiceStub(channel)
    metadata = (("authorization", f"Bearer {fleet.key}"),)
    return getattr(stub, method)(request, metadata=metadata, timeout=60), channel


# -- a host ---------------------------------------------------------------------------------


def test_a_host_watch_over_sse_starts_with_a_snapshot_and_resumes_from_last_event_id(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    path = f"/api/v1/hosts/{host_id}/watch"
    read: list[Any] = []
    done = threading.Event()

    def watch() -> None:
        events = sse(fleet, path)
        read.append(next(events))  # the snapshot
        done.set()
        read.extend(changes_until(events, "estop.engaged"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert done.wait(10)
    with fleet.connect(secret) as robot:
        robot.welcome()
        made = fleet.command(host_id)
        robot.delivery()
        engage(fleet, f"/api/v1/hosts/{host_id}", "watch this")
        watcher.join(20)
        # Meanwhile, while nobody watches: the robot acknowledges, an operator clears.
        robot.receive("estop")
        robot.send(estop_ack=pb.EstopAck(host_epoch=1))
        eventually(
            lambda: fleet.get(f"/api/v1/hosts/{host_id}/estop")["acknowledgement"]["acknowledged"]
        )
        clear(fleet, f"/api/v1/hosts/{host_id}")

    snapshot_id, snapshot = read[0]
    assert snapshot["host"]["host"]["id"] == host_id
    assert snapshot["host"]["estop"]["stopped"] is False
    kinds = [event["change"]["kind"] for _, event in read[1:] if "change" in event]
    assert kinds[0] == "robot.connected"
    assert "command.created" in kinds
    assert kinds[-1] == "estop.engaged"
    created = next(e for _, e in read[1:] if e.get("change", {}).get("kind") == "command.created")
    assert created["change"]["subject_id"] == made["id"]
    ids = [int(event_id) for event_id, _ in read]
    assert ids == sorted(ids)
    assert ids[0] == int(snapshot_id)

    # Resumed where it left off: a checkpoint, then everything after, nothing again.
    last_id = read[-1][0]
    checkpoint, *resumed = changes_until(sse(fleet, path, last_id), "estop.cleared")
    assert checkpoint == (last_id, {"sequence": last_id})
    assert all("change" in event for _, event in resumed)
    resumed_kinds = [event["change"]["kind"] for _, event in resumed]
    assert "estop.acknowledged" in resumed_kinds
    assert resumed_kinds[-1] == "estop.cleared"
    assert min(int(event_id) for event_id, _ in resumed) > int(last_id)


def test_a_host_watch_sends_the_robots_telemetry(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        stream, channel = grpc_watch(
            fleet, "WatchHost", watch_pb2.WatchHostRequest(host_id=host_id)
        )
        with channel:
            assert next(stream).HasField("host")
            sample = pb.Telemetry()
            sample.state.update({"battery": 0.5})
            robot.send(telemetry=sample)
            for event in stream:
                if event.HasField("telemetry"):
                    assert event.telemetry.host_id == host_id
                    assert event.telemetry.state["battery"] == 0.5
                    break
            stream.cancel()


# -- a command, a task ----------------------------------------------------------------------


def test_a_command_watch_over_grpc_ends_with_the_command_final(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    made = fleet.command(host_id)
    stream, channel = grpc_watch(
        fleet, "WatchCommand", watch_pb2.WatchCommandRequest(command_id=made["id"])
    )
    with channel, fleet.connect(secret) as robot:
        first = next(stream)
        assert first.command.state == commands_pb2.Command.STATE_PENDING
        robot.welcome()
        robot.delivery()
        robot.send(**report(made["id"], RUNNING, "r1"))
        robot.receive("report_result")
        robot.send(**report(made["id"], COMPLETED, "r2"))
        robot.receive("report_result")
        rest_of = list(stream)  # the stream ends by itself
    kinds = [e.change.kind for e in rest_of if e.HasField("change")]
    assert kinds == ["command.delivered", "command.running", "command.ended"]
    assert rest_of[-1].command.state == COMPLETED
    # Each change is followed by the command as it is, at the change's sequence.
    for change, after in zip(rest_of[::2], rest_of[1::2], strict=True):
        assert change.HasField("change")
        assert after.HasField("command")
        assert after.sequence == change.sequence
    # A finished command's watch: the command, and the end.
    again, channel = grpc_watch(
        fleet, "WatchCommand", watch_pb2.WatchCommandRequest(command_id=made["id"])
    )
    with channel:
        (only,) = list(again)
    assert only.command.state == COMPLETED


def test_a_task_watch_over_ndjson_ends_when_the_task_does(fleet: Fleet) -> None:
    environment_id = fleet.environment()
    task = rest(
        fleet.roz,
        fleet.key,
        "POST",
        "/api/v1/tasks",
        json={"prompt": "x", "environment_id": environment_id},
    )
    lines: list[dict[str, Any]] = []
    started = threading.Event()

    def watch() -> None:
        headers = {"authorization": f"Bearer {fleet.key}"}
        path = f"/api/v1/tasks/{task['id']}/watch"
        with httpx.stream("GET", fleet.roz.url + path, headers=headers, timeout=30) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            for line in response.iter_lines():
                lines.append(json.loads(line))
                started.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert started.wait(10)
    rest(
        fleet.roz,
        fleet.key,
        "POST",
        f"/api/v1/tasks/{task['id']}/transition",
        json={"state": "STATE_CANCELLED", "reason": "not needed"},
    )
    watcher.join(20)
    assert not watcher.is_alive()  # the stream ended by itself
    results = [line["result"] for line in lines]
    assert results[0]["task"]["state"] == "STATE_PENDING"
    assert results[-2]["change"]["kind"] == "task.ended"
    assert results[-1]["task"]["state"] == "STATE_CANCELLED"


# -- the fleet, tenants ---------------------------------------------------------------------


def grpc_web_stream(
    fleet: Any,
    path: str,
    request: Any,
    parse: Callable[[bytes], Any] = watch_pb2.WatchEvent.FromString,
) -> Iterator[Any]:
    """A server stream over gRPC-web as a browser reads it: each message as its frame arrives.
    (sonora's client reads in 16 KiB blocks, so a live stream's messages wait for more.)
    `fleet` is anything with the caller's `key` and its `roz`."""
    payload = request.SerializeToString()
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "authorization": f"Bearer {fleet.key}",
    }
    body = struct.pack(">BI", 0, len(payload)) + payload
    with httpx.stream(
        "POST", fleet.roz.url + path, content=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        buffer = b""
        for chunk in response.iter_raw():
            buffer += chunk
            while len(buffer) >= 5:
                flags, length = struct.unpack(">BI", buffer[:5])
                if len(buffer) < 5 + length:
                    break
                frame, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if flags & 0x80:  # the trailers: the end
                    return
                yield parse(frame)


def test_the_fleet_watch_over_grpc_web_sees_every_host_and_only_its_tenant(fleet: Fleet) -> None:
    first, first_secret = fleet.robot()
    second, _ = fleet.robot()
    other = Fleet(fleet.roz, "other")
    other_host, _ = other.robot()
    events = grpc_web_stream(
        fleet, "/roz.v1.WatchService/WatchFleet", watch_pb2.WatchFleetRequest()
    )
    snapshot = [next(events), next(events)]
    assert sorted(e.host.host.id for e in snapshot) == sorted([first, second])
    engage(other, f"/api/v1/hosts/{other_host}", "not yours")
    with fleet.connect(first_secret) as robot:
        robot.welcome()
        engage(fleet, f"/api/v1/hosts/{second}", "yours")
        seen = []
        for event in events:
            seen.append((event.change.kind, event.change.host_id))
            if event.change.kind == "estop.engaged":
                break
    events.close()
    assert seen == [("robot.connected", first), ("estop.engaged", second)]


def test_another_tenants_host_command_or_task_cannot_be_watched(fleet: Fleet) -> None:
    host_id, _ = fleet.robot()
    made = fleet.command(host_id)
    other = Fleet(fleet.roz, "other")
    headers = {"authorization": f"Bearer {other.key}"}
    for path in (f"/api/v1/hosts/{host_id}/watch", f"/api/v1/commands/{made['id']}/watch"):
        response = httpx.get(fleet.roz.url + path, headers=headers, timeout=10)
        assert response.status_code == 404, path
    bad = httpx.get(
        fleet.roz.url + f"/api/v1/hosts/{host_id}/watch",
        headers={"authorization": f"Bearer {fleet.key}", "last-event-id": "yesterday"},
        timeout=10,
    )
    assert bad.status_code == 400


# -- a watcher that stops reading -----------------------------------------------------------


async def create_many(roz: Roz, tenant: uuid.UUID, host_id: str, count: int) -> list[str]:
    commands = CommandRepository(roz.app.database.pool)
    made = []
    for _ in range(count):
        draft = CommandDraft(host_id=host_id, type="wave", params={})
        made.append(str((await commands.create(tenant, draft, actor=None)).id))
    return made


def test_a_watcher_that_stops_reading_holds_nothing_and_resumes_without_loss(
    fleet: Fleet,
) -> None:
    host_id, _ = fleet.robot()
    roz = fleet.roz
    tenant = tenant_of(fleet, host_id)
    stream, channel = grpc_watch(fleet, "WatchHost", watch_pb2.WatchHostRequest(host_id=host_id))
    with channel:
        snapshot = next(stream)  # then it reads nothing while the trail grows
        made = roz.listener.call(create_many(roz, tenant, host_id, RING + 200), timeout=120)
        assert roz.app.audit_tail.buffered(tenant) <= RING
        stream.cancel()
    # Resumed from the snapshot's sequence: every change since, once, in order.
    resumed, channel = grpc_watch(
        fleet,
        "WatchHost",
        watch_pb2.WatchHostRequest(host_id=host_id, after_sequence=snapshot.sequence),
    )
    with channel:
        checkpoint = next(resumed)
        assert checkpoint.sequence == snapshot.sequence
        assert checkpoint.WhichOneof("event") is None
        created: list[str] = []
        sequences: list[int] = []
        for event in resumed:
            sequences.append(event.sequence)
            created.append(event.change.subject_id)
            if len(created) == len(made):
                resumed.cancel()
                break
    assert created == made
    assert sequences == sorted(set(sequences))


def test_a_quiet_watch_sends_checkpoints(fleet: Fleet) -> None:
    host_id, _ = fleet.robot()
    fleet.roz.app.watches.checkpoint_seconds = 0.3
    try:
        stream, channel = grpc_watch(
            fleet, "WatchHost", watch_pb2.WatchHostRequest(host_id=host_id)
        )
        with channel:
            snapshot = next(stream)
            quiet = [next(stream), next(stream)]
            stream.cancel()
    finally:
        fleet.roz.app.watches.checkpoint_seconds = 15.0
    assert [e.WhichOneof("event") for e in quiet] == [None, None]
    assert [e.sequence for e in quiet] == [snapshot.sequence] * 2
