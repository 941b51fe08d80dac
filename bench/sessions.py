"""Agent sessions: the relay latency operator → robot's agent → operator, BENCH_SESSIONS (100)
sessions at once. `python -m bench.sessions` runs it alone and prints its report; `make bench`
runs it after triggers and prints the same section.

It runs as bench/robots.py does, and with its parts: an embedded PostgreSQL of its own, a fresh
database, two `roz-server serve` processes with the production settings but a rate limit that
never interferes, WARNING logs and no drain delay. Up to TENANTS tenants are made as `roz-server
admin create-tenant` makes them; each tenant's hosts (in an environment of their own) and their
robot keys through the repositories over the owner connection, as bench/robots.py makes its
fleet.

Every host has a robot on a native gRPC Connect stream to process A that acts as the agent: it
acks every delivery, and on a delivered `user_message` at once sends a `text_delta` echoing the
message's content, then a `turn_finished` (its updates numbered per session from 1), and reads
their `session_ack`s. Every host has an operator (the tenant's admin key) holding one
StreamSession on it. Each robot and each operator is a grpcio asyncio client on a connection of
its own, all in this process. After WARMUP_TURNS untimed turns in every session, three loads in
turn, each message sent after the previous turn's `turn_finished` and a pause drawn uniformly
from 0 to twice the load's mean:
- paced: every session, BENCH_SESSION_MESSAGES (20) messages each, BENCH_SESSION_PAUSE_MS
  (2000) mean pause: a hundred people each talking to a robot, the server far from saturated.
  The goal is on this one: p99 of the relay <= 20 ms.
- back to back: every session, the same number of messages, no pause: the turns a second the
  server sustains, the latency then mostly queueing.
- one session alone: ALONE_MESSAGES, ALONE_PAUSE_MS mean pause: the latency with nothing else
  going on.
The relay latency is from just before the user message is written to the operator's read of
the `text_delta` that echoes it (operator → server → agent → server → operator); the first leg,
to the agent's read of its delivery. One clock: time.perf_counter in this process. The CPU each
process and PostgreSQL used, per turn.

What the server adds: the same clients drive the same loads the same way against a trivial
relay in a process of its own (`python -m bench.sessions relay`): a grpc.aio server with the two
methods over in-memory queues, no database and no checks, each event sent on at once. Its
figures stand beside roz's, and roz's minus its are what the server adds. Then the same loads
with the operators on process B, the robots still on A (the events cross through NOTIFY), for
reference.

Every load is checked: each message echoed by exactly one `text_delta` with its content, no
message refused; and once a placement's loads are done, every session update accepted and each
session ended by its operator (cancel_session, `session_completed` read), its log (GET
/api/v1/sessions/{id}) ENDED with one turn per message and EVENTS_PER_TURN events per turn
between session_started and session_completed.

py-spy (.venv/bin/py-spy or on PATH) samples process A while the paced load runs there, without
stopping it; the profile is printed when the goal is missed. BENCH_SESSIONS=0 skips it all.
Exits 1 only when something broke: a server did not start, a robot was not welcomed, a message
was refused, lost or echoed twice, an update was refused, a session's log disagrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from roz.v1 import robot_link_pb2 as link
from roz.v1 import robot_link_pb2_grpc, sessions_pb2_grpc
from roz.v1 import sessions_pb2 as pb

from bench import machine
from bench.load import percentile_ms
from bench.robots import (
    CHANNEL_OPTIONS,
    EOF,
    PROJECT_ROOT,
    SERVER_SETTINGS,
    Profile,
    ServerProcess,
    _auth,
    _cluster,
    _make_fleet,
    _profile_lines,
    _scratch_database,
    profiling,
    py_spy,
)
from bench.servers import HOST
from bench.triggers import _cpu_meter
from server.domain.api_keys import mint_secret
from server.storage.bootstrap import create_tenant

# The goal: the relay's p99 at BENCH_SESSIONS sessions, on one process.
RELAY_P99_GOAL_MS = 20.0

TENANTS = 4
WARMUP_TURNS = 3  # per session, untimed
ALONE_PAUSE_MS = 100  # one session alone: the latency with nothing else going on
ALONE_MESSAGES = 50
ONE_PROCESS = "robots and operators on process A"
EVENTS_PER_TURN = 4  # user_message, turn_started, text_delta, turn_finished
STARTS_IN_FLIGHT = 16  # hellos and session starts at a time
READY_TIMEOUT_SECONDS = 60.0
TURN_TIMEOUT_SECONDS = 30.0  # beyond a lost wake-up's recheck (5 s)
RELAY_READY = "bench-sessions-relay "  # prefixes the baseline relay's one stdout line


@dataclass(frozen=True)
class SessionBenchSettings:
    enabled: bool
    sessions: int
    messages: int  # timed, per session and run
    pause_ms: int  # mean pause between a turn's end and the next message

    @classmethod
    def from_env(cls) -> SessionBenchSettings:
        def number(name: str, default: int, minimum: int = 1) -> int:
            value = int(float(os.environ.get(name) or default))
            if value < minimum:
                raise SystemExit(f"bench: {name} must be at least {minimum}")
            return value

        sessions = number("BENCH_SESSIONS", 100, minimum=0)
        return cls(
            enabled=sessions > 0,
            sessions=sessions,
            messages=number("BENCH_SESSION_MESSAGES", 20),
            pause_ms=number("BENCH_SESSION_PAUSE_MS", 2000, minimum=0),
        )


def _progress(message: str) -> None:
    print(f"bench: sessions: {message}", file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How the operators talk: `sessions` of them (0: all), each message after the previous
    turn's end and a pause drawn uniformly from 0 to twice `pause_ms`."""

    name: str
    sessions: int
    messages: int  # per session
    pause_ms: int


def loads(settings: SessionBenchSettings) -> list[Load]:
    return [
        Load("paced", 0, settings.messages, settings.pause_ms),
        Load("back to back", 0, settings.messages, 0),
        Load("one session alone", 1, ALONE_MESSAGES, ALONE_PAUSE_MS),
    ]


@dataclass(frozen=True)
class RelayRun:
    placement: str
    server: str  # "roz" or "baseline"
    load: Load
    sessions: int
    relay_us: list[int]  # user message written → its text_delta read by the operator
    first_leg_us: list[int]  # user message written → the agent's receipt
    seconds: float  # the timed turns' wall time
    cpu: list[tuple[str, float]]  # CPU seconds of each server, PostgreSQL, the clients, all

    @property
    def turns_per_second(self) -> float:
        return len(self.relay_us) / self.seconds if self.seconds > 0 else 0.0

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.relay_us, 0.99)


@dataclass
class SessionResult:
    settings: SessionBenchSettings
    postgres_version: str = ""
    runs: list[RelayRun] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)  # of the goal's run
    profiler: str = ""
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0

    def baseline(self, load: Load) -> RelayRun | None:
        return next((r for r in self.runs if r.server == "baseline" and r.load == load), None)

    @property
    def goal_run(self) -> RelayRun | None:
        return next((run for run in self.runs if _is_goal(run)), None)

    @property
    def missed(self) -> bool:
        run = self.goal_run
        return run is not None and (run.p99_ms is None or run.p99_ms > RELAY_P99_GOAL_MS)


def _is_goal(run: RelayRun) -> bool:
    return run.server == "roz" and run.placement == ONE_PROCESS and run.load.name == "paced"


# -- the clients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    host_id: str
    robot_key: str
    operator_key: str


@dataclass
class _Turn:
    content: str
    sent: float = 0.0
    heard: float = 0.0  # the agent's receipt of its delivery
    echoed: float = 0.0  # the operator's receipt of the text_delta
    echoes: int = 0
    wrong: str = ""


class Agents:
    """The robots, each a robot's agent on its own Connect stream and connection."""

    def __init__(self, turns: dict[str, _Turn]) -> None:
        self.turns = turns  # by message id, shared with the operators
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: list[Any] = []
        self.accepted = 0
        self.refused: list[str] = []
        self.ended: list[str] = []  # streams that ended while the bench ran
        self.stopping = False
        self._answer = asyncio.Event()  # set at each session_ack

    async def answered(self, count: int) -> None:
        """Until `count` updates have been accepted in all, or one refused."""
        while self.accepted < count and not self.refused:
            self._answer.clear()
            await self._answer.wait()

    async def connect(self, target: str, hosts: Sequence[Host]) -> None:
        ramp = asyncio.Semaphore(STARTS_IN_FLIGHT)
        welcomed = [asyncio.get_running_loop().create_future() for _ in hosts]
        for host, ready in zip(hosts, welcomed, strict=True):
            channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            self.channels.append(channel)
            stub = robot_link_pb2_grpc.RobotLinkServiceStub(channel)
            self.tasks.append(asyncio.create_task(self._run(stub, host, ramp, ready)))
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await asyncio.gather(*welcomed)

    async def _run(
        self, stub: Any, host: Host, ramp: asyncio.Semaphore, ready: asyncio.Future[None]
    ) -> None:
        try:
            await self._stream(stub, host, ramp, ready)
        except grpc.aio.AioRpcError as error:
            if not self.stopping:
                self.ended.append(f"{error.code().name}: {error.details()}"[:160])
        if not ready.done():
            ready.set_exception(RuntimeError(f"robot of host {host.host_id} was not welcomed"))

    async def _stream(
        self, stub: Any, host: Host, ramp: asyncio.Semaphore, ready: asyncio.Future[None]
    ) -> None:
        async with ramp:
            call = stub.Connect(metadata=_auth(host.robot_key))
            self.calls.append(call)
            hello = link.Hello(host_id=host.host_id, client="roz-bench")
            await call.write(link.ConnectRequest(hello=hello))
            response = await call.read()
        if response is EOF or response.WhichOneof("message") != "welcome":
            return
        ready.set_result(None)
        interval = response.welcome.heartbeat_interval.ToTimedelta().total_seconds()
        writing = asyncio.Lock()

        async def send(**message: Any) -> None:
            async with writing:
                await call.write(link.ConnectRequest(**message))

        async def heartbeat() -> None:
            while interval > 0:
                await asyncio.sleep(interval)
                await send(heartbeat=link.Heartbeat())

        beating = asyncio.create_task(heartbeat())
        sequence: dict[str, int] = {}  # the agent's last update, by session
        try:
            while (response := await call.read()) is not EOF:
                which = response.WhichOneof("message")
                if which == "session_ack":
                    ack = response.session_ack
                    if ack.accepted:
                        self.accepted += 1
                    else:
                        self.refused.append(ack.reason[:160])
                    self._answer.set()
                elif which == "delivery":
                    delivery = response.delivery
                    event = delivery.session_event
                    if event.type == "user_message":
                        turn = self.turns.get(event.correlation_id)
                        if turn is not None:
                            turn.heard = time.perf_counter()
                        done = sequence.get(event.session_id, 0)
                        sequence[event.session_id] = done + 2
                        await send(
                            session_update=link.SessionUpdate(
                                session_id=event.session_id,
                                sequence=done + 1,
                                text_delta=pb.TextDelta(text=event.user_message.content),
                            )
                        )
                        await send(
                            session_update=link.SessionUpdate(
                                session_id=event.session_id,
                                sequence=done + 2,
                                turn_finished=pb.TurnFinished(stop_reason="end_turn"),
                            )
                        )
                    await send(ack=link.Ack(sequence=delivery.sequence))
            if not self.stopping:
                self.ended.append("the stream ended")
        finally:
            beating.cancel()

    async def close(self) -> None:
        self.stopping = True
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close(None) for channel in self.channels))


class Operator:
    """One operator's StreamSession on one host, on a connection of its own."""

    def __init__(self, target: str, host: Host, turns: dict[str, _Turn]) -> None:
        self.host = host
        self.turns = turns
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.call: Any = None
        self.session_id = ""
        self.made = 0  # turns made, warm-up included

    async def start(self) -> None:
        stub = sessions_pb2_grpc.SessionServiceStub(self.channel)
        self.call = stub.StreamSession(metadata=_auth(self.host.operator_key))
        await self.call.write(
            pb.StreamSessionRequest(start=pb.StartSession(host_id=self.host.host_id))
        )
        started = await self._event()
        if started.type != "session_started":
            raise RuntimeError(f"no session on host {self.host.host_id}: {started}")
        self.session_id = started.session_id

    async def _event(self) -> pb.SessionEvent:
        while True:
            event = await self.call.read()
            if event is EOF:
                raise RuntimeError(f"the operator's stream ended: {await self.call.code()}")
            if event.type:  # not a checkpoint
                return event  # type: ignore[no-any-return]

    async def converse(self, prefix: str, count: int, pause_ms: int) -> None:
        """`count` turns, each message after the previous turn's end and a pause."""
        for number in range(count):
            if pause_ms:
                await asyncio.sleep(random.uniform(0, 2 * pause_ms / 1000))  # noqa: S311
            message_id = f"{prefix}-{number}"
            self.turns[message_id] = turn = _Turn(f"{message_id}: move to the next shelf")
            message = pb.UserMessage(content=turn.content, message_id=message_id)
            turn.sent = time.perf_counter()
            await self.call.write(pb.StreamSessionRequest(user_message=message))
            async with asyncio.timeout(TURN_TIMEOUT_SECONDS):
                while (event := await self._event()).type != "turn_finished":
                    if event.type == "text_delta":
                        turn.echoed = turn.echoed or time.perf_counter()
                        turn.echoes += 1
                        if (
                            event.correlation_id != message_id
                            or event.text_delta.text != turn.content
                        ):
                            turn.wrong = (
                                f"echoed {event.text_delta.text!r} as {event.correlation_id}"
                            )
                    elif event.type == "session_rejected":
                        raise RuntimeError(f"message refused: {event.session_rejected}")
            self.made += 1

    async def end(self) -> pb.SessionEvent:
        await self.call.write(
            pb.StreamSessionRequest(cancel_session=pb.CancelSession(reason="bench over"))
        )
        async with asyncio.timeout(TURN_TIMEOUT_SECONDS):
            while (event := await self._event()).type != "session_completed":
                pass
        return event

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        await self.channel.close(None)


# -- the runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    label: str
    server: str  # "roz" or "baseline"
    operators_target: str
    rest_target: str  # where each session's log is read ("": not read)
    servers: tuple[tuple[str, int], ...]  # (label, pid): their CPU is measured
    profiled: tuple[tuple[str, int], ...] = ()  # (label, pid): sampled in the goal's run


async def relay_runs(
    robots_target: str,
    placements: Sequence[Placement],
    hosts: Sequence[Host],
    result: SessionResult,
    root: Path,
) -> None:
    """The robots connect to `robots_target` once; then, for each placement, a session per host
    on its operators' process, each load in turn, checked and ended. A call that fails or a
    turn that never ends is a RuntimeError: something broke."""
    agents = Agents({})
    try:
        await agents.connect(robots_target, hosts)
        for placement in placements:
            await _placement_runs(placement, agents, hosts, result, root)
    except grpc.aio.AioRpcError as error:
        raise RuntimeError(f"a call failed: {error.code().name}: {error.details()}") from error
    except TimeoutError as error:
        raise RuntimeError("a session start, turn or end did not complete in time") from error
    finally:
        await agents.close()


async def _placement_runs(
    placement: Placement,
    agents: Agents,
    hosts: Sequence[Host],
    result: SessionResult,
    root: Path,
) -> None:
    settings = result.settings
    turns = agents.turns
    operators = [Operator(placement.operators_target, host, turns) for host in hosts]
    accepted_before = agents.accepted
    broken: list[str] = []
    try:
        ramp = asyncio.Semaphore(STARTS_IN_FLIGHT)

        async def start(operator: Operator) -> None:
            async with ramp:
                await operator.start()
            await operator.converse(f"warm-{uuid.uuid4().hex[:6]}", WARMUP_TURNS, 0)

        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await asyncio.gather(*(start(operator) for operator in operators))
        for load in loads(settings):
            turns.clear()
            talking = operators[: load.sessions or None]
            prefix = uuid.uuid4().hex[:6]
            run = RelayRun(placement.label, placement.server, load, len(talking), [], [], 0.0, [])
            with profiling(placement.profiled if _is_goal(run) else (), root) as profiles:
                cpu_since = _cpu_meter([*placement.servers, ("the clients", os.getpid())], root)
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        operator.converse(f"{prefix}-{number}", load.messages, load.pause_ms)
                        for number, operator in enumerate(talking)
                    )
                )
                seconds = time.perf_counter() - started
                cpu = cpu_since()
            run = dataclasses.replace(
                run,
                relay_us=[round((t.echoed - t.sent) * 1e6) for t in turns.values() if t.echoed],
                first_leg_us=[round((t.heard - t.sent) * 1e6) for t in turns.values() if t.heard],
                seconds=seconds,
                cpu=cpu,
            )
            result.runs.append(run)
            if _is_goal(run):
                result.profiles = profiles
            if wrong := _wrong_turns(turns, len(talking) * load.messages):
                broken.append(f"{load.name}: {wrong}")
            _progress(
                f"{placement.server}, {placement.label}, {load.name}: relay p50 / p99 / max "
                f"{_spread(run.relay_us)}, first leg {_spread(run.first_leg_us)}; "
                f"{run.turns_per_second:,.0f} turns/s"
            )
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            ended = await asyncio.gather(*(operator.end() for operator in operators))
        sent = 2 * sum(operator.made for operator in operators)
        with contextlib.suppress(TimeoutError):  # the last answers may trail the operator's end
            async with asyncio.timeout(TURN_TIMEOUT_SECONDS):
                await agents.answered(accepted_before + sent)
        if agents.refused:
            broken.append(f"{len(agents.refused)} session updates refused ({agents.refused[0]})")
        if (accepted := agents.accepted - accepted_before) != sent:
            broken.append(f"{accepted} session updates accepted of {sent} sent")
        if agents.ended:
            broken.append(f"{len(agents.ended)} robot streams ended ({agents.ended[0]})")
        if placement.rest_target:
            broken += await _check_logs(placement.rest_target, operators, ended)
    finally:
        await asyncio.gather(*(operator.close() for operator in operators))
    if broken:
        result.broken.append(f"{placement.server}, {placement.label}: " + "; ".join(broken))


def _wrong_turns(turns: dict[str, _Turn], expected: int) -> str:
    wrong = [
        f"{message_id}: {turn.wrong or f'{turn.echoes} text_deltas'}"
        for message_id, turn in turns.items()
        if turn.echoes != 1 or turn.wrong or not turn.heard
    ]
    if len(turns) != expected:
        wrong.insert(0, f"{len(turns)} turns of {expected}")
    return f"{len(wrong)} turns wrong (the first: {wrong[0]})" if wrong else ""


async def _check_logs(
    target: str, operators: Sequence[Operator], ended: Sequence[pb.SessionEvent]
) -> list[str]:
    """Each session's log: ended by its operator, one turn per message, nothing more."""
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=f"http://{target}", timeout=60) as client:
        for operator, completed in zip(operators, ended, strict=True):
            response = await client.get(
                f"/api/v1/sessions/{operator.session_id}",
                headers={"authorization": f"Bearer {operator.host.operator_key}"},
            )
            session = response.json() if response.status_code == 200 else {}
            expected = {
                "state": "STATE_ENDED",
                "end_reason": "OPERATOR_ENDED",
                "turn_count": operator.made,
                "last_sequence": str(1 + EVENTS_PER_TURN * operator.made + 1),
            }
            got = {name: session.get(name) for name in expected}
            if got != expected or completed.session_completed.turn_count != operator.made:
                wrong.append(f"session {operator.session_id}: expected {expected}, got {got}")
    return [f"{len(wrong)} session logs wrong (the first: {wrong[0]})"] if wrong else []


# -- the baseline: a trivial relay --------------------------------------------------------------


class _Relay(
    robot_link_pb2_grpc.RobotLinkServiceServicer,  # type: ignore[misc]
    sessions_pb2_grpc.SessionServiceServicer,  # type: ignore[misc]
):
    """The two streams over in-memory queues (the other methods unimplemented): what any relay
    between two gRPC streams costs."""

    def __init__(self) -> None:
        self.robots: dict[str, asyncio.Queue[link.ConnectResponse]] = {}
        self.operators: dict[str, asyncio.Queue[pb.SessionEvent]] = {}
        self.deliveries: dict[str, int] = {}
        self.sequences: dict[str, int] = {}
        self.correlation: dict[str, str] = {}  # session → its turn's message id

    def deliver(self, host_id: str, event: pb.SessionEvent) -> None:
        self.deliveries[host_id] = sequence = self.deliveries.get(host_id, 0) + 1
        delivery = link.Delivery(sequence=sequence, session_event=event)
        self.robots[host_id].put_nowait(link.ConnectResponse(delivery=delivery))

    def record(
        self, session_id: str, kind: str, correlation_id: str, **event: Any
    ) -> pb.SessionEvent:
        self.sequences[session_id] = sequence = self.sequences.get(session_id, 0) + 1
        recorded = pb.SessionEvent(
            id=str(uuid.uuid4()),
            session_id=session_id,
            sequence=sequence,
            correlation_id=correlation_id,
            type=kind,
            **event,
        )
        self.operators[session_id].put_nowait(recorded)
        return recorded

    async def Connect(
        self, requests: AsyncIterator[link.ConnectRequest], context: Any
    ) -> AsyncIterator[link.ConnectResponse]:
        hello = await anext(requests)
        host_id = hello.hello.host_id
        outbox: asyncio.Queue[link.ConnectResponse] = asyncio.Queue()
        self.robots[host_id] = outbox
        reader = asyncio.create_task(self._robot(host_id, requests, outbox))
        try:
            welcome = link.Welcome(host_id=host_id)
            welcome.heartbeat_interval.FromSeconds(10)
            yield link.ConnectResponse(welcome=welcome)
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()

    async def _robot(
        self,
        host_id: str,
        requests: AsyncIterator[link.ConnectRequest],
        outbox: asyncio.Queue[link.ConnectResponse],
    ) -> None:
        async for request in requests:
            if request.WhichOneof("message") != "session_update":
                continue
            update = request.session_update
            kind = update.WhichOneof("event") or ""
            correlation = self.correlation.get(update.session_id, "")
            self.record(update.session_id, kind, correlation, **{kind: getattr(update, kind)})
            ack = link.SessionAck(
                session_id=update.session_id, sequence=update.sequence, accepted=True
            )
            outbox.put_nowait(link.ConnectResponse(session_ack=ack))

    async def StreamSession(
        self, requests: AsyncIterator[pb.StreamSessionRequest], context: Any
    ) -> AsyncIterator[pb.SessionEvent]:
        outbox: asyncio.Queue[pb.SessionEvent] = asyncio.Queue()
        reader = asyncio.create_task(self._operator(requests, outbox))
        try:
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()

    async def _operator(
        self,
        requests: AsyncIterator[pb.StreamSessionRequest],
        outbox: asyncio.Queue[pb.SessionEvent],
    ) -> None:
        session_id = str(uuid.uuid4())
        self.operators[session_id] = outbox
        host_id = ""
        async for request in requests:
            which = request.WhichOneof("message")
            if which == "start":
                host_id = request.start.host_id
                started = self.record(
                    session_id,
                    "session_started",
                    "",
                    session_started=pb.SessionStarted(host_id=host_id),
                )
                self.deliver(host_id, started)
            elif which == "user_message":
                message = request.user_message
                self.correlation[session_id] = message.message_id
                said = self.record(
                    session_id, "user_message", message.message_id, user_message=message
                )
                self.deliver(host_id, said)
                self.record(
                    session_id,
                    "turn_started",
                    message.message_id,
                    turn_started=pb.TurnStarted(message_id=message.message_id),
                )
            elif which == "cancel_session":
                completed = self.record(
                    session_id, "session_completed", "", session_completed=pb.SessionCompleted()
                )
                self.deliver(host_id, completed)


async def _serve_relay() -> None:
    """The baseline relay: its port on stdout, then serves until stdin closes."""
    relay = _Relay()
    server = grpc.aio.server()
    robot_link_pb2_grpc.add_RobotLinkServiceServicer_to_server(relay, server)
    sessions_pb2_grpc.add_SessionServiceServicer_to_server(relay, server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    print(f"{RELAY_READY}{port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.stop(0)


@contextlib.contextmanager
def relay_process() -> Iterator[tuple[str, int]]:
    """The baseline relay in a process of its own: (target, pid)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.sessions", "relay"],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        line = child.stdout.readline()
        if not line.startswith(RELAY_READY):
            raise RuntimeError(f"the baseline relay did not start: {line!r}")
        yield f"{HOST}:{int(line.removeprefix(RELAY_READY))}", child.pid
    finally:
        child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- the whole ----------------------------------------------------------------------------------


async def _make_hosts(dsn: str, count: int) -> list[Host]:
    """`count` hosts over TENANTS tenants, each with its robot key; the tenant's admin key is
    its operators'."""
    hosts: list[Host] = []
    tenants = min(TENANTS, count)  # as many as there are hosts, at most TENANTS
    for number in range(tenants):
        _, key = await create_tenant(dsn, f"bench-sessions-{number}-{uuid.uuid4().hex[:6]}")
        share = count // tenants + (number < count % tenants)
        _, fleet = await _make_fleet(dsn, key, share, "sessions")
        hosts += [Host(host_id, secret, key) for host_id, secret in fleet]
    return hosts


def run(settings: SessionBenchSettings) -> SessionResult:
    result = SessionResult(settings)
    result.profiler = py_spy() or "py-spy is not installed: a missed goal goes unprofiled"
    started = time.monotonic()
    result.load_before = os.getloadavg()[0]  # another busy process on the machine skews it all
    root = Path(tempfile.mkdtemp(prefix="roz-bench-sessions-"))
    try:
        with _cluster(root) as cluster:
            with psycopg.connect(cluster, autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                result.postgres_version = str(row[0]) if row else "unknown"
            with relay_process() as (target, pid):
                _progress(f"the trivial relay, {settings.sessions} sessions")
                relay = Placement("its own process", "baseline", target, "", (("the relay", pid),))
                hosts = [Host(str(uuid.uuid4()), "-", "-") for _ in range(settings.sessions)]
                asyncio.run(relay_runs(target, [relay], hosts, result, root))
            _serve(result, cluster, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.monotonic() - started
    result.load_after = os.getloadavg()[0]
    return result


def _serve(result: SessionResult, cluster: str, root: Path) -> None:
    settings = result.settings
    with (
        _scratch_database(cluster, "roz_bench_sessions") as dsn,
        contextlib.ExitStack() as servers,
    ):
        admin_key = mint_secret()
        a = ServerProcess("A", dsn, admin_key, root)
        servers.callback(a.stop)
        a.start()
        b = ServerProcess("B", dsn, admin_key, root)
        servers.callback(b.stop)
        b.start()
        hosts = asyncio.run(_make_hosts(dsn, settings.sessions))
        _progress(f"servers ready; {len(hosts)} hosts with robot keys, robots on server A")
        one = Placement(
            ONE_PROCESS, "roz", a.target, a.target, (("server A", a.pid),), (("A", a.pid),)
        )
        two = Placement(
            "robots on process A, operators on B",
            "roz",
            b.target,
            b.target,
            (("server A (robots)", a.pid), ("server B (operators)", b.pid)),
        )
        asyncio.run(relay_runs(a.target, [one, two], hosts, result, root))
        a.check()
        b.check()


# -- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _spread(values_us: Sequence[int]) -> str:
    return (
        f"{_ms(percentile_ms(values_us, 0.5))} / {_ms(percentile_ms(values_us, 0.99))} / "
        f"{_ms(max(values_us, default=0) / 1000)} ms"
    )


def _load(run: RelayRun) -> str:
    load = run.load
    if load.pause_ms:
        talk = (
            f"each message 0 to {2 * load.pause_ms / 1000:g} s ({load.pause_ms / 1000:g} s on "
            "average) after its previous turn's end"
        )
    else:
        talk = "each message at once after its previous turn's end"
    who = "one session alone" if run.sessions == 1 else f"{run.sessions} sessions at once"
    return f"{who}, {talk}"


def _cpu(run: RelayRun) -> str:
    """CPU per turn of each process, and how busy the machine was."""
    turns = max(1, len(run.relay_us))
    *processes, (_, machine_seconds) = run.cpu
    per_turn = ", ".join(f"{label} {seconds / turns * 1000:.1f} ms" for label, seconds in processes)
    cores = os.cpu_count() or 1
    busy = machine_seconds / (run.seconds * cores) if run.seconds > 0 else 0.0
    return f"CPU per turn: {per_turn}; the machine {busy:.0%} busy"


def _added(run: RelayRun, baseline: RelayRun) -> str:
    """roz's percentiles minus the trivial relay's."""
    figures = []
    for fraction in (0.5, 0.99):
        ours, theirs = (
            percentile_ms(run.relay_us, fraction),
            percentile_ms(baseline.relay_us, fraction),
        )
        figures.append(_ms(None if ours is None or theirs is None else ours - theirs))
    return " / ".join(figures)


def render(result: SessionResult) -> str:
    settings = result.settings
    lines = [
        "",
        "## Agent sessions: relay latency operator → robot's agent → operator, "
        f"{settings.sessions} sessions",
        "",
        "| figure | value | goal | result |",
        "|---|---|---|---|",
    ]
    for run in result.runs:
        baseline = result.baseline(run.load)
        beside = ""
        if run.server == "roz" and baseline is not None:
            beside = (
                f"; the trivial relay {_spread(baseline.relay_us)}, so roz adds "
                f"{_added(run, baseline)} ms at p50 / p99"
            )
        goal = verdict = ""
        if _is_goal(run):
            goal = f"p99 <= {RELAY_P99_GOAL_MS:.0f} ms"
            verdict = "BELOW GOAL" if result.missed else "PASS"
        elif run.server == "roz":
            verdict = "reference"
        server = "roz" if run.server == "roz" else "the trivial relay (baseline)"
        lines.append(
            f"| {server}, {run.placement}, {_load(run)}: user message written → its text_delta "
            f"read, p50 / p99 / max | {_spread(run.relay_us)}{beside} (the first leg, to the "
            f"agent: {_spread(run.first_leg_us)}; {len(run.relay_us):,} turns, "
            f"{run.turns_per_second:,.0f} a second; {_cpu(run)}) | {goal} | {verdict} |"
        )
    lines += [
        "",
        textwrap.fill(
            f"PostgreSQL {result.postgres_version} (embedded pgserver), one database shared by "
            "two `roz-server serve` processes with production settings but "
            f"{', '.join(f'{k}={v}' for k, v in SERVER_SETTINGS.items())}. {settings.sessions} "
            f"hosts over up to {TENANTS} tenants, each with a robot on server A acting as the "
            "agent (a text_delta echoing each user message, then a turn_finished; every "
            "delivery acked) and an operator (the tenant's admin key) holding one StreamSession, "
            "every client on a grpcio asyncio connection of its own in the bench's process. "
            f"After {WARMUP_TURNS} untimed turns per session, {settings.messages} user messages "
            "per talking session for each load, the sessions at once. Latency from "
            "time.perf_counter just before the message is written to the operator's read of "
            "its text_delta (the first leg: to the agent's read of its delivery), one clock. "
            "The trivial relay: a grpc.aio server in a process of its own with the same two "
            "methods over in-memory queues (no database, no checks), driven by the same "
            "clients the same way. Every message checked for exactly one echo, every update "
            "for its acceptance, every session's log for its turns and events after its "
            "operator ended it. Servers, PostgreSQL and the clients share "
            f"{machine.cores()}; took {result.seconds:.0f} s, load average "
            f"{result.load_before:.2f} before and {result.load_after:.2f} after.",
            width=100,
        ),
    ]
    if result.profiles:
        lines += [
            "",
            f"What dominated the missed goal: py-spy ({result.profiler}) at 100 Hz, on server A "
            "while the paced messages ran, without stopping it. Own time is a Python frame's "
            "and the C code's below it:",
        ]
        for profile in result.profiles:
            lines += _profile_lines("session relay, paced", profile)
    elif result.missed:
        lines += ["", result.profiler]
    if result.broken:
        lines += ["", "BROKEN: " + "; ".join(result.broken)]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) == ["relay"]:
        asyncio.run(_serve_relay())
        return 0
    # pgserver asks platformdirs for a runtime directory it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    settings = SessionBenchSettings.from_env()
    if not settings.enabled:
        print("bench: sessions: BENCH_SESSIONS=0, skipped", file=sys.stderr)
        return 0
    try:
        result = run(settings)
    except RuntimeError as exc:
        print(f"bench: sessions: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    return 1 if result.broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
