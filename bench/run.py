"""The benchmark run: start the servers, verify every side, load them in turn, print the report.

Sides are loaded one at a time while the others idle, in rounds; each round reverses the order
within a comparison, so a slow drift of the machine (caches, the database's own state, thermal)
does not always favour the same side. Exits 0 whatever the ratios are; 1 only when something
broke (a server did not start, a side answered wrongly, requests failed under load).
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

from bench import machine, report, verify
from bench.load import ByWire, H2Load, LoadGenerator, LoadResult, Wrk
from bench.pyload import AsyncioLoad
from bench.scenarios import Comparison, Load, Side, Wire, comparisons, extras
from bench.servers import Endpoints

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

    @classmethod
    def from_env(cls) -> BenchSettings:
        def number(name: str, default: int, minimum: int = 1) -> int:
            value = int(float(os.environ.get(name) or default))
            if value < minimum:
                raise SystemExit(f"bench: {name} must be at least {minimum}")
            return value

        return cls(
            seconds=number("BENCH_SECONDS", 10),
            warmup_seconds=number("BENCH_WARMUP_SECONDS", 2, minimum=0),
            rounds=number("BENCH_ROUNDS", 3),
            grpc_load=Load(number("BENCH_GRPC_CONNECTIONS", 8), number("BENCH_GRPC_STREAMS", 16)),
            http1_load=Load(number("BENCH_HTTP1_CONNECTIONS", 32), 1),
            generator=os.environ.get("BENCH_LOAD", "").lower(),
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
    endpoints: Endpoints, compared: list[Comparison], alone: list[tuple[str, Side]]
) -> None:
    for comparison in compared:
        verify.check_comparison(comparison, endpoints)
    for _, side in alone:
        verify.check_grpc_web(side, endpoints)


def measure(
    generator: LoadGenerator,
    settings: BenchSettings,
    compared: list[Comparison],
    alone: list[tuple[str, Side]],
) -> dict[Side, list[LoadResult]]:
    results: dict[Side, list[LoadResult]] = {}
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
                f"  round {round_number + 1}/{settings.rounds}  {side.label:<24} "
                f"{side.wire.value:<8} {result.requests_per_second:>8,.0f} req/s"
                + (f"  {result.failed} FAILED" if result.failed else ""),
                file=sys.stderr,
                flush=True,
            )
    return results


def main() -> int:
    settings = BenchSettings.from_env()
    generator = choose_generator(settings)
    try:
        return run(settings, generator)
    except RuntimeError as exc:  # servers, verification or a load tool: something broke
        print(f"bench: {exc}", file=sys.stderr)
        return 1


def run(settings: BenchSettings, generator: LoadGenerator) -> int:
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # another busy process on the machine skews every figure
    with server_process() as endpoints:
        compared = comparisons(endpoints, settings.grpc_load, settings.http1_load)
        alone = extras(endpoints, settings.http1_load)
        verify_all(endpoints, compared, alone)
        print(
            "bench: every side verified (grpc-status 0 in trailers, same answers)", file=sys.stderr
        )
        results = measure(generator, settings, compared, alone)
        verify_all(endpoints, compared, alone)  # still right after the load
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
        ("load", generator.name),
        (
            "method",
            f"{settings.seconds} s per side after {settings.warmup_seconds} s warm-up, "
            f"{settings.rounds} round(s), order alternated; servers and load generator share "
            "the machine; access log off on every side",
        ),
    ]
    print(report.render(context, compared, alone, results))
    broken = [side.label for side, runs in results.items() if any(run.broken for run in runs)]
    if broken:
        print(f"bench: requests failed under load on: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0
