"""The robot client against a scripted server (tests/robot/scripted.py): the hello, running
and reporting, reports that outlive a link, resends, cancellations, restarts, drains,
takeovers, refusals, silence, and telemetry, each exactly as it goes over the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from roz.v1 import commands_pb2, robot_link_pb2, tasks_pb2

from roz_robot import LinkRefused, Outcome, Progress, RobotClient
from roz_robot.backoff import Backoff
from roz_robot.client import INTERRUPTED_BY_RESTART, INTERRUPTED_BY_STOP
from roz_robot.messages import from_struct
from roz_robot.record import ItemKind, Record
from tests.robot.scripted import (
    HOST,
    OTHER_HOST,
    ScriptedLink,
    command,
    duration,
    linked,
    scenario,
    task,
    until,
)
from tests.support.server import free_port

KEY = "roz_sk_" + "k" * 43
RUNNING = commands_pb2.Command.STATE_RUNNING
COMPLETED = commands_pb2.Command.STATE_COMPLETED
FAILED = commands_pb2.Command.STATE_FAILED
CANCELLED = commands_pb2.Command.STATE_CANCELLED


class Robot:
    """A RobotClient whose handlers the test controls: they record each call, wait for
    `release` while `hold` is set, then return `outcome` (or raise `error`)."""

    def __init__(self, target: str, state_dir: Path, *, host_id: str = "") -> None:
        self.calls: list[str] = []
        self.stops: list[str] = []
        self.cancelled: list[str] = []
        self.hold = False
        self.release = asyncio.Event()
        self.outcome = Outcome(ok=True, result={"done": True})
        self.error: Exception | None = None
        self.client = RobotClient(
            target,
            KEY,
            state_dir=state_dir,
            host_id=host_id,
            on_command=self.handle,
            on_task=self.handle,
            on_stop=self.stops.append,
            backoff=Backoff(base=0.01, cap=0.05),
        )

    async def handle(self, item: Any, progress: Progress) -> Outcome:
        self.calls.append(item.id)
        try:
            if self.hold:
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(item.id)
            raise
        if self.error is not None:
            raise self.error
        return self.outcome


@asynccontextmanager
async def running(robot: Robot) -> AsyncIterator[asyncio.Task[None]]:
    """The client's run() as a task; stopped when the block ends (if it still runs)."""
    run = asyncio.create_task(robot.client.run())
    try:
        yield run
    finally:
        await asyncio.wait_for(robot.client.stop(), 10)
        if run.done() and not run.cancelled():
            run.exception()  # retrieved: a test that expected it has checked it


# -- the hello and the welcome ---------------------------------------------------------------


def test_the_hello_names_the_key_no_host_and_nothing_received(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            stream = await server.next_stream()
            assert stream.metadata["authorization"] == f"Bearer {KEY}"
            hello = await stream.expect("hello")
            assert (hello.host_id, hello.last_received_sequence) == ("", 0)
            assert hello.client.startswith("roz-robot/")
            assert not robot.client.connected
            stream.welcome(link_id="L1", heartbeat=5, presence=20)
            terms = await robot.client.wait_linked()
            assert (terms.host_id, terms.link_id, terms.heartbeat_interval) == (HOST, "L1", 5.0)
            assert (terms.presence_window, terms.resume_after_sequence) == (20.0, 0)
            assert robot.client.host_id == HOST
            assert robot.client.connected

    scenario(test)


def test_heartbeats_go_out_every_interval(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            stream, _ = await linked(server, heartbeat=0.05)
            loop = asyncio.get_running_loop()
            start = loop.time()
            beats = [await stream.expect("heartbeat") for _ in range(3)]
            assert loop.time() - start >= 0.1
            assert all(beat.robot_time.seconds > 0 for beat in beats)

    scenario(test)


# -- running and reporting -----------------------------------------------------------------


def test_a_command_is_acknowledged_run_and_reported_running_then_completed(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.outcome = Outcome(ok=True, result={"position": {"x": 1.5}})
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1"))
            assert (await stream.expect("ack")).sequence == 1
            started = await stream.expect("command_report")
            assert (started.command_id, started.state) == ("c1", RUNNING)
            stream.answer(started, state=RUNNING)
            done = await stream.expect("command_report")
            assert (done.command_id, done.state, done.reason) == ("c1", COMPLETED, "")
            assert from_struct(done.result) == {"position": {"x": 1.5}}
            assert done.report_id != started.report_id
            stream.answer(done, state=COMPLETED)
            assert robot.calls == ["c1"]
            assert list(robot.client.stats.executed_ids) == ["c1"]

    scenario(test)


def test_a_task_is_reported_running_then_succeeded(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, task=task("t1"))
            started = await stream.expect("task_report")
            assert (started.task_id, started.state) == ("t1", tasks_pb2.Task.STATE_RUNNING)
            done = await stream.expect("task_report")
            assert done.state == tasks_pb2.Task.STATE_SUCCEEDED
            assert from_struct(done.result) == {"done": True}

    scenario(test)


def test_a_handler_that_raises_fails_the_command_with_the_exception_text(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.error = RuntimeError("gripper jammed")
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1"))
            await stream.expect("command_report")
            failed = await stream.expect("command_report")
            assert (failed.state, failed.reason) == (FAILED, "gripper jammed")

    scenario(test)


def test_a_result_that_is_not_json_fails_the_command(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.outcome = Outcome(ok=True, result={"when": object()})
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1"))
            await stream.expect("command_report")
            failed = await stream.expect("command_report")
            assert failed.state == FAILED
            assert failed.reason.startswith("the handler's result is not JSON")

    scenario(test)


def test_a_robot_without_a_task_handler_fails_tasks(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        client = RobotClient(server.target, KEY, state_dir=tmp_path)
        run = asyncio.create_task(client.run())
        stream, _ = await linked(server)
        stream.deliver(1, task=task("t1"))
        await stream.expect("task_report")
        failed = await stream.expect("task_report")
        assert (failed.state, failed.reason) == (
            tasks_pb2.Task.STATE_FAILED,
            "this robot runs no tasks",
        )
        await client.stop()
        await run

    scenario(test)


def test_unanswered_reports_are_sent_again_on_the_next_link_in_order(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            first, _ = await linked(server)
            first.deliver(1, command=command("c1"))
            started = await first.expect("command_report")
            done = await first.expect("command_report")
            first.end(grpc.StatusCode.UNAVAILABLE, "the proxy restarted")

            second, hello = await linked(server)
            assert hello.last_received_sequence == 1
            again = [await second.expect("command_report") for _ in range(2)]
            assert [(r.report_id, r.state) for r in again] == [
                (started.report_id, RUNNING),
                (done.report_id, COMPLETED),
            ]
            # Answered (a replay answers applied=false): not sent a third time.
            second.answer(again[0], applied=False, reason="already RUNNING", state=COMPLETED)
            second.answer(again[1], applied=False, reason="already COMPLETED", state=COMPLETED)
            await until(lambda: not robot.client._unanswered)
            second.end(grpc.StatusCode.UNAVAILABLE)
            third, _ = await linked(server)
            await third.nothing_but_chatter(0.3)
            assert robot.calls == ["c1"]

    scenario(test)


# -- once in effect ------------------------------------------------------------------------


def test_a_delivery_again_while_running_is_acknowledged_and_ignored(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.hold = True
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1"))
            await stream.expect("command_report")
            stream.deliver(2, command=command("c1"))
            assert (await stream.expect("ack")).sequence == 2
            assert robot.client.stats.duplicates_ignored == 1
            robot.release.set()
            done = await stream.expect("command_report")
            assert done.state == COMPLETED
            await stream.nothing_but_chatter(0.2)
            assert robot.calls == ["c1"]

    scenario(test)


def test_a_finished_command_delivered_again_is_answered_from_the_record(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.outcome = Outcome(ok=True, result={"distance": 2.0})
        async with running(robot):
            first, _ = await linked(server)
            first.deliver(1, command=command("c1"))
            first.answer(await first.expect("command_report"), state=RUNNING)
            first.answer(await first.expect("command_report"), state=COMPLETED)
            await until(lambda: not robot.client._unanswered)
            first.end(grpc.StatusCode.UNAVAILABLE)

            # This server lost track: it resumes after 0, below the 1 the robot names.
            second, hello = await linked(server, resume_after=0)
            assert hello.last_received_sequence == 1
            second.deliver(1, command=command("c1"))
            again = await second.expect("command_report")  # only the outcome: it was answered
            assert (await second.expect("ack")).sequence == 1
            assert (again.command_id, again.state) == ("c1", COMPLETED)
            assert from_struct(again.result) == {"distance": 2.0}
            assert robot.calls == ["c1"]
            assert robot.client.stats.resent_from_record == 1

        # The rewind was recorded: the next hello names what the server said.
        record = Record.open(tmp_path)
        try:
            assert record.last_sequence(HOST) == 1
        finally:
            record.close()

    scenario(test)


def test_an_item_that_ended_before_it_arrived_is_not_run(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1", state=CANCELLED))
            assert (await stream.expect("ack")).sequence == 1
            await stream.nothing_but_chatter(0.2)
            stream.deliver(2, command=command("c1"))  # and stays that way
            assert (await stream.expect("ack")).sequence == 2
            await stream.nothing_but_chatter(0.2)
            assert robot.calls == []

    scenario(test)


# -- stopping ------------------------------------------------------------------------------


def test_a_cancellation_stops_the_handler_and_motion_and_reports_nothing(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.hold = True
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1"))
            stream.answer(await stream.expect("command_report"), state=RUNNING)
            cancel = robot_link_pb2.Cancellation(command_id="c1", reason="operator")
            stream.deliver(2, cancellation=cancel)
            assert (await stream.expect("ack")).sequence == 2
            await until(lambda: robot.stops == ["command c1 cancelled: operator"])
            assert robot.cancelled == ["c1"]
            assert robot.client.stats.cancelled == 1
            await stream.nothing_but_chatter(0.2)
            # Delivered again (with its cancellation): not run again.
            stream.deliver(1, command=command("c1"))
            stream.deliver(2, cancellation=cancel)
            assert (await stream.expect("ack")).sequence <= 2
            await stream.nothing_but_chatter(0.2)
            assert robot.calls == ["c1"]
            assert robot.stops == ["command c1 cancelled: operator"]

    scenario(test)


def test_an_item_the_server_ended_meanwhile_is_stopped(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.hold = True
        async with running(robot):
            stream, _ = await linked(server)
            stream.deliver(1, command=command("c1"))
            started = await stream.expect("command_report")
            stream.answer(started, applied=False, reason="already TIMED_OUT", state=7)
            await until(lambda: robot.cancelled == ["c1"])
            assert robot.stops == ["command c1 is TIMED_OUT"]
            await stream.nothing_but_chatter(0.2)

    scenario(test)


def test_stopping_the_client_fails_what_runs_and_waits_for_the_answer(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        robot.hold = True
        run = asyncio.create_task(robot.client.run())
        stream, _ = await linked(server)
        stream.deliver(1, command=command("c1"))
        started = await stream.expect("command_report")  # not answered yet when it stops
        stopping = asyncio.create_task(robot.client.stop())
        failed = await stream.expect("command_report")
        assert (failed.state, failed.reason) == (FAILED, INTERRUPTED_BY_STOP)
        assert robot.stops == [INTERRUPTED_BY_STOP]
        assert robot.cancelled == ["c1"]
        stream.answer(started, state=RUNNING)
        stream.answer(failed, state=FAILED)
        await asyncio.wait_for(stopping, 1.5)  # well before the flush's own limit
        await run
        assert await stream.closed_by_robot.wait()

    scenario(test)


def test_a_restarted_robot_reports_what_it_was_interrupted_in(tmp_path: Path) -> None:
    # What a crash leaves behind: an item received and never finished.
    record = Record.open(tmp_path)
    record.receive(HOST, 4, ItemKind.COMMAND, "c4")
    record.close()

    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path, host_id=HOST)
        async with running(robot):
            stream, hello = await linked(server, resume_after=4)
            assert (hello.host_id, hello.last_received_sequence) == (HOST, 4)
            running_again = await stream.expect("command_report")
            failed = await stream.expect("command_report")
            assert (running_again.command_id, running_again.state) == ("c4", RUNNING)
            assert (failed.command_id, failed.state) == ("c4", FAILED)
            assert failed.reason == INTERRUPTED_BY_RESTART
            assert robot.calls == []

    scenario(test)


# -- how links end -------------------------------------------------------------------------


def test_a_drain_stops_motion_once_and_reconnects_after_the_wait_it_names(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            stream, _ = await linked(server)
            loop = asyncio.get_running_loop()
            drained_at = loop.time()
            stream.send(drain=robot_link_pb2.Drain(reason="deploy", reconnect_after=duration(0.3)))
            stream.end()
            _, hello = await linked(server)
            assert loop.time() - drained_at >= 0.3
            assert robot.stops == ["link lost: the server is draining"]
            assert hello.last_received_sequence == 0

    scenario(test)


def test_a_takeover_is_not_fatal_and_the_robot_comes_back(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot) as run:
            stream, _ = await linked(server)
            stream.end(grpc.StatusCode.ABORTED, "another stream for this host took over")
            await linked(server)
            await robot.client.wait_linked(after=1)
            assert not run.done()
            assert robot.stops == ["link lost: ABORTED: another stream for this host took over"]

    scenario(test)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_a_refusal_of_the_hello_is_raised_to_the_caller(
    tmp_path: Path, code: grpc.StatusCode
) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        run = asyncio.create_task(robot.client.run())
        stream = await server.next_stream()
        await stream.expect("hello")
        stream.end(code, "no")
        with pytest.raises(LinkRefused) as refused:
            await run
        assert (refused.value.code, refused.value.details) == (code, "no")
        assert robot.stops == []

    scenario(test)


def test_unavailable_before_a_welcome_is_retried(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot) as run:
            for _ in range(3):
                stream = await server.next_stream()
                await stream.expect("hello")
                stream.end(grpc.StatusCode.UNAVAILABLE, "shutting down")
            await linked(server)
            await robot.client.wait_linked()
            assert not run.done()

    scenario(test)


def test_a_silent_server_trips_the_deadman_once_and_the_robot_reconnects(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            loop = asyncio.get_running_loop()
            await linked(server, presence=0.3)
            welcomed_at = loop.time()
            await linked(server)  # the robot gave up on the silent one and came back
            assert loop.time() - welcomed_at >= 0.3
            assert robot.stops == [
                "link lost: nothing arrived from the server within the presence window"
            ]

    scenario(test)


def test_a_robot_whose_key_moved_to_another_host_names_that_hosts_sequence(
    tmp_path: Path,
) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        async with running(robot):
            first, _ = await linked(server, host_id=HOST)
            first.deliver(5, command=command("c5"))
            assert (await first.expect("ack")).sequence == 5
            first.end(grpc.StatusCode.UNAVAILABLE)
            _, hello = await linked(server, host_id=OTHER_HOST, resume_after=5)
            assert hello.last_received_sequence == 5  # what it knew of HOST
            # The welcome named another host: the robot comes back naming that host's place.
            _, hello = await linked(server, host_id=OTHER_HOST)
            assert hello.last_received_sequence == 0
            await robot.client.wait_linked()
            assert robot.client.host_id == OTHER_HOST
            assert robot.client.stats.links == 2  # the second stream never counted as linked

    scenario(test)


# -- telemetry and no server at all --------------------------------------------------------


def test_telemetry_published_while_unlinked_sends_only_the_latest(tmp_path: Path) -> None:
    async def test(server: ScriptedLink) -> None:
        robot = Robot(server.target, tmp_path)
        await robot.client.publish({"battery": 0.9})
        await robot.client.publish({"battery": 0.8, "position": {"x": 1}})
        async with running(robot):
            stream, _ = await linked(server)
            sample = await stream.expect("telemetry")
            assert from_struct(sample.state) == {"battery": 0.8, "position": {"x": 1}}
            assert sample.sample_time.seconds > 0
            await robot.client.publish({"battery": 0.7})
            assert from_struct((await stream.expect("telemetry")).state) == {"battery": 0.7}

    scenario(test)


def test_with_no_server_the_robot_keeps_trying_until_stopped(tmp_path: Path) -> None:
    async def main() -> None:
        robot = Robot(f"127.0.0.1:{free_port()}", tmp_path)
        run = asyncio.create_task(robot.client.run())
        await until(lambda: robot.client._backoff.failures >= 3)
        assert not robot.client.connected
        assert not run.done()
        await asyncio.wait_for(robot.client.stop(), 5)
        await run
        assert robot.stops == []

    asyncio.run(main())
