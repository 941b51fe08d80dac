"""Watch fan-out: BENCH_WATCHERS (200) watchers of one busy host, each change delivered to every
one of them. `python -m bench.watches` runs it alone and prints its report; `make bench` runs it
after the robot link and prints the same section.

It runs as bench/robots.py does, and with its parts: an embedded PostgreSQL of its own, a fresh
database, `roz-server serve` processes with the production settings but a rate limit that never
interferes, WARNING logs and no drain delay, and the host written through the repositories over
the owner connection. The watchers are native gRPC WatchHost streams from grpcio asyncio clients
in load processes of their own (`python -m bench.watches load`, driven over stdin and stdout),
WATCHERS_PER_CHANNEL on each channel, each channel its own connection; each starts with the
host's snapshot, and one whose stream ends resumes after the last sequence it was sent, as a
watcher does. Once every watcher has its snapshot, the orchestrator creates commands for the
host (CreateCommand, gRPC, open loop) at BENCH_WATCH_RATE a second (50) for BENCH_WATCH_SECONDS
(10) after WARMUP_SECONDS; each makes a command.created entry that every watcher is sent.

Latency is per watcher and event: from the moment the create call returned (after its commit) to
the watcher's receipt, on one clock (time.time() in both processes), matched by the entry's
subject (the command id); p50, p99 and max over every (watcher, created command) pair of the
measured window, and from the moment the create was sent. Every watcher must see every
command.created of the run exactly once, its changes in increasing sequence. Once with the
watchers on the process the commands are created through, once with them on a second process,
where the entries reach them through NOTIFY roz_audit. The CPU each process used while the
commands were written says whether the watchers' side kept up.

py-spy (.venv/bin/py-spy or on PATH) samples the servers while the commands are written, without
stopping them; the profile is printed when the goal is missed. BENCH_WATCH=0 skips it all.
Exits 1 only when something broke: a server did not start, a watcher had no snapshot, missed,
repeated or reordered a change, a load process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from roz.v1 import commands_pb2_grpc, watch_pb2, watch_pb2_grpc

from bench import machine
from bench.load import percentile_ms
from bench.robots import (
    CHANNEL_OPTIONS,
    SERVER_SETTINGS,
    LoadClient,
    Profile,
    ServerProcess,
    _auth,
    _cluster,
    _create_request,
    _make_fleet,
    _profile_lines,
    _scratch_database,
    cpu_seconds,
    profiling,
    py_spy,
)
from server.domain.api_keys import mint_secret

# The goal, for both placements of the watchers.
FAN_OUT_P99_GOAL_MS = 50.0

# The watchers' side: two load processes share the decoding on two cores.
LOAD_PROCESSES = 2
WATCHERS_PER_CHANNEL = 50  # the server allows 100 streams per connection
RESUME_PAUSE_SECONDS = 0.1

WARMUP_SECONDS = 2
READY_TIMEOUT_SECONDS = 60.0
DELIVERY_TIMEOUT_SECONDS = 30.0  # past the last create: beyond a lost wake-up's recheck (5 s)
CREATED = "command.created"


@dataclass(frozen=True)
class WatchBenchSettings:
    enabled: bool
    watchers: int
    rate: int  # creates a second
    seconds: int  # measured, after WARMUP_SECONDS

    @classmethod
    def from_env(cls) -> WatchBenchSettings:
        def number(name: str, default: int, minimum: int = 1) -> int:
            value = int(float(os.environ.get(name) or default))
            if value < minimum:
                raise SystemExit(f"bench: {name} must be at least {minimum}")
            return value

        return cls(
            enabled=float(os.environ.get("BENCH_WATCH") or 1) > 0,
            watchers=number("BENCH_WATCHERS", 200),
            rate=number("BENCH_WATCH_RATE", 50),
            seconds=number("BENCH_WATCH_SECONDS", 10),
        )


def _progress(message: str) -> None:
    print(f"bench: watches: {message}", file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanOutResult:
    label: str
    watchers: int
    rate: int
    written: int  # creates, the warm-up's included
    measured: int  # creates after the warm-up
    latency_us: list[int]  # each watcher's receipt of each measured create, from its return
    from_sent_us: list[int]  # the same, from when the create was sent
    first_us: list[int]  # each measured create's first watcher's receipt, from its return
    last_us: list[int]  # and its last watcher's
    slowest: tuple[int, int]  # the create whose last watcher waited longest: its place, that wait
    create_us: list[int]  # each measured create, sent to returned
    completed_rate: float  # creates answered a second, over the measured window
    delivered_per_second: float  # (watcher, measured create) receipts a second
    missing: int  # (watcher, create) pairs never delivered, the warm-up's included
    short_watchers: int  # watchers that missed at least one
    duplicated: int  # deliveries beyond the first of a create to a watcher
    disordered: int  # watchers whose changes' sequences did not increase
    resumed: int  # streams that ended and were resumed
    why: list[tuple[str, int]]  # why, the commonest
    cpu: list[tuple[str, float]]  # each process's CPU while writing, and the machine's, in cores

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.latency_us, 0.99)

    @property
    def missed(self) -> bool:
        return self.p99_ms is None or self.p99_ms > FAN_OUT_P99_GOAL_MS

    @property
    def broken(self) -> str:
        """What went wrong beyond the latency, or ""."""
        wrong = []
        if self.missing:
            wrong.append(
                f"{self.missing:,} (watcher, command) deliveries never came, to "
                f"{self.short_watchers} watchers"
            )
        if self.duplicated:
            wrong.append(f"{self.duplicated:,} deliveries repeated")
        if self.disordered:
            wrong.append(f"{self.disordered} watchers saw sequences out of order")
        return "; ".join(wrong)


@dataclass
class WatchResult:
    settings: WatchBenchSettings
    postgres_version: str = ""
    runs: list[FanOutResult] = field(default_factory=list)
    profiles: dict[str, list[Profile]] = field(default_factory=dict)  # by missed run
    profiler: str = ""
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0


# -- the watchers: load processes --------------------------------------------------------------


class _Watchers:
    """The watchers of one load process, each on its own WatchHost stream."""

    def __init__(self) -> None:
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: dict[int, Any] = {}
        # Per watcher: (sequence, kind, subject id, time received) of each change.
        self.changes: list[list[tuple[int, str, str, float]]] = []
        self.snapshots = 0
        self.created = 0  # command.created receipts, over every watcher
        self.why: Counter[str] = Counter()
        self.stopping = False

    def watch(self, target: str, key: str, host_id: str, count: int) -> None:
        for _ in range(count):
            index = len(self.changes)
            if index % WATCHERS_PER_CHANNEL == 0:
                self.channels.append(grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS))
            self.changes.append([])
            stub = watch_pb2_grpc.WatchServiceStub(self.channels[-1])
            self.tasks.append(asyncio.create_task(self._run(index, stub, key, host_id)))

    async def _run(self, index: int, stub: Any, key: str, host_id: str) -> None:
        seen = self.changes[index]
        after: int | None = None  # the first watch starts with a snapshot
        while not self.stopping:
            request = watch_pb2.WatchHostRequest(host_id=host_id)
            if after is not None:
                request.after_sequence = after
            call = stub.WatchHost(request, metadata=_auth(key))
            self.calls[index] = call
            try:
                async for event in call:
                    received = time.time()
                    after = event.sequence
                    which = event.WhichOneof("event")
                    if which == "change":
                        change = event.change
                        seen.append((event.sequence, change.kind, change.subject_id, received))
                        if change.kind == CREATED:
                            self.created += 1
                    elif which == "host":
                        self.snapshots += 1
                self.why["the stream ended"] += 1  # a host's watch never ends by itself
            except grpc.aio.AioRpcError as error:
                if self.stopping:
                    return
                self.why[f"{error.code().name}: {error.details()}"[:160]] += 1
            await asyncio.sleep(RESUME_PAUSE_SECONDS)

    def status(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "created": self.created, "why": dict(self.why)}

    async def stop(self) -> None:
        self.stopping = True
        for call in self.calls.values():
            call.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close(None) for channel in self.channels))


async def _serve_load() -> None:
    """A load process: one JSON request a line on stdin, one JSON answer a line on stdout."""
    watchers = _Watchers()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            op = request["op"]
            answer: dict[str, Any] = {}
            if op == "watch":
                watchers.watch(
                    request["target"], request["key"], request["host_id"], request["count"]
                )
            elif op == "status":
                answer = watchers.status()
            elif op == "changes":
                answer = {"changes": watchers.changes}
            elif op == "stop":
                await watchers.stop()
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if op == "stop":
                return
    finally:
        await watchers.stop()


class Watchers:
    """`count` watchers of one host on `target`, spread over LOAD_PROCESSES load processes."""

    def __init__(self, target: str, key: str, host_id: str, count: int) -> None:
        self.count = count
        self.clients: list[LoadClient] = []
        self.why: Counter[str] = Counter()  # as of the last status
        processes = min(LOAD_PROCESSES, count)
        try:
            for number in range(processes):
                client = LoadClient("bench.watches", "a watcher load process")
                self.clients.append(client)
                share = count // processes + (number < count % processes)
                client.ask("watch", target=target, key=key, host_id=host_id, count=share)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [client.process.pid for client in self.clients]

    def status(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        why: Counter[str] = Counter()
        for client in self.clients:
            answer = client.ask("status")
            why.update(answer.pop("why"))
            totals.update(answer)
        self.why = why
        return dict(totals)

    def wait(self, server: ServerProcess, what: str, goal: int, timeout: float) -> int:
        """Until the load processes count `goal` of `what` (or `timeout`); their count."""
        deadline = time.monotonic() + timeout
        while (count := self.status()[what]) < goal and time.monotonic() < deadline:
            server.check()
            time.sleep(0.1)
        return count

    def changes(self) -> list[list[tuple[int, str, str, float]]]:
        """Every watcher's changes: (sequence, kind, subject id, time received)."""
        return [
            [(sequence, kind, subject, at) for sequence, kind, subject, at in watcher]
            for client in self.clients
            for watcher in client.ask("changes")["changes"]
        ]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> Watchers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- the writer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Created:
    command_id: str
    sent: float
    returned: float
    measured: bool  # after the warm-up


async def _write(
    target: str, admin_key: str, host_id: str, rate: int, seconds: int
) -> list[_Created]:
    """`rate` CreateCommand calls a second for WARMUP_SECONDS + `seconds`, each sent on its
    schedule whatever the others are doing."""
    created: list[_Created] = []
    warmup = rate * WARMUP_SECONDS
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()  # the connection is up before the clock starts
        stub = commands_pb2_grpc.CommandServiceStub(channel)

        async def one(number: int) -> None:
            sent = time.time()
            command = await stub.CreateCommand(
                _create_request(host_id), metadata=_auth(admin_key), timeout=30
            )
            created.append(_Created(command.id, sent, time.time(), number >= warmup))

        loop = asyncio.get_running_loop()
        start = loop.time()
        calls = []
        for number in range(warmup + rate * seconds):
            await asyncio.sleep(max(0.0, start + number / rate - loop.time()))
            calls.append(asyncio.create_task(one(number)))
        await asyncio.gather(*calls)
    return created


# -- a run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanOutSetup:
    label: str
    watch_server: ServerProcess  # the process holding the watches
    write_server: ServerProcess  # the process the commands are created through
    servers: Sequence[tuple[str, ServerProcess]]  # every process, labelled, for CPU and py-spy
    admin_key: str
    host_id: str
    root: Path


def fan_out(result: WatchResult, setup: FanOutSetup) -> None:
    settings = result.settings
    watchers_at = setup.watch_server
    _progress(f"{setup.label}: connecting {settings.watchers} watchers")
    with Watchers(watchers_at.target, setup.admin_key, setup.host_id, settings.watchers) as ws:
        ready = ws.wait(watchers_at, "snapshots", ws.count, READY_TIMEOUT_SECONDS)
        if ready < ws.count:
            result.broken.append(
                f"{setup.label}: {ws.count - ready} of {ws.count} watchers had no snapshot "
                f"within {READY_TIMEOUT_SECONDS:.0f} s ({_reasons(ws.why.most_common(3))})"
            )
            return
        _progress(
            f"{setup.label}: {settings.rate} creates/s for {WARMUP_SECONDS} s of warm-up and "
            f"{settings.seconds} s measured"
        )
        servers = [(label, server.pid) for label, server in setup.servers]
        processes = servers + [(f"watchers {n + 1}", pid) for n, pid in enumerate(ws.pids)]
        with profiling(servers, setup.root) as profiles:
            before = [cpu_seconds(pid) for _, pid in processes]
            busy_before = _busy_seconds()
            started = time.monotonic()
            created = asyncio.run(
                _write(
                    setup.write_server.target,
                    setup.admin_key,
                    setup.host_id,
                    settings.rate,
                    settings.seconds,
                )
            )
            elapsed = time.monotonic() - started
            cpu = [
                (label, (cpu_seconds(pid) - was) / elapsed)
                for (label, pid), was in zip(processes, before, strict=True)
            ]
            cpu.append(("the whole machine", (_busy_seconds() - busy_before) / elapsed))
            ws.wait(watchers_at, "created", ws.count * len(created), DELIVERY_TIMEOUT_SECONDS)
        run = _fan_out_result(setup.label, settings, created, ws.changes(), ws.why, cpu)
    result.runs.append(run)
    if run.broken:
        result.broken.append(f"{setup.label}: {run.broken}")
    if run.missed and profiles:
        result.profiles[setup.label] = profiles
    _progress(
        f"{setup.label}: p50 / p99 / max "
        f"{_ms(percentile_ms(run.latency_us, 0.5))} / {_ms(run.p99_ms)} / "
        f"{_ms(max(run.latency_us, default=0) / 1000)} ms"
    )


def _busy_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (/proc/stat): other processes
    on it (a test suite, say) take the servers' share."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _fan_out_result(
    label: str,
    settings: WatchBenchSettings,
    created: Sequence[_Created],
    changes: Sequence[Sequence[tuple[int, str, str, float]]],
    why: Counter[str],
    cpu: list[tuple[str, float]],
) -> FanOutResult:
    """Each watcher's changes against the creates: latency, and what was missed or repeated."""
    measured = sorted((made for made in created if made.measured), key=lambda made: made.sent)
    every = {made.command_id for made in created}
    latency: list[int] = []
    from_sent: list[int] = []
    spread: dict[str, tuple[float, float]] = {}  # a measured create's first and last receipt
    last_receipt = 0.0
    missing = short = duplicated = disordered = 0
    for watcher in changes:
        sequences = [sequence for sequence, *_ in watcher]
        if any(b <= a for a, b in itertools.pairwise(sequences)):
            disordered += 1
        receipts: dict[str, float] = {}
        times: Counter[str] = Counter()
        for _, kind, subject, at in watcher:
            if kind == CREATED and subject in every:
                times[subject] += 1
                receipts.setdefault(subject, at)
        duplicated += sum(count - 1 for count in times.values())
        lacking = len(every) - len(receipts)
        missing += lacking
        short += lacking > 0
        for made in measured:
            received = receipts.get(made.command_id)
            if received is not None:
                latency.append(round((received - made.returned) * 1e6))
                from_sent.append(round((received - made.sent) * 1e6))
                last_receipt = max(last_receipt, received)
                first, last = spread.get(made.command_id, (received, received))
                spread[made.command_id] = (min(first, received), max(last, received))
    window = (last_receipt - measured[0].returned) if measured and latency else 0.0
    order = sorted(created, key=lambda made: made.sent)
    firsts = [(spread[m.command_id][0] - m.returned, m) for m in measured if m.command_id in spread]
    lasts = [(spread[m.command_id][1] - m.returned, m) for m in measured if m.command_id in spread]
    slowest = max(lasts, key=lambda pair: pair[0], default=None)
    return FanOutResult(
        label=label,
        watchers=len(changes),
        rate=settings.rate,
        written=len(created),
        measured=len(measured),
        latency_us=latency,
        from_sent_us=from_sent,
        first_us=[round(seconds * 1e6) for seconds, _ in firsts],
        last_us=[round(seconds * 1e6) for seconds, _ in lasts],
        slowest=(order.index(slowest[1]) + 1, round(slowest[0] * 1e6)) if slowest else (0, 0),
        create_us=[round((made.returned - made.sent) * 1e6) for made in measured],
        completed_rate=len(measured)
        / max(1e-9, max((made.returned for made in measured), default=0) - measured[0].sent)
        if measured
        else 0.0,
        delivered_per_second=len(latency) / window if window > 0 else 0.0,
        missing=missing,
        short_watchers=short,
        duplicated=duplicated,
        disordered=disordered,
        resumed=sum(why.values()),
        why=why.most_common(3),
        cpu=cpu,
    )


# -- the whole ----------------------------------------------------------------------------------


def run(settings: WatchBenchSettings) -> WatchResult:
    result = WatchResult(settings)
    result.profiler = py_spy() or "py-spy is not installed: a missed goal goes unprofiled"
    started = time.monotonic()
    result.load_before = os.getloadavg()[0]  # another busy process on the machine skews it all
    root = Path(tempfile.mkdtemp(prefix="roz-bench-watches-"))
    try:
        with _cluster(root) as cluster:
            with psycopg.connect(cluster, autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                result.postgres_version = str(row[0]) if row else "unknown"
            _serve(result, cluster, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.monotonic() - started
    result.load_after = os.getloadavg()[0]
    return result


def _serve(result: WatchResult, cluster: str, root: Path) -> None:
    with (
        _scratch_database(cluster, "roz_bench_watches") as dsn,
        contextlib.ExitStack() as servers,
    ):
        admin_key = mint_secret()
        a = ServerProcess("A", dsn, admin_key, root)
        servers.callback(a.stop)
        a.start()
        b = ServerProcess("B", dsn, admin_key, root)
        servers.callback(b.stop)
        b.start()
        _, fleet = asyncio.run(_make_fleet(dsn, admin_key, 1, "watched"))
        host_id = fleet[0][0]
        fan_out(
            result,
            FanOutSetup(
                "watchers on the writing process",
                a,
                a,
                [("A (writes, watches)", a)],
                admin_key,
                host_id,
                root,
            ),
        )
        fan_out(
            result,
            FanOutSetup(
                "watchers on another process",
                b,
                a,
                [("A (writes)", a), ("B (watches)", b)],
                admin_key,
                host_id,
                root,
            ),
        )


# -- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _reasons(why: Sequence[tuple[str, int]]) -> str:
    return "; ".join(f"{count:,}x {reason}" for reason, count in why) or "no stream failed"


def render(result: WatchResult) -> str:
    settings = result.settings
    lines = [
        "",
        f"## Watch fan-out: {settings.watchers} watchers of one busy host",
        "",
        "| figure | value | goal | result |",
        "|---|---|---|---|",
    ]
    for run in result.runs:
        checks = "none missed, repeated or out of order" if not run.broken else run.broken
        lines.append(
            f"| {run.watchers} watchers, {run.label}, {run.rate} creates/s: create returned → "
            f"watcher, p50 / p99 / max | {_ms(percentile_ms(run.latency_us, 0.5))} / "
            f"{_ms(run.p99_ms)} / {_ms(max(run.latency_us, default=0) / 1000)} ms (from send: "
            f"{_ms(percentile_ms(run.from_sent_us, 0.5))} / "
            f"{_ms(percentile_ms(run.from_sent_us, 0.99))} ms; each command's first watcher "
            f"p50 / p99 {_ms(percentile_ms(run.first_us, 0.5))} / "
            f"{_ms(percentile_ms(run.first_us, 0.99))} ms, its last "
            f"{_ms(percentile_ms(run.last_us, 0.5))} / {_ms(percentile_ms(run.last_us, 0.99))} "
            f"ms; the slowest, command {run.slowest[0]:,} of {run.written:,}: "
            f"{_ms(run.slowest[1] / 1000)} ms; create p99 "
            f"{_ms(percentile_ms(run.create_us, 0.99))} ms; creates answered at "
            f"{run.completed_rate:,.0f}/s; {len(run.latency_us):,} of "
            f"{run.measured * run.watchers:,} (watcher, command) pairs delivered, "
            f"{run.delivered_per_second:,.0f}/s; of all {run.written:,} creates: {checks}; "
            f"streams resumed: {_reasons(run.why) if run.resumed else 'none'}) | "
            f"p99 <= {FAN_OUT_P99_GOAL_MS:.0f} ms | {'BELOW GOAL' if run.missed else 'PASS'} |"
        )
        lines.append(
            f"| CPU while writing, {run.label} | "
            + ", ".join(f"{label} {share:.2f}" for label, share in run.cpu)
            + f" of {machine.cores()} | | |"
        )
    lines += [
        "",
        textwrap.fill(
            f"PostgreSQL {result.postgres_version} (embedded pgserver), one database shared by "
            f"two `roz-server serve` processes with production settings but "
            f"{', '.join(f'{k}={v}' for k, v in SERVER_SETTINGS.items())}; one host. Watchers: "
            f"native gRPC WatchHost streams from grpcio asyncio in {LOAD_PROCESSES} load "
            f"processes, {WATCHERS_PER_CHANNEL} per connection, each from the host's snapshot. "
            f"Writes: CreateCommand (gRPC, open loop) at {settings.rate}/s through process A for "
            f"{settings.seconds} s after {WARMUP_SECONDS} s of warm-up, each a command.created "
            "entry; latency from time.time() as the create returned to the watcher's, per "
            "(watcher, command) pair of the measured window; every watcher checked for every "
            "create of the run exactly once, in increasing sequence. Servers, PostgreSQL, the "
            f"watchers and the writer share {machine.cores()}; took {result.seconds:.0f} s, load "
            f"average {result.load_before:.2f} before and {result.load_after:.2f} after.",
            width=100,
        ),
    ]
    if result.profiles:
        lines += [
            "",
            f"What dominated each missed goal: py-spy ({result.profiler}) at 100 Hz, on the "
            "servers while the commands were written, without stopping them. Own time is a "
            "Python frame's and the C code's below it:",
        ]
        for label, profiles in result.profiles.items():
            for profile in profiles:
                lines += _profile_lines(f"watch fan-out, {label}", profile)
    elif any(run.missed for run in result.runs):
        lines += ["", result.profiler]
    if result.broken:
        lines += ["", "BROKEN: " + "; ".join(result.broken)]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) == ["load"]:
        asyncio.run(_serve_load())
        return 0
    # pgserver asks platformdirs for a runtime directory it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    settings = WatchBenchSettings.from_env()
    if not settings.enabled:
        print("bench: watches: BENCH_WATCH=0, skipped", file=sys.stderr)
        return 0
    try:
        result = run(settings)
    except RuntimeError as exc:
        print(f"bench: watches: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    return 1 if result.broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
