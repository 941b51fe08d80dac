"""The robot link over a real listener, with grpcio robots: hello and welcome, delivery and
acks, resume after a cut, takeover, presence, reports through the transition tables, cancels,
keepalives, drain, credentials and tenancy, and delivery that survives a lost listener."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from roz.v1 import commands_pb2, tasks_pb2
from roz.v1 import robot_link_pb2 as pb

from server.storage.robot_links import RobotLinkRepository
from tests.e2e.conftest import Roz, RozFactory, TestClock
from tests.e2e.test_commands import rest
from tests.e2e.test_robot_keys import new_host, robot_key
from tests.support.robot import Robot

RUNNING = commands_pb2.Command.STATE_RUNNING
COMPLETED = commands_pb2.Command.STATE_COMPLETED


class Fleet:
    """A tenant with hosts and their robot keys, and the operator's REST calls."""

    def __init__(self, roz: Roz, label: str = "fleet") -> None:
        self.roz = roz
        self.key = roz.new_tenant(label)

    def robot(self, environment_id: str = "") -> tuple[str, str]:
        """A new host (in the environment, if one is named) and its robot key."""
        if environment_id:
            body = {"name": f"robot-{uuid.uuid4().hex[:8]}", "environment_id": environment_id}
            host_id = rest(self.roz, self.key, "POST", "/api/v1/hosts", json=body)["id"]
        else:
            host_id = new_host(self.roz, self.key)
        _, secret = robot_key(self.roz, self.key, host_id)
        return host_id, secret

    def environment(self) -> str:
        body = {"name": f"cell-{uuid.uuid4().hex[:8]}"}
        return str(rest(self.roz, self.key, "POST", "/api/v1/environments", json=body)["id"])

    def command(self, host_id: str, type_: str = "wave", **params: Any) -> dict[str, Any]:
        body = {"host_id": host_id, "type": type_, "params": params}
        made: dict[str, Any] = rest(self.roz, self.key, "POST", "/api/v1/commands", json=body)
        return made

    def get(self, path: str) -> Any:
        return rest(self.roz, self.key, "GET", path)

    def host(self, host_id: str) -> dict[str, Any]:
        host: dict[str, Any] = self.get(f"/api/v1/hosts/{host_id}")
        return host

    def history(self, host_id: str) -> list[tuple[str, str]]:
        """(to_status, reason) of the host's status changes, oldest first."""
        changes = self.get(f"/api/v1/hosts/{host_id}/status-changes")["status_changes"]
        return [(c["to_status"], c.get("reason", "")) for c in reversed(changes)]

    def connect(self, secret: str, **kwargs: Any) -> Robot:
        return Robot(self.roz.listener.target, secret, **kwargs)


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time given")
        time.sleep(0.02)


def report(command_id: str, state: int, report_id: str = "", **result: Any) -> dict[str, Any]:
    message = pb.CommandReport(command_id=command_id, state=state, report_id=report_id or "r")
    if result:
        message.result.update(result)
    return {"command_report": message}


@pytest.fixture
def fleet(roz: Roz) -> Fleet:
    return Fleet(roz)


# -- hello, welcome, delivery, acks, reports ------------------------------------------------


def test_a_command_reaches_its_robot_which_runs_it_and_reports_the_result(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        welcome = robot.welcome()
        assert welcome.host_id == host_id  # named by the key, though the hello left it empty
        assert welcome.heartbeat_interval.seconds == 10
        assert welcome.presence_window.seconds == 30
        assert welcome.resume_after_sequence == 0
        uuid.UUID(welcome.link_id)

        made = fleet.command(host_id, "move_to", target={"x": 1, "y": 2, "z": 0})
        delivery = robot.delivery()
        assert delivery.sequence == 1
        assert delivery.command.id == made["id"]
        assert delivery.command.type == "move_to"
        assert delivery.command.state == commands_pb2.Command.STATE_PENDING
        assert delivery.command.params["target"]["x"] == 1
        robot.ack(1)

        robot.send(**report(made["id"], RUNNING, "r1"))
        answer = robot.receive("report_result").report_result
        assert (answer.report_id, answer.applied) == ("r1", True)
        assert answer.command.state == RUNNING

        robot.send(**report(made["id"], COMPLETED, "r2", position={"x": 1, "y": 2}))
        answer = robot.receive("report_result").report_result
        assert answer.applied
        assert answer.command.state == COMPLETED

    seen = fleet.get(f"/api/v1/commands/{made['id']}")
    assert seen["state"] == "STATE_COMPLETED"
    assert seen["result"] == {"position": {"x": 1, "y": 2}}
    assert seen["deliver_time"] <= seen["acknowledge_time"]
    actors = {t["actor"] for t in seen["transitions"][1:]}
    assert len(actors) == 1
    assert actors != {""}


def test_a_replayed_or_late_report_changes_nothing_and_gets_the_current_state(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    made = fleet.command(host_id)
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.delivery()
        for report_id in ("first", "again"):
            robot.send(**report(made["id"], RUNNING, report_id))
        first = robot.receive("report_result").report_result
        again = robot.receive("report_result").report_result
        assert first.applied
        assert not again.applied
        assert again.reason == "already RUNNING"
        assert again.command.state == RUNNING

        rest(
            fleet.roz,
            fleet.key,
            "POST",
            f"/api/v1/commands/{made['id']}/transition",
            json={"state": "STATE_CANCELLED", "reason": "operator"},
        )
        assert robot.delivery().cancellation.command_id == made["id"]
        robot.send(**report(made["id"], COMPLETED, "late"))
        late = robot.receive("report_result").report_result
        assert not late.applied
        assert late.reason == "already CANCELLED"
        assert late.command.state == commands_pb2.Command.STATE_CANCELLED
    history = fleet.get(f"/api/v1/commands/{made['id']}")["transitions"]
    assert [t["to_state"] for t in history] == [
        "STATE_PENDING",
        "STATE_RUNNING",
        "STATE_CANCELLED",
    ]


def test_a_report_the_table_does_not_allow_is_refused_and_the_stream_goes_on(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    made = fleet.command(host_id)
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.delivery()
        robot.send(**report(made["id"], COMPLETED, "skip"))  # PENDING → COMPLETED is not a move
        refused = robot.receive("report_result").report_result
        assert not refused.applied
        assert refused.reason == "cannot go from PENDING to COMPLETED"
        robot.send(**report(made["id"], commands_pb2.Command.STATE_CANCELLED, "cancel"))
        refused = robot.receive("report_result").report_result
        assert "a robot reports COMPLETED, FAILED, RUNNING" in refused.reason
        robot.send(**report(str(uuid.uuid4()), RUNNING, "unknown"))
        unknown = robot.receive("report_result").report_result
        assert (unknown.applied, unknown.reason) == (False, "no such command on this host")
        robot.send(**report(made["id"], RUNNING, "fine"))
        assert robot.receive("report_result").report_result.applied
    assert fleet.get(f"/api/v1/commands/{made['id']}")["state"] == "STATE_RUNNING"


def test_a_task_assigned_to_the_host_is_delivered_when_queued_and_its_report_kept(
    fleet: Fleet,
) -> None:
    environment_id = fleet.environment()
    host_id, secret = fleet.robot(environment_id)
    task = rest(
        fleet.roz,
        fleet.key,
        "POST",
        "/api/v1/tasks",
        json={"prompt": "tidy up", "environment_id": environment_id, "host_id": host_id},
    )
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.nothing_for(0.3)  # PENDING: not yet for the robot
        rest(
            fleet.roz,
            fleet.key,
            "POST",
            f"/api/v1/tasks/{task['id']}/transition",
            json={"state": "STATE_QUEUED"},
        )
        delivery = robot.delivery()
        assert delivery.task.id == task["id"]
        assert delivery.task.state == tasks_pb2.Task.STATE_QUEUED
        for state in (tasks_pb2.Task.STATE_RUNNING, tasks_pb2.Task.STATE_SUCCEEDED):
            message = pb.TaskReport(task_id=task["id"], state=state, report_id=str(state))
            if state == tasks_pb2.Task.STATE_SUCCEEDED:
                message.result.update({"summary": "done"})
            robot.send(task_report=message)
            assert robot.receive("report_result").report_result.applied
    seen = fleet.get(f"/api/v1/tasks/{task['id']}")
    assert seen["state"] == "STATE_SUCCEEDED"
    assert seen["output"] == {"summary": "done"}


def test_cancelling_a_delivered_command_tells_the_robot(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    made = fleet.command(host_id)
    with fleet.connect(secret) as robot:
        robot.welcome()
        assert robot.delivery().command.id == made["id"]
        rest(fleet.roz, fleet.key, "DELETE", f"/api/v1/commands/{made['id']}")
        cancel = robot.delivery()
        assert cancel.sequence == 2
        assert cancel.cancellation.command_id == made["id"]
        assert cancel.cancellation.reason == "CANCELLED: deleted"


def test_a_command_deleted_before_its_robot_connects_arrives_as_a_cancellation(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    gone, kept = fleet.command(host_id), fleet.command(host_id)
    for state in ("STATE_RUNNING", "STATE_COMPLETED"):
        path = f"/api/v1/commands/{gone['id']}/transition"
        rest(fleet.roz, fleet.key, "POST", path, json={"state": state})
    rest(fleet.roz, fleet.key, "DELETE", f"/api/v1/commands/{gone['id']}")
    with fleet.connect(secret) as robot:
        robot.welcome()
        first, second = robot.delivery(), robot.delivery()
        assert first.sequence == 1
        assert first.cancellation.command_id == gone["id"]
        assert first.cancellation.reason == "it no longer exists"
        assert (second.sequence, second.command.id) == (2, kept["id"])


# -- resume, takeover, presence -------------------------------------------------------------


def test_after_a_cut_stream_everything_after_the_robots_last_sequence_is_sent_again(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    ids = [fleet.command(host_id)["id"] for _ in range(3)]
    with fleet.connect(secret) as robot:
        robot.welcome()
        assert [robot.delivery().command.id for _ in ids] == ids
        robot.ack(1)
    # It received 2 (its record says so), though it acknowledged only 1.
    with fleet.connect(secret, last_received=2) as robot:
        assert robot.welcome().resume_after_sequence == 2
        resent = robot.delivery()
        assert (resent.sequence, resent.command.id) == (3, ids[2])
        robot.ack(3)
        eventually(lambda: "acknowledge_time" in fleet.get(f"/api/v1/commands/{ids[2]}"))
    # A robot whose record names a sequence never sent resumes after its last ack.
    with fleet.connect(secret, last_received=99) as robot:
        assert robot.welcome().resume_after_sequence == 3
        robot.nothing_for(0.3)


def test_an_ack_of_something_never_sent_ends_the_stream(fleet: Fleet) -> None:
    _, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.ack(5)
        assert robot.ended() == grpc.StatusCode.INVALID_ARGUMENT
        assert "never sent" in robot.details()


def test_a_second_stream_for_the_host_takes_over_and_the_first_ends_aborted(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    first = fleet.connect(secret)
    first_link = first.welcome().link_id
    with fleet.connect(secret) as second:
        assert second.welcome().link_id != first_link
        assert first.ended() == grpc.StatusCode.ABORTED
        assert "took over" in first.details()
        made = fleet.command(host_id)
        assert second.delivery().command.id == made["id"]
        time.sleep(0.2)
        assert fleet.host(host_id)["status"] == "STATUS_ONLINE"  # the old end did not count
    first.cut()


def test_of_hellos_racing_for_one_host_exactly_the_last_claim_holds_it(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    robots = [fleet.connect(secret) for _ in range(6)]
    try:
        links = fleet.roz.app.robot_links
        eventually(lambda: sum(robot.call.done() for robot in robots) == 5)
        (survivor,) = [robot for robot in robots if not robot.call.done()]
        assert {robot.code() for robot in robots if robot is not survivor} == {
            grpc.StatusCode.ABORTED
        }
        live = links.live(uuid.UUID(host_id))
        assert live is not None
        assert survivor.welcome().link_id == str(live.link_id)
        tenant = live.tenant_id
        repository = RobotLinkRepository(fleet.roz.app.database.pool)
        holder = fleet.roz.listener.call(repository.holder(tenant, uuid.UUID(host_id)))
        assert holder == live.link_id
    finally:
        for robot in robots:
            robot.cut()


def test_presence_follows_the_stream_and_is_recorded_with_its_reason(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    assert fleet.host(host_id)["status"] == "STATUS_OFFLINE"
    with fleet.connect(secret) as robot:
        robot.welcome()
        host = fleet.host(host_id)
        assert host["status"] == "STATUS_ONLINE"
        assert "last_seen_time" in host
        robot.close()
        assert robot.ended() == grpc.StatusCode.OK
    eventually(lambda: fleet.host(host_id)["status"] == "STATUS_OFFLINE")
    assert fleet.history(host_id)[-2:] == [
        ("STATUS_ONLINE", "robot connected"),
        ("STATUS_OFFLINE", "robot disconnected"),
    ]


def test_an_operators_maintenance_status_survives_the_robots_comings_and_goings(
    fleet: Fleet,
) -> None:
    host_id, secret = fleet.robot()
    rest(
        fleet.roz,
        fleet.key,
        "PUT",
        f"/api/v1/hosts/{host_id}/status",
        json={"status": "STATUS_MAINTENANCE", "reason": "new gripper"},
    )
    with fleet.connect(secret) as robot:
        robot.welcome()
        assert fleet.host(host_id)["status"] == "STATUS_MAINTENANCE"
    time.sleep(0.3)
    assert fleet.host(host_id)["status"] == "STATUS_MAINTENANCE"


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_robot_silent_past_the_window_is_cut_and_marked_offline(
    roz_factory: RozFactory,
) -> None:
    ticks = Ticks()
    roz = roz_factory(monotonic=ticks, robot_pulse_seconds=3600)
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        ticks.now += 29  # within the 30 s window
        roz.listener.call(roz.app.robot_links.pulse())
        robot.send(heartbeat=pb.Heartbeat())
        eventually(lambda: roz.app.robot_links.live(uuid.UUID(host_id)).last_heard == ticks.now)  # type: ignore[union-attr]
        ticks.now += 29  # heard at the last tick: still fine
        roz.listener.call(roz.app.robot_links.pulse())
        assert fleet.host(host_id)["status"] == "STATUS_ONLINE"
        ticks.now += 2  # 31 s of silence
        roz.listener.call(roz.app.robot_links.pulse())
        assert robot.ended() == grpc.StatusCode.UNAVAILABLE
        assert "no word from the robot" in robot.details()
    eventually(lambda: fleet.host(host_id)["status"] == "STATUS_OFFLINE")
    assert fleet.history(host_id)[-1] == (
        "STATUS_OFFLINE",
        "robot silent past the presence window",
    )


def test_the_pulse_keeps_the_hosts_last_seen_time_at_the_robots_last_word(
    roz_factory: RozFactory,
) -> None:
    ticks, wall = Ticks(), TestClock()
    roz = roz_factory(monotonic=ticks, clock=wall, robot_pulse_seconds=3600)
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    links = roz.app.robot_links
    with fleet.connect(secret) as robot:
        robot.welcome()
        connected = fleet.host(host_id)["last_seen_time"]
        assert connected == wall().isoformat().replace("+00:00", "Z")
        ticks.now += 8
        wall.advance(8)
        robot.send(heartbeat=pb.Heartbeat())
        eventually(lambda: links.live(uuid.UUID(host_id)).last_heard == ticks.now)  # type: ignore[union-attr]
        heard = wall()
        ticks.now += 3
        wall.advance(3)  # silent since: the pulse keeps the time it was last heard
        roz.listener.call(links.pulse())
        seen = fleet.host(host_id)["last_seen_time"]
        assert seen == heard.isoformat().replace("+00:00", "Z")


# -- credentials and tenancy ----------------------------------------------------------------


def test_a_robot_key_opens_its_own_hosts_link_only(fleet: Fleet) -> None:
    mine, secret = fleet.robot()
    other, _ = fleet.robot()
    with fleet.connect(secret, host_id=other) as robot:
        assert robot.ended() == grpc.StatusCode.PERMISSION_DENIED
    # Nor can it report on another host's command, delivered or not.
    theirs = fleet.command(other)
    with fleet.connect(secret, host_id=mine) as robot:
        assert robot.welcome().host_id == mine
        robot.send(**report(theirs["id"], RUNNING, "theirs"))
        answer = robot.receive("report_result").report_result
        assert (answer.applied, answer.reason) == (False, "no such command on this host")
        assert not answer.HasField("command")
    assert fleet.get(f"/api/v1/commands/{theirs['id']}")["state"] == "STATE_PENDING"


def test_only_robot_keys_open_a_link(fleet: Fleet) -> None:
    with fleet.connect(fleet.key) as operator:
        assert operator.ended() == grpc.StatusCode.PERMISSION_DENIED
    with fleet.connect("roz_sk_not_a_key") as stranger:
        assert stranger.ended() == grpc.StatusCode.UNAUTHENTICATED


def test_another_tenants_robot_never_sees_this_tenants_commands(roz: Roz) -> None:
    ours, theirs = Fleet(roz, "ours"), Fleet(roz, "theirs")
    our_host, _ = ours.robot()
    their_host, their_secret = theirs.robot()
    with ours.connect(their_secret, host_id=our_host) as robot:
        assert robot.ended() == grpc.StatusCode.PERMISSION_DENIED
    made = ours.command(our_host)
    with theirs.connect(their_secret) as robot:
        assert robot.welcome().host_id == their_host
        robot.send(**report(made["id"], RUNNING))
        answer = robot.receive("report_result").report_result
        assert not answer.applied
        assert not answer.HasField("command")
        robot.nothing_for(0.3)


def test_the_first_message_must_be_a_hello(fleet: Fleet) -> None:
    _, secret = fleet.robot()
    with fleet.connect(secret, hello=False) as robot:
        robot.send(heartbeat=pb.Heartbeat())
        assert robot.ended() == grpc.StatusCode.INVALID_ARGUMENT
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.send(hello=pb.Hello())
        assert robot.ended() == grpc.StatusCode.INVALID_ARGUMENT


# -- lifetime -------------------------------------------------------------------------------


def test_an_idle_link_gets_keepalives_and_outlives_the_connection_idle_timeout(
    roz_factory: RozFactory,
) -> None:
    roz = roz_factory(robot_keepalive_seconds=0.3, keep_alive_timeout_seconds=1)
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        started = time.monotonic()
        keepalives = 0
        while time.monotonic() - started < 2.5:
            robot.receive("keepalive", timeout=2)
            keepalives += 1
        assert keepalives >= 5
        made = fleet.command(host_id)
        assert robot.receive("delivery").delivery.command.id == made["id"]


def test_draining_tells_robots_to_go_elsewhere_first(roz_factory: RozFactory) -> None:
    roz = roz_factory()
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        roz.listener.call(roz.app.start_draining())
        drain = robot.receive("drain").drain
        assert drain.reason == "server is shutting down"
        assert drain.reconnect_after.seconds == 1
        assert robot.ended() == grpc.StatusCode.OK
    with fleet.connect(secret) as late:
        assert late.ended() == grpc.StatusCode.UNAVAILABLE
    # Presence is left to the robot's next stream elsewhere, or to the presence sweep.
    assert fleet.host(host_id)["status"] == "STATUS_ONLINE"


def test_telemetry_is_kept_in_memory_as_the_latest_sample(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    links = fleet.roz.app.robot_links
    with fleet.connect(secret) as robot:
        robot.welcome()
        for x in (1, 2, 3):
            state = struct_pb2.Struct()
            state.update({"x": x})
            robot.send(telemetry=pb.Telemetry(state=state))
        eventually(
            lambda: (
                (snapshot := links.telemetry.get(uuid.UUID(host_id))) is not None
                and snapshot.state == {"x": 3}
            )
        )
    eventually(lambda: uuid.UUID(host_id) not in links.telemetry)


# -- the delivery log's safety net -----------------------------------------------------------


def test_delivery_resumes_when_the_listener_connection_is_killed(
    roz_factory: RozFactory,
) -> None:
    roz = roz_factory(robot_pulse_seconds=0.5)
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    listener = roz.app.listener
    with fleet.connect(secret) as robot:
        robot.welcome()
        pid = listener.backend_pid
        assert pid is not None
        kill = "SELECT pg_terminate_backend(%s)"
        roz.listener.call(_owner_execute(roz, kill, pid))
        made = fleet.command(host_id)  # its NOTIFY may reach no one
        assert robot.delivery(timeout=10).command.id == made["id"]
        eventually(lambda: listener.backend_pid not in (None, pid))
        again = fleet.command(host_id)
        assert robot.delivery().command.id == again["id"]


async def _owner_execute(roz: Roz, query: str, *params: Any) -> None:
    from psycopg import AsyncConnection

    async with await AsyncConnection.connect(roz.app.database.owner_dsn, autocommit=True) as conn:
        await conn.execute(query, params)


def test_a_command_that_times_out_while_running_is_cancelled_on_the_robot(
    roz_factory: RozFactory,
) -> None:
    roz = roz_factory(sweep_interval_seconds=0.2)
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    body = {"host_id": host_id, "type": "grip", "timeout": "1s"}
    made = rest(roz, fleet.key, "POST", "/api/v1/commands", json=body)
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.delivery()
        robot.send(**report(made["id"], RUNNING, "start"))
        assert robot.receive("report_result").report_result.applied
        cancel = robot.delivery(timeout=10)
        assert cancel.cancellation.command_id == made["id"]
        assert cancel.cancellation.reason == "TIMED_OUT: no result within its timeout"
        robot.send(**report(made["id"], COMPLETED, "too late"))
        late = robot.receive("report_result").report_result
        assert (late.applied, late.reason) == (False, "already TIMED_OUT")


# -- bounded memory ---------------------------------------------------------------------------


def test_a_robot_that_stops_reading_holds_back_its_own_deliveries_only(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    other_host, other_secret = fleet.robot()
    links = fleet.roz.app.robot_links
    params = {"note": "x" * 16_000}
    with (
        fleet.connect(secret, small_window=True) as robot,
        fleet.connect(other_secret) as other,
    ):
        robot.welcome()
        other.welcome()
        robot.pause()  # reads nothing more
        count = 150
        for _ in range(count):
            fleet.command(host_id, **params)
        time.sleep(1)
        link = links.live(uuid.UUID(host_id))
        assert link is not None
        held_back = link.sent_through
        assert held_back < count  # flow control stopped the server producing
        time.sleep(0.5)
        assert link.sent_through == held_back
        made = fleet.command(other_host)
        assert other.delivery().command.id == made["id"]  # the others are unaffected
        robot.resume()
        sequences = [robot.delivery().sequence for _ in range(count)]
        assert sequences == list(range(1, count + 1))


def test_a_robot_that_floods_without_reading_is_cut_alone(roz_factory: RozFactory) -> None:
    roz = roz_factory(
        max_buffered_bytes_per_call=64 * 1024,
        max_message_bytes=16 * 1024,
        robot_presence_window_seconds=600,  # only the flood may cut anyone, however slow
        rate_limit_rps=100_000.0,
        rate_limit_burst=100_000,
    )
    fleet = Fleet(roz)
    host_id, secret = fleet.robot()
    _, other_secret = fleet.robot()
    made = fleet.command(host_id)
    with (
        fleet.connect(secret, small_window=True) as robot,
        fleet.connect(other_secret) as other,
    ):
        robot.welcome()
        other_host = other.welcome().host_id
        robot.pause()
        # Each report is answered with the whole command; the robot reads none of the answers.
        for n in range(3_000):
            robot.send(**report(made["id"], RUNNING, f"r{n}", note="x" * 4000))
        robot.resume()
        assert robot.ended(timeout=30) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert fleet.command(other_host)["id"] == other.delivery().command.id


def test_a_policys_heartbeat_window_sets_the_links_terms_and_cuts_a_silent_robot(
    roz_factory: RozFactory,
) -> None:
    ticks = Ticks()
    roz = roz_factory(monotonic=ticks, robot_pulse_seconds=3600)
    fleet = Fleet(roz)
    policy = rest(
        roz,
        fleet.key,
        "POST",
        "/api/v1/safety-policies",
        json={"name": f"teleop-{uuid.uuid4().hex[:8]}", "heartbeat_window": "3s"},
    )
    environment_id = fleet.environment()
    rest(
        roz,
        fleet.key,
        "PUT",
        f"/api/v1/environments/{environment_id}",
        params={"update_mask": "safety_policy_ids"},
        json={"safety_policy_ids": [policy["id"]]},
    )
    host_id, secret = fleet.robot(environment_id)
    _, other_secret = fleet.robot()  # no policy: the server's own terms
    with fleet.connect(other_secret) as other:
        assert other.welcome().presence_window.seconds == 30
    with fleet.connect(secret) as robot:
        welcome = robot.welcome()
        assert welcome.presence_window.seconds == 3  # the robot's deadman window too
        assert welcome.heartbeat_interval.ToTimedelta().total_seconds() == 1
        ticks.now += 2.5
        roz.listener.call(roz.app.robot_links.pulse())
        assert fleet.host(host_id)["status"] == "STATUS_ONLINE"
        ticks.now += 1  # 3.5 s of silence: past the policy's window, far inside the server's
        roz.listener.call(roz.app.robot_links.pulse())
        assert robot.ended() == grpc.StatusCode.UNAVAILABLE
    eventually(lambda: fleet.host(host_id)["status"] == "STATUS_OFFLINE")
