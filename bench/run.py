"""The benchmark run: start the servers, verify every side, load them in turn, print the report.

Sides are loaded one at a time while the others idle, in rounds; each round reverses the order
within a comparison (and of the command scenarios), so a slow drift of the machine (caches, the
database's own state, thermal) does not always favour the same side. After the rounds, ListTasks
is walked from the first page to the last over each protocol, alternately. Last, the robot link
(bench/robots.py), the watch fan-out (bench/watches.py), triggers (bench/triggers.py) and then
agent sessions (bench/sessions.py) are measured, each on servers and a database of its own. Exits
0 whatever the ratios are; 1 only when something broke (a server did not start, a side answered
wrongly, requests failed under load, the database disagrees with the load, a walk skipped a task,
a watcher missed a change, a trigger did not fire exactly once, a session's message was lost or
echoed twice).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from bench import (
    commands,
    dataset,
    machine,
    report,
    robots,
    sessions,
    soak,
    tasks,
    triggers,
    verify,
    watches,
)
from bench.commands import CommandBench, CommandScenario
from bench.load import ByWire, H2Load, LoadGenerator, LoadResult, Wrk
from bench.pyload import AsyncioLoad
from bench.scenarios import Comparison, Load, Side, Wire, comparisons, extras
from bench.servers import Endpoints
from bench.tasks import DepthSample, DepthSummary

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class BenchSettings:
    seconds: int
    warmup_seconds: int
    rounds: int
    grpc_load: Load
    http1_load: Load
    generator: str  # "tools" (h2load and wrk), "python" (asyncio), "" (tools when installed)
    tasks: int  # seeded for the ListTasks walk
    walks: int  # timed walks per protocol
    soak_calls: int  # mixed calls of the memory soak (0: no soak)
    soak_streams: int  # streams abandoned in it

    @classmethod
    def from_env(cls) -> BenchSettings:
        def number(name: str, default: int, minimum: int = 1) -> int:
            value = int(float(os.environ.get(name) or default))
            if value < minimum:
                raise SystemExit(f"bench: {name} must be at least {minimum}")
            return value

        return cls(
            seconds=number("BENCH_SECONDS", 8),
            warmup_seconds=number("BENCH_WARMUP_SECONDS", 2, minimum=0),
            rounds=number("BENCH_ROUNDS", 3),
            grpc_load=Load(number("BENCH_GRPC_CONNECTIONS", 8), number("BENCH_GRPC_STREAMS", 16)),
            http1_load=Load(number("BENCH_HTTP1_CONNECTIONS", 32), 1),
            generator=os.environ.get("BENCH_LOAD", "").lower(),
            tasks=number("BENCH_TASKS", 100_000),
            walks=number("BENCH_WALKS", 1),
            soak_calls=number("BENCH_SOAK_CALLS", 100_000, minimum=0),
            soak_streams=number("BENCH_SOAK_STREAMS", 1_000, minimum=0),
        )


def choose_generator(settings: BenchSettings) -> LoadGenerator:
    """h2load for gRPC and wrk for HTTP/1.1 when installed, else the asyncio generator."""
    fallback = AsyncioLoad()
    if settings.generator == "python":
        return fallback
    generators: dict[Wire, LoadGenerator] = {
        Wire.H2C: H2Load.find() or fallback,
        Wire.HTTP1: Wrk.find() or fallback,
    }
    if fallback in generators.values():
        if settings.generator == "tools":
            raise SystemExit("bench: BENCH_LOAD=tools but h2load or wrk is not installed")
        print(
            "bench: h2load or wrk not found; the asyncio load generator stands in for it",
            file=sys.stderr,
        )
    return ByWire(generators)


@contextmanager
def server_process() -> Iterator[Endpoints]:
    """bench/servers.py in a child process; it stops when its stdin closes."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.servers"],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        yield _wait_ready(child.stdout)
    finally:
        child.stdin.close()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait_ready(stdout: IO[bytes]) -> Endpoints:
    """Reads the child's stdout (unbuffered, so select sees every byte) up to the ready line."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    pending = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([stdout], [], [], left)[0]:
            break
        chunk = os.read(stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError("the bench servers exited before they were ready")
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            endpoints = Endpoints.from_line(line.decode())
            if endpoints is not None:
                return endpoints
    raise RuntimeError(f"the bench servers were not ready within {START_TIMEOUT_SECONDS:.0f} s")


def verify_all(
    endpoints: Endpoints,
    compared: list[Comparison],
    alone: list[tuple[str, Side]],
    command_scenarios: list[CommandScenario],
) -> None:
    for comparison in compared:
        verify.check_comparison(comparison, endpoints)
    for _, side in alone:
        verify.check_alone(side, endpoints)
    commands.verify_all(command_scenarios, endpoints)


def _progress(round_number: int, settings: BenchSettings, label: str, wire: str, rps: float) -> str:
    return f"  round {round_number + 1}/{settings.rounds}  {label:<24} {wire:<8} {rps:>8,.0f} req/s"


def measure(
    generator: LoadGenerator,
    settings: BenchSettings,
    compared: list[Comparison],
    alone: list[tuple[str, Side]],
    command_bench: CommandBench,
    command_scenarios: list[CommandScenario],
) -> tuple[dict[Side, list[LoadResult]], dict[CommandScenario, list[LoadResult]]]:
    results: dict[Side, list[LoadResult]] = {}
    command_results: dict[CommandScenario, list[LoadResult]] = {}
    for round_number in range(settings.rounds):
        order: list[Side] = []
        for comparison in compared:
            pair = [comparison.ours, comparison.theirs]
            order += pair if round_number % 2 == 0 else pair[::-1]
        order += [side for _, side in alone]
        for side in order:
            result = generator.run(side, settings.seconds, settings.warmup_seconds)
            results.setdefault(side, []).append(result)
            print(
                _progress(
                    round_number, settings, side.label, side.wire.value, result.requests_per_second
                )
                + (f"  {result.failed} FAILED" if result.failed else ""),
                file=sys.stderr,
                flush=True,
            )
        in_turn = command_scenarios if round_number % 2 == 0 else command_scenarios[::-1]
        for scenario in in_turn:
            result = command_bench.run(scenario, settings.seconds, settings.warmup_seconds)
            command_results.setdefault(scenario, []).append(result)
            print(
                _progress(
                    round_number,
                    settings,
                    scenario.short,
                    scenario.side.wire.value,
                    result.requests_per_second,
                )
                + (f"  {result.failed} FAILED" if result.failed else ""),
                file=sys.stderr,
                flush=True,
            )
    return results, command_results


def walk_tasks(settings: BenchSettings, endpoints: Endpoints) -> dict[str, DepthSummary]:
    """A warm-up on each protocol, then `walks` timed walks each (with their re-reads),
    the order alternated."""
    walkers = tasks.walkers(endpoints)
    for walker in walkers:
        walker.warm(settings.warmup_seconds)
    samples: dict[str, list[DepthSample]] = {}
    for number in range(settings.walks):
        for walker in walkers if number % 2 == 0 else walkers[::-1]:
            sample = tasks.probe(walker, walker.walk(settings.tasks))
            samples.setdefault(walker.label, []).append(sample)
            first, _, last = (tasks.median(band) for band in sample.band_ms)
            print(
                f"  walk {number + 1}/{settings.walks}  {walker.label:<24} "
                f"{len(sample.walk.page_ms):,} pages in {sample.walk.seconds:.1f} s; median "
                f"page {first:.1f} ms first, {last:.1f} ms last",
                file=sys.stderr,
                flush=True,
            )
    return {label: tasks.summarize(runs) for label, runs in samples.items()}


def main() -> int:
    settings = BenchSettings.from_env()
    generator = choose_generator(settings)
    try:
        return run(settings, generator)
    except RuntimeError as exc:  # servers, verification or a load tool: something broke
        print(f"bench: {exc}", file=sys.stderr)
        return 1


def run(settings: BenchSettings, generator: LoadGenerator) -> int:
    # Read now, so that a bad value stops the bench before its first minute, not after its last.
    robot_settings = robots.RobotBenchSettings.from_env()
    watch_settings = watches.WatchBenchSettings.from_env()
    trigger_settings = triggers.TriggerBenchSettings.from_env()
    session_settings = sessions.SessionBenchSettings.from_env()
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # another busy process on the machine skews every figure
    with server_process() as endpoints:
        seeded = dataset.seed_tasks(endpoints, settings.tasks)
        print(
            f"bench: {seeded.count:,} tasks and {seeded.transitions:,} history rows written in "
            f"{seeded.seconds:.1f} s",
            file=sys.stderr,
        )
        compared = comparisons(endpoints, settings.grpc_load, settings.http1_load)
        alone = extras(endpoints, settings.http1_load)
        command_scenarios = commands.scenarios(endpoints, settings.grpc_load, settings.http1_load)
        command_bench = CommandBench.create(
            endpoints, generator, tools=settings.generator != "python"
        )
        verify_all(endpoints, compared, alone, command_scenarios)
        print(
            "bench: every side verified (grpc-status 0 in trailers, same answers, commands "
            "stored as checked)",
            file=sys.stderr,
        )
        results, command_results = measure(
            generator, settings, compared, alone, command_bench, command_scenarios
        )
        walked = walk_tasks(settings, endpoints)
        verify_all(endpoints, compared, alone, command_scenarios)  # still right after the load
        soaked = None
        if settings.soak_calls:
            print(f"bench: soak, {settings.soak_calls:,} mixed calls", file=sys.stderr, flush=True)
            soaked = soak.soak(endpoints, settings.soak_calls, settings.soak_streams)
    context = [
        (
            "run",
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, took {time.monotonic() - started:.0f} s; "
            f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}",
        ),
        *machine.description(),
        (
            "database",
            f"PostgreSQL {endpoints.postgres_version} (embedded pgserver), one pool shared by "
            "every server",
        ),
        (
            "data",
            f"{seeded.count:,} tasks with {seeded.transitions:,} history rows, written in "
            f"{seeded.seconds:.1f} s by SQL over the owner connection (bypassing the API, for "
            "speed); before each TransitionCommand window, a pool of fresh PENDING commands "
            "likewise; every command deleted again after each run",
        ),
        ("load", generator.name),
        ("", command_bench.transitions_description()),
        (
            "method",
            f"{settings.seconds} s per side after {settings.warmup_seconds} s warm-up, "
            f"{settings.rounds} round(s), order alternated; servers and load generator share "
            "the machine; access log off on every side",
        ),
        (
            "walks",
            f"after {settings.warmup_seconds} s of warm-up each, {settings.walks} walk(s) per "
            "protocol, alternated, one page at a time on one kept-alive connection, a page "
            "timed from its request to the last byte of its answer; then each depth band's "
            f"pages read again by their tokens, {tasks.DEPTH_PASSES} times, interleaved",
        ),
    ]
    print(
        report.render(
            context,
            compared,
            alone,
            results,
            [(scenario, command_bench.generator(scenario).short) for scenario in command_scenarios],
            command_results,
            walked,
            settings.walks,
        )
    )
    if soaked is not None:
        print(soak.render(soaked))
    robot_link = None
    if robot_settings.enabled:  # last, on its own servers and database (bench/robots.py)
        print("bench: the robot link", file=sys.stderr, flush=True)
        robot_link = robots.run(robot_settings)
        print(robots.render(robot_link))
    watch_fan_out = None
    if watch_settings.enabled:  # after it, likewise on servers and a database of its own
        print("bench: the watch fan-out", file=sys.stderr, flush=True)
        watch_fan_out = watches.run(watch_settings)
        print(watches.render(watch_fan_out))
    trigger_bench = None
    if trigger_settings.enabled:  # after it, likewise on servers and a database of its own
        print("bench: triggers", file=sys.stderr, flush=True)
        trigger_bench = triggers.run(trigger_settings)
        print(triggers.render(trigger_bench))
    session_bench = None
    if session_settings.enabled:  # last, likewise on servers and a database of its own
        print("bench: agent sessions", file=sys.stderr, flush=True)
        session_bench = sessions.run(session_settings)
        print(sessions.render(session_bench))
    broken = [side.label for side, runs in results.items() if any(run.broken for run in runs)]
    broken += [
        scenario.title for scenario, runs in command_results.items() if any(r.broken for r in runs)
    ]
    if soaked is not None and soaked.failed:
        broken.append(f"the soak ({soaked.failed} calls)")
    if robot_link is not None and robot_link.broken:
        broken.append(f"the robot link ({'; '.join(robot_link.broken)})")
    if watch_fan_out is not None and watch_fan_out.broken:
        broken.append(f"the watch fan-out ({'; '.join(watch_fan_out.broken)})")
    if trigger_bench is not None and trigger_bench.broken:
        broken.append(f"triggers ({'; '.join(trigger_bench.broken)})")
    if session_bench is not None and session_bench.broken:
        broken.append(f"agent sessions ({'; '.join(session_bench.broken)})")
    if broken:
        print(f"bench: requests failed under load on: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0
