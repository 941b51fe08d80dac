"""A RobotLinkService on grpc.aio's own server whose every stream the test scripts: it sees
exactly what the robot sends and says exactly what the server would, including the things a
real server does rarely or only when broken (a takeover, a drain, silence, a refusal, an
update refused as out of order).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from roz.v1 import commands_pb2, robot_link_pb2, robot_link_pb2_grpc, sessions_pb2, tasks_pb2

HOST = "4f0c2a9e-5d61-4c47-9b1a-0000000000a1"
OTHER_HOST = "4f0c2a9e-5d61-4c47-9b1a-0000000000b2"
SESSION = "7d2e4b10-8c3f-4e5a-a1b2-0000000000c1"
OTHER_SESSION = "7d2e4b10-8c3f-4e5a-a1b2-0000000000c2"
# What the robot sends that a test usually does not wait for.
CHATTER = frozenset({"heartbeat", "telemetry", "ack"})
WAIT = 10.0


@dataclass(frozen=True)
class _End:
    code: grpc.StatusCode | None
    details: str


class ScriptedStream:
    """One robot stream, as the server sees it."""

    def __init__(self, context: Any) -> None:
        self.metadata = dict(context.invocation_metadata())
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self.closed_by_robot = asyncio.Event()

    # -- what the server says -----------------------------------------------------------------

    def send(self, **message: Any) -> None:
        self.outgoing.put_nowait(robot_link_pb2.ConnectResponse(**message))

    def welcome(
        self,
        host_id: str = HOST,
        *,
        resume_after: int = 0,
        heartbeat: float = 10.0,
        presence: float = 30.0,
        link_id: str = "link-1",
    ) -> None:
        self.send(
            welcome=robot_link_pb2.Welcome(
                host_id=host_id,
                heartbeat_interval=duration(heartbeat),
                presence_window=duration(presence),
                resume_after_sequence=resume_after,
                link_id=link_id,
            )
        )

    def deliver(self, sequence: int, **item: Any) -> None:
        self.send(delivery=robot_link_pb2.Delivery(sequence=sequence, **item))

    def answer(self, report: Any, *, applied: bool = True, reason: str = "", state: int) -> None:
        """Answers a CommandReport or TaskReport with the item now in `state`."""
        result = robot_link_pb2.ReportResult(
            report_id=report.report_id, applied=applied, reason=reason
        )
        if hasattr(report, "command_id"):
            result.command.CopyFrom(commands_pb2.Command(id=report.command_id, state=state))
        else:
            result.task.CopyFrom(tasks_pb2.Task(id=report.task_id, state=state))
        self.send(report_result=result)

    def deliver_event(self, sequence: int, event: Any) -> None:
        """Delivers a SessionEvent (see `session_event()`) as delivery `sequence`."""
        self.deliver(sequence, session_event=event)

    def answer_update(self, update: Any, *, accepted: bool = True, reason: str = "") -> None:
        """Answers a SessionUpdate (and with it every earlier one of its session)."""
        self.send(
            session_ack=robot_link_pb2.SessionAck(
                session_id=update.session_id,
                sequence=update.sequence,
                accepted=accepted,
                reason=reason,
            )
        )

    def end(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        """Ends the stream: with a status, or cleanly (None)."""
        self.outgoing.put_nowait(_End(code, details))

    # -- what the robot says ------------------------------------------------------------------

    async def expect(self, *kinds: str, seconds: float = WAIT) -> Any:
        """The next message of one of `kinds` (the content of its oneof), skipping chatter
        (heartbeats, telemetry, acks) unless it is asked for; anything else fails."""
        while True:
            request = await asyncio.wait_for(self.received.get(), seconds)
            which = request.WhichOneof("message")
            if which in CHATTER and which not in kinds:
                continue
            assert which in kinds, f"expected {kinds}, got {which}: {request}"
            return getattr(request, which)

    async def nothing_but_chatter(self, seconds: float) -> None:
        """Asserts that the robot says nothing else for `seconds`."""
        try:
            request = await self.expect("__nothing__", seconds=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected: {request}")


class ScriptedLink(robot_link_pb2_grpc.RobotLinkServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.streams: asyncio.Queue[ScriptedStream] = asyncio.Queue()
        self.target = ""

    async def next_stream(self, seconds: float = WAIT) -> ScriptedStream:
        return await asyncio.wait_for(self.streams.get(), seconds)

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        stream = ScriptedStream(context)
        pump = asyncio.create_task(_pump(request_iterator, stream))
        self.streams.put_nowait(stream)
        try:
            while True:
                message = await stream.outgoing.get()
                if isinstance(message, _End):
                    if message.code is not None:
                        await context.abort(message.code, message.details)
                    return
                yield message
        finally:
            pump.cancel()


async def _pump(requests: Any, stream: ScriptedStream) -> None:
    try:
        async for request in requests:
            stream.received.put_nowait(request)
    finally:
        stream.closed_by_robot.set()


@asynccontextmanager
async def scripted_server() -> AsyncIterator[ScriptedLink]:
    """A grpc.aio server on an ephemeral port, in the running loop."""
    server = grpc.aio.server()
    link = ScriptedLink()
    robot_link_pb2_grpc.add_RobotLinkServiceServicer_to_server(link, server)
    port = server.add_insecure_port("127.0.0.1:0")
    link.target = f"127.0.0.1:{port}"
    await server.start()
    try:
        yield link
    finally:
        await server.stop(0)


async def linked(server: ScriptedLink, **welcome: Any) -> tuple[ScriptedStream, Any]:
    """The next stream, its hello, welcomed."""
    stream = await server.next_stream()
    hello = await stream.expect("hello")
    stream.welcome(**welcome)
    return stream, hello


def scenario(test: Callable[[ScriptedLink], Awaitable[None]]) -> None:
    async def main() -> None:
        async with scripted_server() as server:
            await asyncio.wait_for(test(server), 30)

    asyncio.run(main())


async def until(check: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110  (state of the client under test, polled)
            await asyncio.sleep(0.01)


def duration(seconds: float) -> duration_pb2.Duration:
    made = duration_pb2.Duration()
    made.FromNanoseconds(round(seconds * 1e9))
    return made


def command(command_id: str = "c1", type_: str = "wave", state: int | None = None) -> Any:
    return commands_pb2.Command(
        id=command_id,
        host_id=HOST,
        type=type_,
        state=commands_pb2.Command.STATE_PENDING if state is None else state,
    )


def task(task_id: str = "t1") -> Any:
    return tasks_pb2.Task(
        id=task_id, host_id=HOST, prompt="tidy", state=tasks_pb2.Task.STATE_QUEUED
    )


def session_event(sequence: int, *, session_id: str = SESSION, turn: int = 0, **event: Any) -> Any:
    """Event `sequence` of a session, with its one event given as a keyword (`user_message=…`)."""
    (kind,) = event
    return sessions_pb2.SessionEvent(
        id=f"{session_id}/{sequence}",
        session_id=session_id,
        sequence=sequence,
        type=kind,
        turn=turn,
        **event,
    )
