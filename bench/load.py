"""Load generators: h2load for HTTP/2 (gRPC), wrk for HTTP/1.1, and what every generator reports.

Both are C and run in a process of their own. h2load multiplexes streams on each connection as
a gRPC client does; its `--log-file` has one line per request of the measured window (not the
warm-up), from which p50/p99 are computed. Its HTTP/1.1 mode cannot read Hypercorn's status line
(an empty reason phrase: every response counts as status 0), so HTTP/1.1 goes through wrk,
whose Lua `done` hook reports the exact counts and percentiles.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.scenarios import Side, Wire

# Beyond the run itself: start-up, and the last requests of the window finishing.
_SLACK_SECONDS = 120


@dataclass(frozen=True)
class LoadResult:
    """One side loaded for one measured window."""

    requests_per_second: float
    succeeded: int  # HTTP 2xx (the asyncio generator: gRPC OK or HTTP 2xx)
    failed: int  # anything else: other statuses, socket errors, resets, timeouts
    p50_ms: float | None
    p99_ms: float | None

    @property
    def broken(self) -> bool:
        return self.failed > 0 or self.succeeded == 0


class LoadGenerator(Protocol):
    name: str
    short: str  # a word for a table cell: "h2load"

    def run(self, side: Side, seconds: int, warmup_seconds: int) -> LoadResult: ...


class LoadToolError(RuntimeError):
    """A load tool did not run, or printed something this module cannot read."""


def percentile_ms(latencies_us: Sequence[int], fraction: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not latencies_us:
        return None
    ordered = sorted(latencies_us)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1000


def median_rps(results: Sequence[LoadResult]) -> float:
    return statistics.median(result.requests_per_second for result in results)


def median_ms(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def tool_version(args: list[str]) -> str:
    completed = subprocess.run(args, capture_output=True, text=True)
    output = (completed.stdout or completed.stderr).strip()
    first = output.splitlines()[0] if output else args[0]
    return first.split(" Copyright")[0]


def run_tool(args: list[str], seconds: int) -> str:
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=seconds + _SLACK_SECONDS
    )
    if completed.returncode != 0:
        raise LoadToolError(f"{args[0]} exited {completed.returncode}: {completed.stderr}")
    return completed.stdout


_FINISHED = re.compile(r"^finished in [\d.]+\w*, ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)


class H2Load:
    """HTTP/2 with prior knowledge: --clients connections x --max-concurrent-streams each."""

    short = "h2load"

    def __init__(self, executable: str) -> None:
        self._executable = executable
        self.name = f"{tool_version([executable, '--version'])} (1 thread)"

    @classmethod
    def find(cls) -> H2Load | None:
        executable = shutil.which("h2load")
        return cls(executable) if executable else None

    def run(self, side: Side, seconds: int, warmup_seconds: int) -> LoadResult:
        if side.wire is not Wire.H2C:
            raise ValueError("h2load drives the HTTP/2 sides only (see the module docstring)")
        with tempfile.TemporaryDirectory(prefix="roz-bench-h2load-") as scratch:
            log_file = Path(scratch) / "requests.tsv"
            args = [
                self._executable,
                "--threads=1",
                f"--clients={side.load.connections}",
                f"--max-concurrent-streams={side.load.streams}",
                f"--duration={seconds}",
                f"--warm-up-time={warmup_seconds}",
                f"--log-file={log_file}",
            ]
            args += [f"--header={name}: {value}" for name, value in side.headers]
            if side.body is not None:
                body_file = Path(scratch) / "body.bin"
                body_file.write_bytes(side.body)
                args.append(f"--data={body_file}")  # makes the request a POST
            args.append(side.url)
            output = run_tool(args, seconds + warmup_seconds)
            latencies = _h2load_latencies(log_file)
        return _h2load_result(output, latencies)


def _h2load_latencies(log_file: Path) -> list[int]:
    """Microseconds per 2xx request; the columns are start time, status, duration."""
    durations = []
    for line in log_file.read_text().splitlines():
        columns = line.split("\t")
        if len(columns) >= 3 and columns[1].startswith("2"):
            durations.append(int(columns[2]))
    return durations


def _h2load_result(output: str, latencies: list[int]) -> LoadResult:
    finished, requests, status = (
        pattern.search(output) for pattern in (_FINISHED, _REQUESTS, _STATUS)
    )
    if finished is None or requests is None or status is None:
        raise LoadToolError(f"unexpected h2load output:\n{output}")
    # "failed" covers resets, timeouts and 4xx/5xx; h2load counts a 3xx as a success, we do
    # not. Requests still in flight when the window closes are neither.
    failed = int(requests.group(5)) + int(status.group(2))
    return LoadResult(
        requests_per_second=float(finished.group(1)),
        succeeded=int(status.group(1)),
        failed=failed,
        p50_ms=percentile_ms(latencies, 0.50),
        p99_ms=percentile_ms(latencies, 0.99),
    )


# wrk's own summary rounds and mixes units; this hook prints exact numbers on one line.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d\\n", summary.duration,
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
_WRK_LINE = re.compile(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", re.M)


def lua_string(data: bytes) -> str:
    """A Lua string literal holding exactly these bytes (decimal escapes are 8-bit clean)."""
    return '"' + "".join(f"\\{byte:03d}" for byte in data) + '"'


def wrk_script(side: Side) -> str:
    lines = [f"wrk.method = {lua_string(side.method.encode())}"]
    if side.body is not None:
        lines.append(f"wrk.body = {lua_string(side.body)}")
    lines += [
        f"wrk.headers[{lua_string(name.encode())}] = {lua_string(value.encode())}"
        for name, value in side.headers
    ]
    return "\n".join(lines) + "\n" + WRK_REPORT


def wrk_result(output: str) -> LoadResult:
    """The figures of the line the `done` hook above printed."""
    match = _WRK_LINE.search(output)
    if match is None:
        raise LoadToolError(f"unexpected wrk output:\n{output}")
    duration_us, requests, connect, read, write, status, timeout, p50, p99 = (
        int(value) for value in match.groups()
    )
    failed = connect + read + write + status + timeout
    return LoadResult(
        requests_per_second=requests / (duration_us / 1e6),
        succeeded=requests - status,  # wrk counts 3xx as fine; verify saw a 200 first
        failed=failed,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
    )


class Wrk:
    """HTTP/1.1 keep-alive: --connections, each with one request in flight."""

    short = "wrk"

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.name = f"{tool_version([executable, '--version'])} (1 thread)"

    @classmethod
    def find(cls) -> Wrk | None:
        executable = shutil.which("wrk")
        return cls(executable) if executable else None

    def run(self, side: Side, seconds: int, warmup_seconds: int) -> LoadResult:
        if side.wire is not Wire.HTTP1:
            raise ValueError("wrk speaks HTTP/1.1 only")
        with tempfile.TemporaryDirectory(prefix="roz-bench-wrk-") as scratch:
            script = Path(scratch) / "request.lua"
            script.write_text(wrk_script(side))
            if warmup_seconds:  # wrk has no warm-up phase of its own
                self._wrk(side, script, warmup_seconds)
            return self._wrk(side, script, seconds)

    def _wrk(self, side: Side, script: Path, seconds: int) -> LoadResult:
        args = [
            self.executable,
            "--threads=1",
            f"--connections={side.load.connections}",
            f"--duration={seconds}s",
            "--timeout=30s",
            f"--script={script}",
            side.url,
        ]
        return wrk_result(run_tool(args, seconds))


class ByWire:
    """One generator per wire protocol, used as one."""

    def __init__(self, generators: dict[Wire, LoadGenerator]) -> None:
        self._generators = generators
        self.short = "/".join(generator.short for generator in generators.values())
        self.name = "; ".join(
            f"{wire.value}: {generator.name}" for wire, generator in generators.items()
        )

    def run(self, side: Side, seconds: int, warmup_seconds: int) -> LoadResult:
        return self._generators[side.wire].run(side, seconds, warmup_seconds)

    def for_wire(self, wire: Wire) -> LoadGenerator:
        return self._generators[wire]
