"""Commands through roz's port: CreateCommand and TransitionCommand, native gRPC and REST.

CreateCommand repeats one request, a move within both safety policies of the command host's
environment (bench/servers.py), so every call runs the whole safety check — the host, its
environment and both policies read under row locks, every limit and both workspaces evaluated —
and stores a new PENDING command with its first history row. No idempotency key is sent, so
every call creates one. h2load and wrk repeat it like any other side.

TransitionCommand needs a command in the right state for every call, so it cannot be one request
repeated. Before each window a pool of fresh PENDING commands is written in bulk
(bench/dataset.py); the load then moves each PENDING → RUNNING and, once that answer is back,
RUNNING → COMPLETED, so half the calls are of each kind. Over HTTP/1.1 wrk does it with a Lua
script (its `response` hook reads the id out of each RUNNING answer and queues the completion);
over gRPC, where h2load can only send one fixed body, grpcio's asyncio client does, in the bench
process (so it shares the two cores with the server: its rate is a floor).

Load generators count HTTP 2xx, and a failed gRPC call is an HTTP 200. So each run is checked
against the database afterwards: the commands and history rows it made must agree with what the
generator counted (allowing for the calls still in flight when it stopped), every command in
PENDING, RUNNING or COMPLETED, every one checked against both policies' current versions. Then
the commands are deleted again (bench/dataset.py), so every run starts from the same database.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from roz.v1 import commands_pb2 as pb

from bench import dataset, verify
from bench.load import (
    WRK_REPORT,
    ByWire,
    LoadGenerator,
    LoadResult,
    LoadToolError,
    Wrk,
    lua_string,
    percentile_ms,
    run_tool,
    wrk_result,
)
from bench.pyload import Tally, http1_request, read_response
from bench.scenarios import Load, Side, Wire, grpc_frame
from bench.servers import HOST, Endpoints

SERVICE = "/roz.v1.CommandService/"
CREATE_COMMAND = SERVICE + "CreateCommand"
TRANSITION_COMMAND = SERVICE + "TransitionCommand"
CALL_TIMEOUT_SECONDS = 30.0
# The first pool of a side, before any rate of its own is known, assumes this many calls/s.
ASSUMED_RPS = 5000.0
POOL_HEADROOM = 2.0  # the pool covers this multiple of the expected calls
STEPS = (
    (pb.Command.STATE_RUNNING, "picked up by the arm"),
    (pb.Command.STATE_COMPLETED, "placed in tote 7"),
)
# The REST bodies of the two steps; enum names as the transcoder accepts them.
REST_STEPS = tuple(
    json.dumps({"state": pb.Command.State.Name(state), "reason": reason}, separators=(",", ":"))
    for state, reason in STEPS
)


class CommandCheckError(RuntimeError):
    """A command call or the rows a run left are not what they must be."""


@dataclass(frozen=True)
class TransitionSide:
    """TransitionCommand on fresh commands; the ids come with each run."""

    label: str
    port: int
    wire: Wire
    headers: tuple[tuple[str, str], ...]
    load: Load


@dataclass(frozen=True)
class CommandScenario:
    title: str
    short: str  # the RPC, for progress lines
    side: Side | TransitionSide


def _writer(endpoints: Endpoints) -> tuple[str, str]:
    return ("authorization", f"Bearer {endpoints.writer_key}")


def command_json(endpoints: Endpoints, **params: Any) -> dict[str, Any]:
    return {
        "host_id": endpoints.command_host_id,
        "type": "move_to",
        "params": dataset.command_params() | params,
        "timeout": "60s",
    }


def create_request(endpoints: Endpoints, **params: Any) -> bytes:
    command = json_format.ParseDict(command_json(endpoints, **params), pb.Command())
    return grpc_frame(pb.CreateCommandRequest(command=command).SerializeToString())


def _grpc_headers(endpoints: Endpoints) -> tuple[tuple[str, str], ...]:
    return (("content-type", "application/grpc"), ("te", "trailers"), _writer(endpoints))


def _rest_headers(endpoints: Endpoints) -> tuple[tuple[str, str], ...]:
    return (("content-type", "application/json"), _writer(endpoints))


def grpc_create_side(endpoints: Endpoints, load: Load, **params: Any) -> Side:
    return Side(
        label="roz port (Hypercorn)",
        port=endpoints.roz_port,
        wire=Wire.H2C,
        method="POST",
        path=CREATE_COMMAND,
        headers=_grpc_headers(endpoints),
        body=create_request(endpoints, **params),
        load=load,
    )


def rest_create_side(endpoints: Endpoints, load: Load, **params: Any) -> Side:
    return Side(
        label="roz port (transcoder)",
        port=endpoints.roz_port,
        wire=Wire.HTTP1,
        method="POST",
        path="/api/v1/commands",
        headers=_rest_headers(endpoints),
        body=json.dumps(command_json(endpoints, **params)).encode(),
        load=load,
    )


def scenarios(endpoints: Endpoints, grpc_load: Load, http1_load: Load) -> list[CommandScenario]:
    return [
        CommandScenario(
            "CreateCommand, native gRPC (h2c)",
            "CreateCommand",
            grpc_create_side(endpoints, grpc_load),
        ),
        CommandScenario(
            "POST /api/v1/commands, REST (HTTP/1.1)",
            "CreateCommand",
            rest_create_side(endpoints, http1_load),
        ),
        CommandScenario(
            "TransitionCommand, native gRPC (h2c)",
            "TransitionCommand",
            TransitionSide(
                "roz port (Hypercorn)",
                endpoints.roz_port,
                Wire.H2C,
                (_writer(endpoints),),  # grpcio adds content-type and te itself
                grpc_load,
            ),
        ),
        CommandScenario(
            "POST /api/v1/commands/{id}/transition, REST (HTTP/1.1)",
            "TransitionCommand",
            TransitionSide(
                "roz port (transcoder)",
                endpoints.roz_port,
                Wire.HTTP1,
                _rest_headers(endpoints),
                http1_load,
            ),
        ),
    ]


# -- verification: the exact requests of the load, answered right ------------------------------


def _check_command(label: str, command: pb.Command, endpoints: Endpoints, state: int) -> None:
    applied = [(p.policy_id, p.version) for p in command.applied_policies]
    if (
        command.state != state
        or command.host_id != endpoints.command_host_id
        or applied != list(endpoints.command_policies)
        or not command.id
    ):
        raise CommandCheckError(
            f"{label}: answered {pb.Command.State.Name(command.state)} on {command.host_id!r}, "
            f"checked against {applied}"
        )


def _grpc_answer(side: Side) -> tuple[verify.Answer, str, list[tuple[int, bytes]]]:
    answer = verify.h2c_request(side)
    status = answer.trailers.get("grpc-status", answer.headers.get("grpc-status", ""))
    return answer, status, verify.grpc_frames(answer.body)


def check_grpc_create(side: Side, endpoints: Endpoints) -> None:
    """h2load's exact request: HTTP 200, grpc-status 0 in trailers, a stored PENDING command."""
    answer, status, frames = _grpc_answer(side)
    if answer.status != 200 or status != "0" or "grpc-status" not in answer.trailers:
        raise CommandCheckError(
            f"CreateCommand over gRPC: HTTP {answer.status}, grpc-status {status!r}, "
            f"{answer.trailers.get('grpc-message', '')!r}"
        )
    if len(frames) != 1:
        raise CommandCheckError(f"CreateCommand over gRPC: {len(frames)} messages")
    _check_command(
        "CreateCommand over gRPC",
        pb.Command.FromString(frames[0][1]),
        endpoints,
        pb.Command.STATE_PENDING,
    )


def check_rest_create(side: Side, endpoints: Endpoints) -> None:
    answer = verify.http1_request(side)
    if answer.status != 201:
        raise CommandCheckError(f"POST /api/v1/commands: HTTP {answer.status} {answer.body!r}")
    command = json_format.Parse(answer.body, pb.Command(), ignore_unknown_fields=False)
    _check_command("POST /api/v1/commands", command, endpoints, pb.Command.STATE_PENDING)


def check_safety_refusals(endpoints: Endpoints) -> None:
    """Beyond a limit of each policy, both wires refuse with one violation per policy."""
    over = {"velocity": 2.0, "payload": 7.5}  # the arm limits', then the line rules' limit
    answer, status, _ = _grpc_answer(grpc_create_side(endpoints, Load(1, 1), **over))
    details = answer.trailers.get("grpc-status-details-bin", "")
    if status != str(grpc.StatusCode.FAILED_PRECONDITION.value[0]) or not details:
        raise CommandCheckError(f"an unsafe command over gRPC got grpc-status {status!r}")
    infos = []
    for detail in status_pb2.Status.FromString(_unbase64(details)).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append((info.reason, info.metadata["policy_id"]))
    policies = [policy_id for policy_id, _ in endpoints.command_policies]
    if sorted(infos) != sorted(("SAFETY_LIMIT_EXCEEDED", policy) for policy in policies):
        raise CommandCheckError(f"an unsafe command over gRPC was refused for {infos}")
    refused = verify.http1_request(rest_create_side(endpoints, Load(1, 1), **over))
    reasons = [
        detail.get("reason")
        for detail in json.loads(refused.body).get("details", [])
        if detail.get("@type", "").endswith("ErrorInfo")
    ]
    if refused.status != 400 or reasons != ["SAFETY_LIMIT_EXCEEDED"] * 2:
        raise CommandCheckError(f"an unsafe command over REST got HTTP {refused.status}, {reasons}")


def _unbase64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def transition_request(command_id: str, step: int) -> bytes:
    state, reason = STEPS[step]
    return pb.TransitionCommandRequest(
        id=command_id, state=state, reason=reason
    ).SerializeToString()


def transition_path(command_id: str) -> str:
    return f"/api/v1/commands/{command_id}/transition"


def check_transitions(side: TransitionSide, endpoints: Endpoints) -> None:
    """The generator's exact requests take one fresh command PENDING → RUNNING → COMPLETED."""
    (command_id,) = dataset.seed_pending_commands(endpoints, 1)
    label = f"TransitionCommand over {side.wire.value}"
    final = pb.Command()
    for step, (state, _) in enumerate(STEPS):
        if side.wire is Wire.H2C:
            with grpc.insecure_channel(f"{HOST}:{side.port}") as channel:
                call = channel.unary_unary(TRANSITION_COMMAND)
                try:
                    final = pb.Command.FromString(
                        call(
                            transition_request(command_id, step),
                            metadata=side.headers,
                            timeout=CALL_TIMEOUT_SECONDS,
                        )
                    )
                except grpc.RpcError as exc:
                    raise CommandCheckError(f"{label}: {exc}") from exc
        else:
            answer = verify.http1_request(_rest_transition_side(side, command_id, step))
            if answer.status != 200:
                raise CommandCheckError(f"{label}: HTTP {answer.status} {answer.body[:300]!r}")
            final = json_format.Parse(answer.body, pb.Command())
        _check_command(label, final, endpoints, state)
    moves = [(t.from_state, t.to_state, t.actor) for t in final.transitions]
    expected = [
        (pb.Command.STATE_UNSPECIFIED, pb.Command.STATE_PENDING, endpoints.writer_key_id),
        (pb.Command.STATE_PENDING, pb.Command.STATE_RUNNING, endpoints.writer_key_id),
        (pb.Command.STATE_RUNNING, pb.Command.STATE_COMPLETED, endpoints.writer_key_id),
    ]
    if moves != expected:
        raise CommandCheckError(f"{label}: the history is {moves}")


def _rest_transition_side(side: TransitionSide, command_id: str, step: int) -> Side:
    return Side(
        label=side.label,
        port=side.port,
        wire=side.wire,
        method="POST",
        path=transition_path(command_id),
        headers=side.headers,
        body=REST_STEPS[step].encode(),
        load=side.load,
    )


def verify_all(commands: list[CommandScenario], endpoints: Endpoints) -> None:
    """Each scenario's exact requests, the safety check refusing, and a clean table after."""
    for scenario in commands:
        side = scenario.side
        if isinstance(side, TransitionSide):
            check_transitions(side, endpoints)
        elif side.wire is Wire.H2C:
            check_grpc_create(side, endpoints)
        else:
            check_rest_create(side, endpoints)
    check_safety_refusals(endpoints)
    dataset.remove_commands(endpoints)


# -- TransitionCommand load -------------------------------------------------------------------


@dataclass
class TransitionCounts:
    """What one window did, as the generator saw it."""

    result: LoadResult
    running: int  # PENDING → RUNNING calls answered OK
    completed: int  # RUNNING → COMPLETED calls answered OK
    exhausted: int = 0  # calls that found the pool empty


def _counts(tally: Tally, done: Counter[str], elapsed: float) -> TransitionCounts:
    """`done` counts the OK answers of each step ("0", "1") and the calls that found no id."""
    return TransitionCounts(
        LoadResult(
            requests_per_second=tally.succeeded / elapsed,
            succeeded=tally.succeeded,
            failed=tally.failed + done["exhausted"],
            p50_ms=percentile_ms(tally.latencies_us, 0.50),
            p99_ms=percentile_ms(tally.latencies_us, 0.99),
        ),
        running=done["0"],
        completed=done["1"],
        exhausted=done["exhausted"],
    )


class GrpcTransitions:
    """grpcio's asyncio client: each worker takes the next id and makes both calls in turn."""

    name = "grpcio's asyncio client (Python, in the bench process)"
    short = "grpcio aio (Python)"

    def run(self, side: TransitionSide, seconds: int, ids: list[str]) -> TransitionCounts:
        return asyncio.run(self._run(side, seconds, ids))

    async def _run(self, side: TransitionSide, seconds: int, ids: list[str]) -> TransitionCounts:
        now = time.perf_counter()
        tally = Tally(measure_from=now, stop_at=now + seconds)
        pool = iter(ids)
        done: Counter[str] = Counter()
        channels = [
            grpc.aio.insecure_channel(
                f"{HOST}:{side.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(side.load.connections)
        ]

        async def worker(channel: grpc.aio.Channel) -> None:
            call = channel.unary_unary(TRANSITION_COMMAND)
            while time.perf_counter() < tally.stop_at:
                command_id = next(pool, None)
                if command_id is None:
                    done["exhausted"] += 1
                    return
                for step in range(len(STEPS)):
                    started = time.perf_counter()
                    try:
                        await call(
                            transition_request(command_id, step),
                            metadata=side.headers,
                            timeout=CALL_TIMEOUT_SECONDS,
                        )
                    except grpc.RpcError:
                        tally.record(started, ok=False)
                        break
                    tally.record(started, ok=True)
                    done[str(step)] += 1

        try:
            await asyncio.gather(
                *(worker(channel) for channel in channels for _ in range(side.load.streams))
            )
        finally:
            for channel in channels:
                await channel.close()
        elapsed = max(time.perf_counter() - now, seconds)  # the last calls end after the window
        return _counts(tally, done, elapsed)


class Http1Transitions:
    """The fallback without wrk: asyncio keep-alive connections, both calls in turn."""

    name = "asyncio HTTP/1.1 client (Python, in the bench process)"
    short = "asyncio (Python)"

    def run(self, side: TransitionSide, seconds: int, ids: list[str]) -> TransitionCounts:
        return asyncio.run(self._run(side, seconds, ids))

    async def _run(self, side: TransitionSide, seconds: int, ids: list[str]) -> TransitionCounts:
        now = time.perf_counter()
        tally = Tally(measure_from=now, stop_at=now + seconds)
        pool = iter(ids)
        done: Counter[str] = Counter()

        async def worker() -> None:
            reader, writer = await asyncio.open_connection(HOST, side.port)
            try:
                while time.perf_counter() < tally.stop_at:
                    command_id = next(pool, None)
                    if command_id is None:
                        done["exhausted"] += 1
                        return
                    for step, body in enumerate(REST_STEPS):
                        request = http1_request(
                            "POST",
                            transition_path(command_id),
                            side.port,
                            side.headers,
                            body.encode(),
                        )
                        started = time.perf_counter()
                        writer.write(request)
                        status, keep_alive = await read_response(reader)
                        tally.record(started, ok=status == 200)
                        if not keep_alive:
                            writer.close()
                            reader, writer = await asyncio.open_connection(HOST, side.port)
                        if status != 200:
                            break
                        done[str(step)] += 1
            finally:
                writer.close()

        await asyncio.gather(*(worker() for _ in range(side.load.connections)))
        elapsed = max(time.perf_counter() - now, seconds)
        return _counts(tally, done, elapsed)


# The ids come from a file (one a line); a RUNNING answer queues its command for completion, and
# a queued completion always goes first. An empty pool sends a call that must fail (the first
# command, long moved on), so running out shows as errors, never as a quietly wrong figure.
_WRK_TRANSITIONS = """
local path_of = function(id) return "/api/v1/commands/" .. id .. "/transition" end
ids, used, exhausted, running, completed = {}, 0, 0, 0, 0
local ready, head, tail = {}, 1, 0

function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
end

request = function()
  if head <= tail then
    local id = ready[head]
    ready[head] = nil
    head = head + 1
    return wrk.format(nil, path_of(id), nil, COMPLETED_BODY)
  end
  if used < #ids then
    used = used + 1
    return wrk.format(nil, path_of(ids[used]), nil, RUNNING_BODY)
  end
  exhausted = exhausted + 1
  return wrk.format(nil, path_of(ids[1]), nil, RUNNING_BODY)
end

response = function(status, headers, body)
  if status ~= 200 then return end
  if string.find(body, '"state":"STATE_RUNNING"', 1, true) then
    running = running + 1
    tail = tail + 1
    ready[tail] = string.match(body, '^{"id":"([0-9a-f%-]+)"')
  elseif string.find(body, '"state":"STATE_COMPLETED"', 1, true) then
    completed = completed + 1
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end
"""
_WRK_POOL_REPORT = """
local report = done
done = function(summary, latency, requests)
  report(summary, latency, requests)
  local t = threads[1]
  io.write(string.format("POOL %d %d %d %d\\n", t:get("used"), t:get("exhausted"),
    t:get("running"), t:get("completed")))
end
"""
_WRK_POOL_LINE = re.compile(r"^POOL (\d+) (\d+) (\d+) (\d+)$", re.MULTILINE)


class WrkTransitions:
    """wrk, one thread, the Lua script above."""

    def __init__(self, wrk: Wrk) -> None:
        self._executable = wrk.executable
        self.name = f"{wrk.name} with a Lua script"
        self.short = "wrk + Lua"

    def run(self, side: TransitionSide, seconds: int, ids: list[str]) -> TransitionCounts:
        lines = ['wrk.method = "POST"']
        lines += [
            f"wrk.headers[{lua_string(name.encode())}] = {lua_string(value.encode())}"
            for name, value in side.headers
        ]
        lines.append(f"RUNNING_BODY = {lua_string(REST_STEPS[0].encode())}")
        lines.append(f"COMPLETED_BODY = {lua_string(REST_STEPS[1].encode())}")
        script_text = "\n".join(lines) + _WRK_TRANSITIONS + WRK_REPORT + _WRK_POOL_REPORT
        with tempfile.TemporaryDirectory(prefix="roz-bench-wrk-") as scratch:
            script = Path(scratch) / "transitions.lua"
            script.write_text(script_text)
            pool = Path(scratch) / "commands.txt"
            pool.write_text("\n".join(ids) + "\n")
            output = run_tool(
                [
                    self._executable,
                    "--threads=1",
                    f"--connections={side.load.connections}",
                    f"--duration={seconds}s",
                    "--timeout=30s",
                    f"--script={script}",
                    f"http://{HOST}:{side.port}/",
                    "--",
                    str(pool),
                ],
                seconds,
            )
        match = _WRK_POOL_LINE.search(output)
        if match is None:
            raise LoadToolError(f"unexpected wrk output:\n{output}")
        _, exhausted, running, completed = (int(value) for value in match.groups())
        return TransitionCounts(wrk_result(output), running, completed, exhausted)


# -- the runs ---------------------------------------------------------------------------------

Transitions = GrpcTransitions | Http1Transitions | WrkTransitions


@dataclass
class _Pooled:
    seeded: int = 0
    running: int = 0  # answered OK, every window
    completed: int = 0
    in_flight: int = 0  # the calls that may have been committed after a window closed


@dataclass
class CommandBench:
    """Runs each command scenario's windows, with its pools, checks and clean-up."""

    endpoints: Endpoints
    creators: LoadGenerator  # h2load and wrk (or the asyncio fallback) for the creates
    transitions: dict[Wire, Transitions]
    known_rps: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, endpoints: Endpoints, creators: LoadGenerator, tools: bool) -> CommandBench:
        wrk = Wrk.find() if tools else None
        return cls(
            endpoints,
            creators,
            {
                Wire.H2C: GrpcTransitions(),
                Wire.HTTP1: WrkTransitions(wrk) if wrk else Http1Transitions(),
            },
        )

    def generator(self, scenario: CommandScenario) -> LoadGenerator | Transitions:
        if isinstance(scenario.side, TransitionSide):
            return self.transitions[scenario.side.wire]
        if isinstance(self.creators, ByWire):
            return self.creators.for_wire(scenario.side.wire)
        return self.creators

    def transitions_description(self) -> str:
        return (
            f"TransitionCommand (each call needs another command, so no tool repeating one "
            f"request will do): {self.transitions[Wire.H2C].name} over h2c, "
            f"{self.transitions[Wire.HTTP1].name} over http/1.1"
        )

    def run(self, scenario: CommandScenario, seconds: int, warmup_seconds: int) -> LoadResult:
        try:
            if isinstance(scenario.side, TransitionSide):
                return self._transitions(scenario, scenario.side, seconds, warmup_seconds)
            return self._creates(scenario, scenario.side, seconds, warmup_seconds)
        finally:
            dataset.remove_commands(self.endpoints)

    def _creates(
        self, scenario: CommandScenario, side: Side, seconds: int, warmup_seconds: int
    ) -> LoadResult:
        result = self.creators.run(side, seconds, warmup_seconds)
        found = dataset.census(self.endpoints)
        if (
            set(found.states) - {"pending"}
            or found.wrong_policies
            or found.transitions(None, "pending") != found.commands
            or found.commands < result.succeeded
        ):
            raise CommandCheckError(
                f"{scenario.title}: the load counted {result.succeeded:,} created, the database "
                f"holds {dict(found.states)} ({found.wrong_policies} against other policies)"
            )
        return result

    def _transitions(
        self, scenario: CommandScenario, side: TransitionSide, seconds: int, warmup_seconds: int
    ) -> LoadResult:
        generator = self.transitions[side.wire]
        pooled = _Pooled()
        # The fastest this side went before (the warm-up window included), else a guess.
        known = self.known_rps.get(scenario.title)
        windows = [warmup_seconds, seconds] if warmup_seconds else [seconds]
        counts: TransitionCounts | None = None
        for window in windows:
            # Each command takes two calls; the calls in flight at the end take one more each.
            rate = ASSUMED_RPS if known is None else known
            size = math.ceil(rate * POOL_HEADROOM * window / 2) + side.load.connections * 4
            ids = dataset.seed_pending_commands(self.endpoints, size)
            counts = generator.run(side, window, ids)
            pooled.seeded += size
            pooled.running += counts.running
            pooled.completed += counts.completed
            pooled.in_flight += side.load.connections * side.load.streams
            if counts.exhausted:
                print(
                    f"bench: {scenario.title}: the pool of {size:,} commands ran out "
                    f"({counts.exhausted:,} calls found it empty)",
                    file=sys.stderr,
                )
            known = max(known or 0.0, counts.result.requests_per_second)
            self.known_rps[scenario.title] = known
        assert counts is not None
        self._check_transitions(scenario, pooled)
        return counts.result

    def _check_transitions(self, scenario: CommandScenario, pooled: _Pooled) -> None:
        found = dataset.census(self.endpoints)
        moved = found.transitions("pending", "running")
        finished = found.transitions("running", "completed")
        problems = []
        if set(found.states) - {"pending", "running", "completed"} or found.wrong_policies:
            problems.append(f"states {dict(found.states)}")
        if found.commands != pooled.seeded or found.transitions(None, "pending") != pooled.seeded:
            problems.append(f"{found.commands:,} commands of {pooled.seeded:,} seeded")
        if moved != found.states["running"] + found.states["completed"]:
            problems.append(f"{moved:,} PENDING → RUNNING recorded")
        if finished != found.states["completed"]:
            problems.append(f"{finished:,} RUNNING → COMPLETED recorded")
        for what, recorded, counted in (
            ("PENDING → RUNNING", moved, pooled.running),
            ("RUNNING → COMPLETED", finished, pooled.completed),
        ):
            if not counted <= recorded <= counted + pooled.in_flight:
                problems.append(f"{what}: {counted:,} answered OK, {recorded:,} recorded")
        if problems:
            raise CommandCheckError(f"{scenario.title}: " + "; ".join(problems))
