"""The robot link under load: idle streams on one process, dispatch latency, a reconnect storm,
an environment's e-stop reaching its robots, and what NOTIFY costs a commit. `python -m
bench.robots` runs it alone and prints its report; `make bench` runs it last and prints the same
section at the end of its report.

Everything runs on an embedded PostgreSQL of its own (pgserver in a temporary directory, as
bench/servers.py does), in a fresh database that every server process shares through
DATABASE_URL. The servers are `roz-server serve` processes with the production settings, except
a rate limit that never interferes, WARNING logs (no line per link opened) and no drain delay
on SIGTERM. The hosts and their robot keys are written through the repositories over the owner
connection, as bench/servers.py writes its fixtures (real keys, minted and hashed by the server's
code; 20,000 API calls would take minutes on two cores). Robots are grpcio asyncio clients in
load processes of their own (`python -m bench.robots load`, driven over stdin and stdout), at
most 100 streams on each channel (what the server allows per HTTP/2 connection), each channel
its own connection; a robot whose stream ends says hello again after a random pause of up to
0.5 s, naming the last sequence it received, and it acks every delivery and every e-stop state it
is sent (a welcome's only when a latch over it has changed: one never engaged is not news).

1. Idle: BENCH_ROBOTS robots (10,000), each its own host and key, connect to one process (32
   hellos in flight per load process), heartbeat at the interval the welcome names (10 s),
   spread evenly, and read keepalives. Streams held, the server's RSS before and after (per
   stream), its CPU over 30 s of idling (utime + stime from /proc, after one heartbeat
   interval of settling), and the time to connect them all.
2. Dispatch: 200 CreateCommand/s (gRPC, open loop) for BENCH_DISPATCH_SECONDS (10) after 2 s of
   warm-up, over 50 robots; latency from the moment the create call returned (after the commit)
   to the robot's receipt, on one clock (time.time() in both processes), and from the moment it
   was sent. Once with the robots on the process the commands are created through, once with
   them on a second process on the same database. When the servers do not keep up with 200/s,
   again at 20/s: the latency without the queueing.
3. Storm: BENCH_STORM_ROBOTS robots (2,000) on one process, which is stopped (SIGTERM); while it
   is down one command per robot is created through the second process; then it starts again on
   the same port. Time from its readiness (/ready answers 200) until every robot has said hello,
   been welcomed and received its command.
4. E-stop: BENCH_ESTOP_ROBOTS robots (1,000), every host in one environment, connect to one
   process (from 4 load processes). The environment's e-stop is engaged (EngageEnvironmentEstop,
   gRPC) and, once every robot has it and the database holds every robot's acknowledgement,
   cleared the same way; 5 rounds through the process holding the streams, then 5 through the
   other (which reaches the first through NOTIFY roz_estops). Latency from just before the engage
   is sent to each robot's receipt of the `estop` that stops it, on one clock (time.time()): p50,
   p99 and max over every robot of every round, and each round's first and last robot.
5. NOTIFY: 64 writers each committing the delivery enqueue's shape (the counter upsert and the
   insert of server/storage/robot_deliveries.py) on a host of its own, in a scratch database,
   with and without pg_notify, while one connection listens as each server does. Transactions/s
   and commit p99 of both, alternated over rounds.

What dominated a missed goal comes from py-spy when it is installed (.venv/bin/py-spy or on
PATH): it samples the servers while dispatch and the storm run and from each e-stop engage
until its last robot has it, without stopping them, and the idle server for 10 s after its
window, reading C frames too (the garbage collector's). Only the profiles of missed goals are
printed. BENCH_ROBOT_PHASES=0 skips all of it; a list of phases (idle, dispatch, storm, estop,
notify; "estop" say) runs only those. Exits 1 only when something broke: a server did not
start, a command or an e-stop never reached its robot, an acknowledgement never showed, a load
process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
import psycopg
from google.protobuf import timestamp_pb2
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool
from roz.v1 import (
    commands_pb2,
    commands_pb2_grpc,
    estop_pb2,
    estop_pb2_grpc,
    robot_link_pb2_grpc,
)
from roz.v1 import robot_link_pb2 as pb

from bench import machine
from bench.load import percentile_ms
from bench.servers import HOST, free_port
from bench.soak import rss_of
from server.domain.api_keys import mint_secret, validate_new_key
from server.domain.environments import EnvironmentDraft
from server.domain.hosts import HostDraft
from server.storage.api_keys import ApiKeyRepository
from server.storage.environments import EnvironmentRepository
from server.storage.hosts import HostRepository
from server.storage.roles import app_role_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What read() returns at the end of a stream; grpc's stubs do not name it.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
KIB = 1024
MIB = 1024 * 1024

# Goals.
STREAMS_GOAL = 10_000
RSS_PER_STREAM_GOAL = 32 * KIB
IDLE_CPU_GOAL = 0.25  # of one core
DISPATCH_SAME_P99_GOAL_MS = 20.0
DISPATCH_CROSS_P99_GOAL_MS = 50.0
STORM_GOAL_SECONDS = 10.0
ESTOP_SAME_P99_GOAL_MS = 100.0
ESTOP_CROSS_P99_GOAL_MS = 200.0

# The robots' side.
STREAMS_PER_CHANNEL = 100  # the server's SETTINGS_MAX_CONCURRENT_STREAMS
ROBOTS_PER_LOAD_PROCESS = 1_000  # up to LOAD_PROCESSES processes
LOAD_PROCESSES = 4
HELLOS_IN_FLIGHT = 32  # per load process, for the first connection only
RECONNECT_JITTER_SECONDS = 0.5
HELLO_TIMEOUT_SECONDS = 60.0
CHANNEL_OPTIONS = (
    # Each channel its own HTTP/2 connection, not one shared by every channel to the same target.
    ("grpc.use_local_subchannel_pool", 1),
    # Back within half a second of a restarted server, not grpc's default minute-long backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)

# The phases.
FLEET_IN_FLIGHT = 32
FLEET_CONNECTIONS = 8
SETTLE_SECONDS = 10.0  # one heartbeat interval: every robot has heartbeated, pulses have run
IDLE_WINDOW_SECONDS = 30.0
STALL_SECONDS = 30.0  # no new stream for this long: the rest will not come
DISPATCH_ROBOTS = 50
DISPATCH_RATE = 200  # commands/s
DISPATCH_WARMUP_SECONDS = 2
DISPATCH_REFERENCE_RATE = 20  # when DISPATCH_RATE is not kept up with
DISPATCH_REFERENCE_SECONDS = 5
DELIVERY_TIMEOUT_SECONDS = 30.0
STORM_TIMEOUT_SECONDS = 120.0
START_TIMEOUT_SECONDS = 120.0
RELEASE_TIMEOUT_SECONDS = 120.0
ESTOP_ROUNDS = 5
ESTOP_TIMEOUT_SECONDS = 30.0
NOTIFY_WRITERS = 64
NOTIFY_SECONDS = 5.0
NOTIFY_WARMUP_SECONDS = 1.0
NOTIFY_ROUNDS = 2
PROFILE_SECONDS = 10
PROFILER_ATTACH_SECONDS = 0.5  # py-spy samples from within some 50 ms of its start
PROFILE_TOP = 8

# Every server of this bench: production settings but these.
SERVER_SETTINGS = {
    "ROZ_RATE_LIMIT_RPS": "1000000000",
    "ROZ_RATE_LIMIT_BURST": "1000000000",
    "ROZ_LOG_LEVEL": "WARNING",
    "ROZ_DRAIN_SECONDS": "0",
}


PHASES = ("idle", "dispatch", "storm", "estop", "notify")


@dataclass(frozen=True)
class RobotBenchSettings:
    phases: frozenset[str]  # of PHASES
    robots: int  # idle streams on one process
    dispatch_seconds: int
    storm_robots: int
    estop_robots: int

    @property
    def enabled(self) -> bool:
        return bool(self.phases)

    @classmethod
    def from_env(cls) -> RobotBenchSettings:
        def number(name: str, default: int, minimum: int = 1) -> int:
            value = int(float(os.environ.get(name) or default))
            if value < minimum:
                raise SystemExit(f"bench: {name} must be at least {minimum}")
            return value

        return cls(
            phases=_phases(os.environ.get("BENCH_ROBOT_PHASES") or "1"),
            robots=number("BENCH_ROBOTS", 10_000),
            dispatch_seconds=number("BENCH_DISPATCH_SECONDS", 10),
            storm_robots=number("BENCH_STORM_ROBOTS", 2_000),
            estop_robots=number("BENCH_ESTOP_ROBOTS", 1_000),
        )


def _phases(text: str) -> frozenset[str]:
    """BENCH_ROBOT_PHASES: a number (0: none, else all), or the phases to run ("estop,notify")."""
    with contextlib.suppress(ValueError):
        return frozenset(PHASES) if float(text) > 0 else frozenset()
    chosen = frozenset(name.strip() for name in text.split(",") if name.strip())
    if unknown := chosen - set(PHASES):
        raise SystemExit(
            f"bench: BENCH_ROBOT_PHASES names no phase {', '.join(sorted(unknown))} "
            f"(a number, or some of {', '.join(PHASES)})"
        )
    return chosen


def _progress(message: str) -> None:
    print(f"bench: robots: {message}", file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """py-spy's samples of one server process: the frames that used the CPU."""

    label: str
    samples: int
    own: list[tuple[str, int]]  # Python frames by samples spent in them (or in C below them)
    roz: list[tuple[str, int]]  # roz's own frames by samples spent in them and their callees
    native: bool  # with C frames: the garbage collector's share is known
    collector: int  # samples in the cyclic garbage collector
    collector_from: list[tuple[str, int]]  # the Python frames whose allocations set it off


@dataclass(frozen=True)
class IdleResult:
    asked: int
    connected: int  # streams the load processes hold at the end of the window
    held: int  # links the database names a holder for, then
    connect_seconds: float
    rss_before: int
    rss_connected: int
    rss_after: int  # after the idle window
    cpu_fraction: float  # of one core, over the window
    failures: int  # streams that failed or ended
    why: list[tuple[str, int]]  # the commonest reasons

    @property
    def per_stream(self) -> float:
        return (self.rss_after - self.rss_before) / max(1, self.connected)


@dataclass(frozen=True)
class DispatchResult:
    label: str
    goal_ms: float
    rate: int  # offered, creates a second
    created: int
    received: int
    from_returned_us: list[int]
    from_sent_us: list[int]
    create_us: list[int]
    completed_rate: float  # creates answered per second, over the measured window

    @property
    def sustained(self) -> bool:
        """The server kept up with the offered rate (else the latency is mostly queueing)."""
        return self.completed_rate >= 0.95 * self.rate

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.from_returned_us, 0.99)

    @property
    def reference(self) -> bool:
        """Run at a lower rate than the goal's, to show the latency without the queueing."""
        return self.rate != DISPATCH_RATE

    @property
    def missed(self) -> bool:
        return not self.reference and (self.p99_ms is None or self.p99_ms > self.goal_ms)


@dataclass(frozen=True)
class StormResult:
    robots: int
    reconnected: int  # robots welcomed on a new stream
    delivered: int
    down_seconds: float  # from SIGTERM to the new process's readiness
    from_ready: float  # readiness to the last robot's delivery
    from_spawn: float
    median_from_ready: float
    failed_attempts: int  # reconnections refused or failed while it was down

    @property
    def complete(self) -> bool:
        return self.delivered == self.robots


@dataclass(frozen=True)
class EstopResult:
    label: str
    goal_ms: float
    robots: int
    rounds: int
    latency_us: list[int]  # each robot's receipt of each engage, from just before it was sent
    first_us: list[int]  # each round's first robot
    last_us: list[int]  # each round's last robot
    engage_us: list[int]  # each engage call, sent to answered
    missing: int  # receipts that never came
    unacknowledged: int  # robots whose acknowledgement the server did not show, over the rounds

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.latency_us, 0.99)

    @property
    def missed(self) -> bool:
        return self.p99_ms is None or self.p99_ms > self.goal_ms


@dataclass(frozen=True)
class NotifyRun:
    notify: bool
    transactions: int
    seconds: float
    commit_us: list[int]
    transaction_us: list[int]

    @property
    def per_second(self) -> float:
        return self.transactions / self.seconds


@dataclass(frozen=True)
class NotifyResult:
    runs: list[NotifyRun]
    notifications: int  # what the listener received

    def of(self, notify: bool) -> list[NotifyRun]:
        return [run for run in self.runs if run.notify is notify]

    def rate(self, notify: bool) -> float:
        runs = self.of(notify)
        return sum(run.transactions for run in runs) / sum(run.seconds for run in runs)

    def commit_p99_ms(self, notify: bool) -> float | None:
        return percentile_ms([us for run in self.of(notify) for us in run.commit_us], 0.99)

    def transaction_p99_ms(self, notify: bool) -> float | None:
        return percentile_ms([us for run in self.of(notify) for us in run.transaction_us], 0.99)


@dataclass
class RobotResult:
    settings: RobotBenchSettings
    postgres_version: str = ""
    fleet_seconds: float = 0.0
    fleet: int = 0
    idle: IdleResult | None = None
    dispatch: list[DispatchResult] = field(default_factory=list)
    storm: StormResult | None = None
    estop: list[EstopResult] = field(default_factory=list)
    notify: NotifyResult | None = None
    profiles: dict[str, list[Profile]] = field(default_factory=dict)  # by missed goal
    profiler: str = ""  # py-spy's path, or why there are no profiles
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0


# -- the database and the servers -----------------------------------------------------------


@contextlib.contextmanager
def _cluster(root: Path) -> Iterator[str]:
    """An embedded PostgreSQL in `root`; its superuser's DSN. Stopped and deleted afterwards."""
    # Imported here: the load processes have no use for it (nor for its warnings).
    from pgserver.postgres_server import get_server

    server = get_server(root / "postgres", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def _scratch_database(cluster_dsn: str, prefix: str) -> Iterator[str]:
    """A fresh database on the cluster (and, once a server has run in it, its request role),
    dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(cluster_dsn, dbname=name)
    finally:
        with psycopg.connect(cluster_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app_role_name(name)))
            )


class ServerProcess:
    """`roz-server serve` on a fixed port; started again on the same port after a stop."""

    def __init__(self, label: str, database_url: str, admin_key: str, log_dir: Path) -> None:
        self.label = label
        self.port = free_port()
        self._log_path = log_dir / f"server-{label}.log"
        self._data_dir = log_dir / f"data-{label}"
        self._env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("ROZ_") and name not in ("DATABASE_URL", "PORT")
        } | {
            **SERVER_SETTINGS,
            "DATABASE_URL": database_url,
            "ROZ_ADMIN_KEY": admin_key,
            "ROZ_HOST": HOST,
            "PORT": str(self.port),
            "ROZ_DATA_DIR": str(self._data_dir),
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> tuple[float, float]:
        """Starts the process; returns when it was spawned and when /ready first answered 200
        (time.time())."""
        with self._log_path.open("ab") as log:
            spawned = time.time()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"],
                cwd=PROJECT_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with httpx.Client(timeout=1) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"server {self.label} exited at start:\n{self.log_tail()}")
                try:
                    if client.get(f"http://{self.target}/ready").status_code == 200:
                        return spawned, time.time()
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(
            f"server {self.label} was not ready within {START_TIMEOUT_SECONDS:.0f} s"
        )

    def check(self) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"server {self.label} is not running:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, and waits for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _held_links(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM roz.robot_links WHERE link_id IS NOT NULL"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_released(dsn: str) -> None:
    """Until the server has recorded the end of every stream (so the next phase starts quiet)."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_SECONDS
    while _held_links(dsn) and time.monotonic() < deadline:
        time.sleep(0.5)


# -- the fleet and the commands, through the API ----------------------------------------------


def _auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def _make_fleet(
    dsn: str, admin_key: str, count: int, environment: str = ""
) -> tuple[uuid.UUID | None, list[tuple[str, str]]]:
    """`count` hosts, each with its robot key: (host id, secret), in the admin key's tenant; in
    a new environment of their own when `environment` names one (its id comes first).

    Through the repositories over the owner connection, as bench/servers.py seeds its fixtures:
    the rows and keys are the API's own (minted and hashed by the server's code), made in a
    fraction of the time 20,000 API calls take on two cores.
    """
    fleet: list[tuple[str, str]] = [("", "")] * count
    numbers = iter(range(count))
    pool = AsyncConnectionPool(
        dsn, min_size=FLEET_CONNECTIONS, max_size=FLEET_CONNECTIONS, kwargs={"autocommit": True}
    )
    async with pool:
        admin = await ApiKeyRepository(pool).authenticate(admin_key)
        if admin is None:
            raise RuntimeError("the bench's admin key does not authenticate")
        hosts, keys = HostRepository(pool), ApiKeyRepository(pool)
        environment_id: uuid.UUID | None = None
        if environment:
            draft = EnvironmentDraft(name=f"bench-{environment}")
            environment_id = (await EnvironmentRepository(pool).create(admin.tenant_id, draft)).id
        prefix = f"bench-{environment or 'robot'}"

        async def worker() -> None:
            for number in numbers:
                name = f"{prefix}-{number:05d}"
                draft = HostDraft(name=name, environment_id=environment_id)
                host = await hosts.create(admin.tenant_id, draft, admin.key_id)
                new = validate_new_key(name, (), None, now=datetime.now(UTC), host_id=host.id)
                _, secret = await keys.create(admin.tenant_id, new, created_by_key_id=admin.key_id)
                fleet[number] = (str(host.id), secret)

        await asyncio.gather(*(worker() for _ in range(FLEET_IN_FLIGHT)))
    return environment_id, fleet


def _create_request(host_id: str) -> commands_pb2.CreateCommandRequest:
    return commands_pb2.CreateCommandRequest(
        command=commands_pb2.Command(host_id=host_id, type="wave")
    )


@dataclass(frozen=True)
class _Created:
    command_id: str
    sent: float
    returned: float


async def _create_paced(
    target: str, admin_key: str, host_ids: Sequence[str], rate: int, seconds: int
) -> list[_Created]:
    """`rate` CreateCommand calls a second for `seconds`, each sent on its schedule whatever
    the others are doing, round the hosts."""
    created: list[_Created] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = commands_pb2_grpc.CommandServiceStub(channel)
        await stub.CreateCommand(  # the connection is up before the clock starts
            _create_request(host_ids[0]), metadata=_auth(admin_key), timeout=30
        )

        async def one(number: int) -> None:
            request = _create_request(host_ids[number % len(host_ids)])
            sent = time.time()
            command = await stub.CreateCommand(request, metadata=_auth(admin_key), timeout=30)
            created.append(_Created(command.id, sent, time.time()))

        loop = asyncio.get_running_loop()
        start = loop.time()
        calls = []
        for number in range(rate * seconds):
            await asyncio.sleep(max(0.0, start + number / rate - loop.time()))
            calls.append(asyncio.create_task(one(number)))
        await asyncio.gather(*calls)
    return created


async def _create_for_each(target: str, admin_key: str, host_ids: Sequence[str]) -> set[str]:
    """One command for each host, FLEET_IN_FLIGHT calls at a time; their ids."""
    made: set[str] = set()
    hosts = iter(host_ids)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = commands_pb2_grpc.CommandServiceStub(channel)

        async def worker() -> None:
            for host_id in hosts:
                command = await stub.CreateCommand(
                    _create_request(host_id), metadata=_auth(admin_key), timeout=30
                )
                made.add(command.id)

        await asyncio.gather(*(worker() for _ in range(FLEET_IN_FLIGHT)))
    return made


# -- the robots: load processes ----------------------------------------------------------------


@dataclass(eq=False)
class _Robot:
    host_id: str
    key: str
    offset: float  # the share of a heartbeat interval before its first heartbeat
    last_received: int = 0
    live: bool = False
    estop_epoch: int = 0  # its environment latch's, in the last e-stop state it was sent
    stopped_epoch: int = 0  # the latest engage it has


class _LoadProcess:
    """The robots of one load process, each on its own stream, as the orchestrator asks."""

    def __init__(self) -> None:
        self.robots: list[_Robot] = []
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: dict[int, Any] = {}
        self.receipts: list[tuple[str, float]] = []
        self.stops: dict[int, list[float]] = {}  # receipts of each engage, by its epoch
        self.welcomes = 0
        self.failures = 0
        self.why: Counter[str] = Counter()  # what ended streams or refused hellos
        self.last_welcome = 0.0
        self.stopping = False

    def connect(self, target: str, robots: list[list[Any]], in_flight: int) -> None:
        ramp = asyncio.Semaphore(in_flight)
        first = len(self.robots)
        for index, (host_id, key, offset) in enumerate(robots):
            if index % STREAMS_PER_CHANNEL == 0:
                self.channels.append(grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS))
            robot = _Robot(host_id, key, offset)
            self.robots.append(robot)
            stub = robot_link_pb2_grpc.RobotLinkServiceStub(self.channels[-1])
            self.tasks.append(asyncio.create_task(self._run(first + index, robot, stub, ramp)))

    async def _run(self, index: int, robot: _Robot, stub: Any, ramp: asyncio.Semaphore) -> None:
        first = True
        while not self.stopping:
            if not first:
                await asyncio.sleep(random.uniform(0, RECONNECT_JITTER_SECONDS))  # noqa: S311
            try:
                await self._stream(index, robot, stub, ramp if first else None)
            except grpc.aio.AioRpcError as error:
                self._failed(f"{error.code().name}: {error.details()}")
            except (grpc.aio.UsageError, TimeoutError) as error:
                self._failed(type(error).__name__)
            first = False

    def _failed(self, why: str) -> None:
        self.failures += 1
        # The same reason from different ports is one reason.
        self.why[re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+", r"\1", why)[:160]] += 1

    async def _stream(
        self, index: int, robot: _Robot, stub: Any, ramp: asyncio.Semaphore | None
    ) -> None:
        async with ramp or contextlib.nullcontext():
            call = stub.Connect(metadata=_auth(robot.key))
            self.calls[index] = call
            hello = pb.Hello(last_received_sequence=robot.last_received, client="roz-bench")
            await call.write(pb.ConnectRequest(hello=hello))
            async with asyncio.timeout(HELLO_TIMEOUT_SECONDS):
                response = await call.read()
        if response is EOF or response.WhichOneof("message") != "welcome":
            self._failed("no welcome")
            return
        robot.live = True
        self.welcomes += 1
        self.last_welcome = time.time()
        interval = response.welcome.heartbeat_interval.ToTimedelta().total_seconds()
        writing = asyncio.Lock()
        estop = response.welcome.estop
        if estop.host.epoch or estop.environment.epoch:  # a latch has changed: it is news
            await self._on_estop(robot, call, writing, estop)
        beats = asyncio.create_task(self._heartbeats(call, writing, interval, robot.offset))
        try:
            while (response := await call.read()) is not EOF:
                which = response.WhichOneof("message")
                if which == "estop":
                    await self._on_estop(robot, call, writing, response.estop)
                    continue
                if which != "delivery":
                    continue
                delivery = response.delivery
                self.receipts.append((delivery.command.id, time.time()))
                robot.last_received = delivery.sequence
                async with writing:
                    await call.write(pb.ConnectRequest(ack=pb.Ack(sequence=delivery.sequence)))
        finally:
            robot.live = False
            beats.cancel()

    async def _on_estop(
        self, robot: _Robot, call: Any, writing: asyncio.Lock, estop: estop_pb2.HostEstop
    ) -> None:
        """Notes when it first had each engage, and acknowledges what it was sent, as a robot
        does once it has halted."""
        received = time.time()
        epoch = estop.environment.epoch
        if estop.stopped and epoch > robot.stopped_epoch:
            robot.stopped_epoch = epoch
            self.stops.setdefault(epoch, []).append(received)
        robot.estop_epoch = epoch
        ack = pb.EstopAck(host_epoch=estop.host.epoch, environment_epoch=epoch)
        async with writing:
            await call.write(pb.ConnectRequest(estop_ack=ack))

    async def _heartbeats(
        self, call: Any, writing: asyncio.Lock, interval: float, offset: float
    ) -> None:
        await asyncio.sleep(interval * offset)
        while True:
            beat = pb.Heartbeat(robot_time=timestamp_pb2.Timestamp())
            beat.robot_time.GetCurrentTime()
            try:
                async with writing:
                    await call.write(pb.ConnectRequest(heartbeat=beat))
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                return  # the stream is over; its reader says why
            await asyncio.sleep(interval)

    def status(self) -> dict[str, Any]:
        return {
            "live": sum(robot.live for robot in self.robots),
            "welcomes": self.welcomes,
            "failures": self.failures,
            "why": dict(self.why),
            "receipts": len(self.receipts),
            "last_welcome": self.last_welcome,
            "estop_epoch": min((robot.estop_epoch for robot in self.robots), default=0),
        }

    def take_receipts(self) -> list[tuple[str, float]]:
        receipts, self.receipts = self.receipts, []
        return receipts

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
    load = _LoadProcess()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            op = request["op"]
            answer: dict[str, Any] = {}
            if op == "connect":
                load.connect(request["target"], request["robots"], request["in_flight"])
            elif op == "status":
                answer = load.status()
            elif op == "receipts":
                answer = {"receipts": load.take_receipts()}
            elif op == "stops":
                answer = {"stops": load.stops.get(request["epoch"], [])}
            elif op == "stop":
                await load.stop()
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if op == "stop":
                return
    finally:
        await load.stop()


class LoadClient:
    """The orchestrator's end of one load process: `python -m <module> load`, driven with one
    JSON request per line on its stdin and answering one JSON line on its stdout."""

    def __init__(self, module: str = "bench.robots", what: str = "a robot load process") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "load"],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._what = what
        self._pending = b""

    def ask(self, op: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        return self._answer(stdout, timeout)

    def _answer(self, stdout: IO[bytes], timeout: float) -> dict[str, Any]:
        """The next line (stdout is unbuffered, so select sees every byte), as JSON."""
        deadline = time.monotonic() + timeout
        chunks = [self._pending]
        while b"\n" not in chunks[-1]:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise RuntimeError(f"{self._what} did not answer within {timeout:.0f} s")
            chunk = os.read(stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError(f"{self._what} died")
            chunks.append(chunk)
        line, self._pending = b"".join(chunks).split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.ask("stop", timeout=30)
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Robots:
    """Robots spread over load processes, each connecting to `target`."""

    def __init__(self, target: str, fleet: Sequence[tuple[str, str]], processes: int = 0) -> None:
        self.count = len(fleet)
        processes = processes or min(
            LOAD_PROCESSES, max(1, math.ceil(self.count / ROBOTS_PER_LOAD_PROCESS))
        )
        self.clients: list[LoadClient] = []
        self.why: Counter[str] = Counter()  # as of the last status, summed over the processes
        self.started = time.time()
        try:
            for number in range(processes):
                client = LoadClient()
                self.clients.append(client)
                share = [
                    [host_id, key, index / self.count]
                    for index, (host_id, key) in enumerate(fleet)
                    if index % processes == number
                ]
                client.ask("connect", target=target, robots=share, in_flight=HELLOS_IN_FLIGHT)
        except BaseException:
            self.close()
            raise

    def status(self) -> dict[str, float]:
        totals: Counter[str] = Counter()
        why: Counter[str] = Counter()
        last_welcome, estop_epoch = 0.0, math.inf
        for client in self.clients:
            answer = client.ask("status")
            last_welcome = max(last_welcome, answer.pop("last_welcome"))
            estop_epoch = min(estop_epoch, answer.pop("estop_epoch"))
            why.update(answer.pop("why"))
            totals.update(answer)
        self.why = why
        return {**totals, "last_welcome": last_welcome, "estop_epoch": estop_epoch}

    def wait_live(self, server: ServerProcess) -> dict[str, float]:
        """Until every robot holds a welcomed stream, or none more has for STALL_SECONDS."""
        best, best_at, said = 0.0, time.monotonic(), time.monotonic()
        while True:
            status = self.status()
            if status["live"] >= self.count:
                return status
            now = time.monotonic()
            if status["live"] > best:
                best, best_at = status["live"], now
            elif now - best_at > STALL_SECONDS:
                _progress(f"stalled at {best:,.0f} of {self.count:,} streams")
                return status
            if now - said >= 5:
                _progress(f"{status['live']:,.0f} of {self.count:,} streams connected")
                said = now
            server.check()
            time.sleep(0.25)

    def receipts(self) -> list[tuple[str, float]]:
        """Every (command id, time received) since the last call."""
        return [
            (command_id, at)
            for client in self.clients
            for command_id, at in client.ask("receipts")["receipts"]
        ]

    def stops(self, epoch: int) -> list[float]:
        """When each robot first had the engage numbered `epoch` (time.time())."""
        return [at for client in self.clients for at in client.ask("stops", epoch=epoch)["stops"]]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> Robots:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- profiles -----------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy sampling one server process until `stop`: without stopping it, or, `native`,
    pausing it for each sample to read its C frames too (the garbage collector's among them)."""

    def __init__(self, executable: str, label: str, pid: int, out: Path, native: bool) -> None:
        self.label = label
        self._out = out
        self._native = native
        self._process = subprocess.Popen(
            [
                executable,
                "record",
                "--pid",
                str(pid),
                "--duration",
                "3600",
                "--rate",
                "100",
                "--format",
                "raw",
                "--native" if native else "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Profile | None:
        """Ends the recording and summarises it."""
        lines = self.finish()
        return None if lines is None else summarize(self.label, lines, native=self._native)

    def finish(self) -> list[str] | None:
        """Ends the recording (py-spy writes it on SIGINT); its collapsed stacks."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        try:
            return self._out.read_text().splitlines()
        except OSError:
            return None


@contextlib.contextmanager
def profiling(
    targets: Sequence[tuple[str, int]], root: Path, *, native: bool = False
) -> Iterator[list[Profile]]:
    """py-spy on each (label, pid) while the block runs, when it is installed; the list yielded
    holds the profiles once the block is over."""
    executable = py_spy()
    profiles: list[Profile] = []
    profilers = (
        [
            Profiler(executable, label, pid, root / f"profile-{uuid.uuid4().hex[:8]}.txt", native)
            for label, pid in targets
        ]
        if executable is not None
        else []
    )
    try:
        yield profiles
    finally:
        profiles += [profile for p in profilers if (profile := p.stop()) is not None]


@contextlib.contextmanager
def sampling(
    targets: Sequence[tuple[str, int]], root: Path, stacks: dict[str, list[str]]
) -> Iterator[None]:
    """py-spy on each (label, pid) while the block runs, when it is installed, without stopping
    them; their collapsed stacks added to `stacks` by label, so that several short windows make
    one profile."""
    executable = py_spy()
    if executable is None:
        yield
        return
    profilers = [
        Profiler(executable, label, pid, root / f"profile-{uuid.uuid4().hex[:8]}.txt", False)
        for label, pid in targets
    ]
    time.sleep(PROFILER_ATTACH_SECONDS)
    try:
        yield
    finally:
        for profiler in profilers:
            stacks.setdefault(profiler.label, []).extend(profiler.finish() or [])


def summarize(label: str, lines: Sequence[str], *, native: bool = False) -> Profile:
    """Collapsed stacks ("f (file:line);g (file:line) 12") by Python function, each named with
    its most sampled line; C frames (native) only to find the garbage collector."""
    own: Counter[str] = Counter()
    roz: Counter[str] = Counter()
    collector_from: Counter[str] = Counter()
    own_lines: dict[str, Counter[str]] = {}
    total = collector = 0
    root = str(PROJECT_ROOT) + "/"
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(frame, root) for frame in stack.split(";")]
        python = [(function, where) for function, where, is_python in frames if is_python]
        if not python or _waiting(frames[-1], python[-1][0]):
            continue
        total += count
        function, where = python[-1]
        own[function] += count
        own_lines.setdefault(function, Counter())[where] += count
        if any(name.startswith("gc_collect") for name, _, is_python in frames if not is_python):
            collector += count
            collector_from[function] += count
        for function in {function for function, _ in python}:
            where_from = function.split(" (", 1)[-1]
            if where_from.startswith(("server/", "gateway/")) and where_from != "server/cli.py)":
                roz[function] += count

    def hottest(function: str) -> str:
        line = own_lines[function].most_common(1)[0][0]
        return function[:-1] + f":{line})" if line else function

    return Profile(
        label=label,
        samples=total,
        own=[(hottest(function), count) for function, count in own.most_common(PROFILE_TOP)],
        roz=roz.most_common(PROFILE_TOP),
        native=native,
        collector=collector,
        collector_from=[(hottest(f), count) for f, count in collector_from.most_common(3)],
    )


# Where a thread waits, in C: py-spy counts these samples when it reads C frames.
_WAITS = ("epoll_wait", "poll", "select", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait")
_WAITING_IN = ("EpollSelector.select (", "_worker (")  # the event loop's, a thread pool's


def _waiting(leaf: tuple[str, str, bool], python_leaf: str) -> bool:
    name, _, is_python = leaf
    if is_python:
        return False
    return name.split(" (", 1)[0] in _WAITS or python_leaf.startswith(_WAITING_IN)


def _frame(frame: str, root: str) -> tuple[str, str, bool]:
    """ "name (path:line)" → ("name (path)", "line", is Python), the path shortened to the
    project's or site-packages'."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    if not path:
        path, line = line, ""
    is_python = path.endswith(".py") or path.startswith("<")
    path = path.removeprefix(root)
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = "stdlib/" + path.rsplit("/", 1)[-1]
    return f"{name} ({path})", line, is_python


# -- the phases ---------------------------------------------------------------------------------


def idle_phase(
    result: RobotResult,
    server: ServerProcess,
    fleet: Sequence[tuple[str, str]],
    dsn: str,
    root: Path,
) -> IdleResult:
    pid = server.pid
    time.sleep(2)  # the last of the start-up's work is done and its garbage collected
    rss_before = rss_of(pid)
    _progress(f"idle: connecting {len(fleet):,} robots to one process")
    with Robots(server.target, fleet) as robots:
        status = robots.wait_live(server)
        connect_seconds = status["last_welcome"] - robots.started
        _progress(
            f"idle: {status['live']:,.0f} streams in {connect_seconds:.1f} s; settling "
            f"{SETTLE_SECONDS:.0f} s, then {IDLE_WINDOW_SECONDS:.0f} s idle"
        )
        time.sleep(SETTLE_SECONDS)
        rss_connected = rss_of(pid)
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(IDLE_WINDOW_SECONDS)
        cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
        rss_after = rss_of(pid)
        if cpu > IDLE_CPU_GOAL and py_spy():
            _progress(f"idle: CPU above its goal; py-spy for {PROFILE_SECONDS} s more of idling")
            with profiling([("A", pid)], root, native=True) as profiles:
                time.sleep(PROFILE_SECONDS)
            result.profiles["idle CPU"] = profiles
        status = robots.status()
        idle = IdleResult(
            asked=len(fleet),
            connected=int(status["live"]),
            held=_held_links(dsn),
            connect_seconds=connect_seconds,
            rss_before=rss_before,
            rss_connected=rss_connected,
            rss_after=rss_after,
            cpu_fraction=cpu,
            failures=int(status["failures"]),
            why=robots.why.most_common(3),
        )
    released = time.monotonic()
    _wait_released(dsn)
    _progress(
        f"idle: the server recorded every stream's end in {time.monotonic() - released:.0f} s"
    )
    return idle


@dataclass(frozen=True)
class DispatchSetup:
    label: str
    goal_ms: float
    robots_server: ServerProcess
    create_server: ServerProcess  # the same as robots_server, or another process
    admin_key: str
    fleet: Sequence[tuple[str, str]]
    root: Path


def dispatch_phase(result: RobotResult, setup: DispatchSetup) -> None:
    """At DISPATCH_RATE, under py-spy; when the servers do not keep up with it, again at a rate
    they do, for the latency without the queueing."""
    seconds = result.settings.dispatch_seconds
    # The same robots throughout: they resume where they left off, as robots do.
    with Robots(setup.robots_server.target, setup.fleet, processes=1) as robots:
        robots.wait_live(setup.robots_server)
        dispatch = _dispatch(result, setup, robots, DISPATCH_RATE, seconds, profile=True)
        if not dispatch.sustained:
            reference_seconds = min(seconds, DISPATCH_REFERENCE_SECONDS)
            _dispatch(
                result, setup, robots, DISPATCH_REFERENCE_RATE, reference_seconds, profile=False
            )


def _dispatch(
    result: RobotResult,
    setup: DispatchSetup,
    robots: Robots,
    rate: int,
    seconds: int,
    *,
    profile: bool,
) -> DispatchResult:
    _progress(f"dispatch: {rate}/s for {seconds} s, {setup.label}")
    dispatch, profiles = _dispatch_run(setup, robots, rate, seconds, profile)
    result.dispatch.append(dispatch)
    if dispatch.received < dispatch.created:
        result.broken.append(
            f"dispatch ({setup.label}, {rate}/s): {dispatch.created - dispatch.received} of "
            f"{dispatch.created} commands never reached their robot"
        )
    if dispatch.missed and profiles:
        result.profiles[f"dispatch, {setup.label}"] = profiles
    return dispatch


def _dispatch_run(
    setup: DispatchSetup, robots: Robots, rate: int, seconds: int, profile: bool
) -> tuple[DispatchResult, list[Profile]]:
    """`rate` creates a second for `seconds` after the warm-up; the server or servers sampled
    by py-spy meanwhile, if asked."""
    robots_server, create_server = setup.robots_server, setup.create_server
    targets = [("A (creates)", create_server.pid)]
    if robots_server is not create_server:
        targets.append(("B (robots)", robots_server.pid))
    host_ids = [host_id for host_id, _ in setup.fleet]
    with profiling(targets if profile else [], setup.root) as profiles:
        created = asyncio.run(
            _create_paced(
                create_server.target,
                setup.admin_key,
                host_ids,
                rate,
                DISPATCH_WARMUP_SECONDS + seconds,
            )
        )
        deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
        # Every create, and the first one that opened the connection.
        while robots.status()["receipts"] <= len(created) and time.monotonic() < deadline:
            time.sleep(0.1)
    received = dict(robots.receipts())
    measured = sorted(created[rate * DISPATCH_WARMUP_SECONDS :], key=lambda c: c.sent)
    arrived = [made for made in measured if made.command_id in received]
    dispatch = DispatchResult(
        label=setup.label,
        goal_ms=setup.goal_ms,
        rate=rate,
        created=len(measured),
        received=len(arrived),
        from_returned_us=[
            round((received[made.command_id] - made.returned) * 1e6) for made in arrived
        ],
        from_sent_us=[round((received[made.command_id] - made.sent) * 1e6) for made in arrived],
        create_us=[round((made.returned - made.sent) * 1e6) for made in measured],
        completed_rate=len(measured)
        / max(1e-9, max(made.returned for made in measured) - measured[0].sent),
    )
    return dispatch, profiles


def storm_phase(
    result: RobotResult,
    a: ServerProcess,
    b: ServerProcess,
    admin_key: str,
    fleet: Sequence[tuple[str, str]],
    root: Path,
) -> StormResult:
    host_ids = [host_id for host_id, _ in fleet]
    _progress(f"storm: connecting {len(fleet):,} robots to A")
    with Robots(a.target, fleet) as robots:
        robots.wait_live(a)
        before = robots.status()
        _progress("storm: stopping A, one command per robot through B, starting A again")
        stopped = time.time()
        a.stop()
        made = asyncio.run(_create_for_each(b.target, admin_key, host_ids))
        spawned, ready = a.start()
        with profiling([("A", a.pid)], root) as profiles:
            deadline = time.monotonic() + STORM_TIMEOUT_SECONDS
            while robots.status()["receipts"] < len(made) and time.monotonic() < deadline:
                a.check()
                time.sleep(0.05)
        after = robots.status()
        arrivals = sorted(at for command_id, at in robots.receipts() if command_id in made)
    last = arrivals[-1] if arrivals else ready
    storm = StormResult(
        robots=len(host_ids),
        reconnected=int(after["welcomes"] - before["welcomes"]),
        delivered=len(arrivals),
        down_seconds=ready - stopped,
        from_ready=last - ready,
        from_spawn=last - spawned,
        median_from_ready=(arrivals[len(arrivals) // 2] - ready) if arrivals else 0.0,
        failed_attempts=int(after["failures"] - before["failures"]),
    )
    if not storm.complete:
        result.broken.append(
            f"reconnect storm: {storm.robots - storm.delivered} of {storm.robots} robots "
            f"never received their command"
        )
    elif storm.from_ready > STORM_GOAL_SECONDS and profiles:
        result.profiles["reconnect storm"] = profiles
    return storm


@dataclass(frozen=True)
class EstopSetup:
    label: str
    goal_ms: float
    through: ServerProcess  # where the engages and clears are sent
    holder: ServerProcess  # the process holding the robots' streams
    admin_key: str
    environment_id: str
    dsn: str
    profiled: Sequence[tuple[str, int]]  # (label, pid) of the servers py-spy samples
    root: Path


def estop_phase(
    result: RobotResult,
    a: ServerProcess,
    b: ServerProcess,
    admin_key: str,
    environment_id: str,
    fleet: Sequence[tuple[str, str]],
    dsn: str,
    root: Path,
) -> None:
    """The robots of one environment on A, its e-stop engaged and cleared ESTOP_ROUNDS times
    through A, then as many times through B; py-spy on the servers from each engage until the
    last robot has it."""
    _progress(f"e-stop: connecting {len(fleet):,} robots of one environment to A")
    # Spread over every load process: fewer take tens of milliseconds longer to read 1,000
    # e-stops at once, which the figure would count against the server.
    with Robots(a.target, fleet, processes=LOAD_PROCESSES) as robots:
        robots.wait_live(a)
        for label, goal_ms, through, targets in (
            (
                "engaged through the process holding the streams",
                ESTOP_SAME_P99_GOAL_MS,
                a,
                [("A (streams, engages)", a.pid)],
            ),
            (
                "engaged through another process",
                ESTOP_CROSS_P99_GOAL_MS,
                b,
                [("A (streams)", a.pid), ("B (engages)", b.pid)],
            ),
        ):
            setup = EstopSetup(
                label, goal_ms, through, a, admin_key, environment_id, dsn, targets, root
            )
            estop, profiles = _estop_rounds(setup, robots)
            result.estop.append(estop)
            if estop.missing or estop.unacknowledged:
                result.broken.append(
                    f"e-stop ({label}): {estop.missing} of {estop.robots * estop.rounds} engages "
                    f"never reached their robot, {estop.unacknowledged} acknowledgements never "
                    f"showed"
                )
            elif estop.missed and profiles:
                result.profiles[f"e-stop, {label}"] = profiles


def _estop_rounds(setup: EstopSetup, robots: Robots) -> tuple[EstopResult, list[Profile]]:
    """Each round: engage, until every robot has it (under py-spy) and the database holds every
    robot's acknowledgement; then the same for a clear."""
    stacks: dict[str, list[str]] = {}
    latency: list[int] = []
    firsts: list[int] = []
    lasts: list[int] = []
    engages: list[int] = []
    missing = unacknowledged = 0
    metadata = _auth(setup.admin_key)
    environment_id = setup.environment_id
    with grpc.insecure_channel(setup.through.target) as channel:
        stub = estop_pb2_grpc.EstopServiceStub(channel)
        stub.GetEnvironmentEstop(  # the connection is up before the clock starts
            estop_pb2.GetEnvironmentEstopRequest(environment_id=environment_id),
            metadata=metadata,
            timeout=30,
        )
        for number in range(1, ESTOP_ROUNDS + 1):
            reason = f"bench round {number}"
            with sampling(setup.profiled, setup.root, stacks):
                sent = time.time()
                engaged = stub.EngageEnvironmentEstop(
                    estop_pb2.EngageEnvironmentEstopRequest(
                        environment_id=environment_id, reason=reason
                    ),
                    metadata=metadata,
                    timeout=30,
                )
                engages.append(round((time.time() - sent) * 1e6))
                epoch = engaged.latch.epoch
                _wait_estop(robots, epoch, setup.holder)
            receipts = robots.stops(epoch)
            latency += [round((at - sent) * 1e6) for at in receipts]
            firsts.append(round((min(receipts, default=sent) - sent) * 1e6))
            lasts.append(round((max(receipts, default=sent) - sent) * 1e6))
            missing += robots.count - len(receipts)
            unacknowledged += _wait_acknowledged(setup, robots.count, epoch)
            cleared = stub.ClearEnvironmentEstop(
                estop_pb2.ClearEnvironmentEstopRequest(
                    environment_id=environment_id, reason=f"{reason} over"
                ),
                metadata=metadata,
                timeout=30,
            )
            _wait_estop(robots, cleared.latch.epoch, setup.holder)
            unacknowledged += _wait_acknowledged(setup, robots.count, cleared.latch.epoch)
            _progress(
                f"e-stop, {setup.label}: round {number}/{ESTOP_ROUNDS}: {len(receipts):,} "
                f"robots, the first after {firsts[-1] / 1000:.1f} ms, the last after "
                f"{lasts[-1] / 1000:.1f} ms"
            )
    estop = EstopResult(
        label=setup.label,
        goal_ms=setup.goal_ms,
        robots=robots.count,
        rounds=ESTOP_ROUNDS,
        latency_us=latency,
        first_us=firsts,
        last_us=lasts,
        engage_us=engages,
        missing=missing,
        unacknowledged=unacknowledged,
    )
    return estop, [summarize(label, lines) for label, lines in stacks.items()]


def _wait_estop(robots: Robots, epoch: int, holder: ServerProcess) -> None:
    """Until every robot has the latch's change `epoch` (or ESTOP_TIMEOUT_SECONDS)."""
    deadline = time.monotonic() + ESTOP_TIMEOUT_SECONDS
    while robots.status()["estop_epoch"] < epoch and time.monotonic() < deadline:
        holder.check()
        time.sleep(0.05)


def _wait_acknowledged(setup: EstopSetup, robots: int, epoch: int) -> int:
    """Until the database holds every robot's acknowledgement of `epoch` (read there, not
    through a server being profiled); how many it lacks after ESTOP_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + ESTOP_TIMEOUT_SECONDS
    with psycopg.connect(setup.dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM roz.robot_links WHERE estop_environment_id = %s"
                " AND estop_environment_epoch >= %s",
                (setup.environment_id, epoch),
            ).fetchone()
            acknowledged = int(row[0]) if row else 0
            if acknowledged >= robots or time.monotonic() >= deadline:
                return robots - acknowledged
            time.sleep(0.05)


# -- what NOTIFY costs ----------------------------------------------------------------------------

_NOTIFY_CHANNEL = "bench_robot_deliveries"
_NOTIFY_SCHEMA = (
    "CREATE TABLE bench_links (host_id uuid PRIMARY KEY, last_sequence bigint NOT NULL)",
    "CREATE TABLE bench_deliveries (host_id uuid NOT NULL, sequence bigint NOT NULL,"
    " item_id uuid NOT NULL, create_time timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (host_id, sequence))",
)
# The shape of server/storage/robot_deliveries.py's _ENQUEUE, on scratch tables.
_ENQUEUE = (
    "WITH link AS (INSERT INTO bench_links (host_id, last_sequence) VALUES (%(host)s, 1)"
    " ON CONFLICT (host_id) DO UPDATE SET last_sequence = bench_links.last_sequence + 1"
    " RETURNING host_id, last_sequence),"
    " delivery AS (INSERT INTO bench_deliveries (host_id, sequence, item_id)"
    " SELECT host_id, last_sequence, %(item)s FROM link RETURNING host_id, sequence)"
)
ENQUEUE_WITH_NOTIFY = (
    _ENQUEUE + " SELECT sequence, pg_notify('" + _NOTIFY_CHANNEL + "', host_id::text) FROM delivery"
)
ENQUEUE_WITHOUT_NOTIFY = _ENQUEUE + " SELECT sequence FROM delivery"


async def _notify_run(
    writers: Sequence[AsyncConnection[Any]], hosts: Sequence[uuid.UUID], notify: bool
) -> NotifyRun:
    statement = ENQUEUE_WITH_NOTIFY if notify else ENQUEUE_WITHOUT_NOTIFY
    loop = asyncio.get_running_loop()
    begin = loop.time() + NOTIFY_WARMUP_SECONDS
    end = begin + NOTIFY_SECONDS
    commits: list[int] = []
    transactions: list[int] = []

    async def writer(conn: AsyncConnection[Any], host: uuid.UUID) -> None:
        while (started := loop.time()) < end:
            await conn.execute(statement, {"host": host, "item": uuid.uuid4()})
            committing = loop.time()
            await conn.commit()
            done = loop.time()
            if started >= begin and done <= end:
                commits.append(round((done - committing) * 1e6))
                transactions.append(round((done - started) * 1e6))

    await asyncio.gather(*(writer(conn, host) for conn, host in zip(writers, hosts, strict=True)))
    return NotifyRun(notify, len(transactions), NOTIFY_SECONDS, commits, transactions)


async def _notify_bench(dsn: str) -> NotifyResult:
    async with await AsyncConnection.connect(dsn, autocommit=True) as owner:
        for statement in _NOTIFY_SCHEMA:
            await owner.execute(statement)
    received = 0

    async def listen(conn: AsyncConnection[Any]) -> None:
        nonlocal received
        async for _ in conn.notifies():
            received += 1

    listener = await AsyncConnection.connect(dsn, autocommit=True)
    writers: list[AsyncConnection[Any]] = []
    try:
        await listener.execute(f"LISTEN {_NOTIFY_CHANNEL}")
        listening = asyncio.create_task(listen(listener))
        writers = [await AsyncConnection.connect(dsn) for _ in range(NOTIFY_WRITERS)]
        hosts = [uuid.uuid4() for _ in writers]
        runs = []
        for number in range(NOTIFY_ROUNDS):
            for notify in (True, False) if number % 2 == 0 else (False, True):
                run = await _notify_run(writers, hosts, notify)
                runs.append(run)
                _progress(
                    f"notify: round {number + 1}/{NOTIFY_ROUNDS}, "
                    f"{'with' if notify else 'without'} pg_notify: {run.per_second:,.0f} tx/s"
                )
        await asyncio.sleep(0.5)  # the last notifications reach the listener
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await listening
    finally:
        for conn in [*writers, listener]:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
    return NotifyResult(runs, received)


# -- the whole ----------------------------------------------------------------------------------


def run(settings: RobotBenchSettings) -> RobotResult:
    result = RobotResult(settings)
    phases = settings.phases
    executable = py_spy()
    result.profiler = executable or "py-spy is not installed: missed goals go unprofiled"
    started = time.monotonic()
    result.load_before = os.getloadavg()[0]  # another busy process on the machine skews it all
    dispatch_fleet = 2 * DISPATCH_ROBOTS
    fleet_size = max(
        settings.robots if "idle" in phases else 0,
        dispatch_fleet if "dispatch" in phases else 0,
        dispatch_fleet + settings.storm_robots if "storm" in phases else 0,
    )
    root = Path(tempfile.mkdtemp(prefix="roz-bench-robots-"))
    try:
        with _cluster(root) as cluster:
            with psycopg.connect(cluster, autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                result.postgres_version = str(row[0]) if row else "unknown"
            if phases - {"notify"}:
                _serving_phases(result, cluster, fleet_size, root)
            if "notify" in phases:
                _progress(f"notify: {NOTIFY_WRITERS} writers, scratch database")
                with _scratch_database(cluster, "roz_bench_notify") as scratch:
                    result.notify = asyncio.run(_notify_bench(scratch))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.monotonic() - started
    result.load_after = os.getloadavg()[0]
    return result


def _serving_phases(result: RobotResult, cluster: str, fleet_size: int, root: Path) -> None:
    """The phases on roz servers: idle, dispatch, storm and e-stop, those of them asked for."""
    settings, phases = result.settings, result.settings.phases
    dispatch_fleet = 2 * DISPATCH_ROBOTS
    with (
        _scratch_database(cluster, "roz_bench_robots") as dsn,
        contextlib.ExitStack() as servers,
    ):
        admin_key = mint_secret()
        a = ServerProcess("A", dsn, admin_key, root)
        servers.callback(a.stop)
        a.start()
        fleet: list[tuple[str, str]] = []
        if fleet_size:
            _progress(f"server A ready; making {fleet_size:,} hosts and robot keys")
            made = time.monotonic()
            _, fleet = asyncio.run(_make_fleet(dsn, admin_key, fleet_size))
            result.fleet, result.fleet_seconds = fleet_size, time.monotonic() - made
        if "idle" in phases:
            result.idle = idle_phase(result, a, fleet[: settings.robots], dsn, root)
        b = ServerProcess("B", dsn, admin_key, root)
        servers.callback(b.stop)
        b.start()
        if "dispatch" in phases:
            same = DispatchSetup(
                "robots on the creating process",
                DISPATCH_SAME_P99_GOAL_MS,
                a,
                a,
                admin_key,
                fleet[:DISPATCH_ROBOTS],
                root,
            )
            dispatch_phase(result, same)
            dispatch_phase(
                result,
                dataclasses.replace(
                    same,
                    label="robots on another process",
                    goal_ms=DISPATCH_CROSS_P99_GOAL_MS,
                    robots_server=b,
                    fleet=fleet[DISPATCH_ROBOTS:dispatch_fleet],
                ),
            )
        if "storm" in phases:
            storm_fleet = fleet[dispatch_fleet : dispatch_fleet + settings.storm_robots]
            result.storm = storm_phase(result, a, b, admin_key, storm_fleet, root)
        if "estop" in phases:
            _progress(f"e-stop: making {settings.estop_robots:,} hosts in one environment")
            made = time.monotonic()
            environment_id, estop_fleet = asyncio.run(
                _make_fleet(dsn, admin_key, settings.estop_robots, "estop")
            )
            result.fleet += settings.estop_robots
            result.fleet_seconds += time.monotonic() - made
            estop_phase(result, a, b, admin_key, str(environment_id), estop_fleet, dsn, root)


# -- the report ---------------------------------------------------------------------------------


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "BELOW GOAL"


def _streams_verdict(idle: IdleResult) -> str:
    if idle.connected >= STREAMS_GOAL:
        return "PASS"
    if idle.asked < STREAMS_GOAL:
        return f"not measured (BENCH_ROBOTS < {STREAMS_GOAL:,})"
    return "BELOW GOAL"


def _failures(idle: IdleResult) -> str:
    if not idle.failures:
        return "no stream failed or ended"
    reasons = "; ".join(f"{count:,}x {why}" for why, count in idle.why)
    return f"{idle.failures:,} streams failed or ended and were made again ({reasons})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(result: RobotResult) -> str:
    settings = result.settings
    lines = [
        "",
        "## Robot link: idle streams, dispatch latency, reconnect storm, e-stop, NOTIFY",
        "",
        "| figure | value | goal | result |",
        "|---|---|---|---|",
    ]
    idle = result.idle
    if idle is not None:
        lines += [
            f"| idle streams held by one process | {idle.connected:,} of {idle.asked:,} "
            f"({idle.held:,} held in the database) | >= {STREAMS_GOAL:,} | "
            f"{_streams_verdict(idle)} |",
            f"| server RSS before → connected → after {IDLE_WINDOW_SECONDS:.0f} s idle | "
            f"{idle.rss_before / MIB:.1f} → {idle.rss_connected / MIB:.1f} → "
            f"{idle.rss_after / MIB:.1f} MiB | | |",
            f"| RSS per stream, (after - before) / streams | {idle.per_stream / KIB:.1f} KiB | "
            f"<= {RSS_PER_STREAM_GOAL // KIB} KiB | "
            f"{_verdict(idle.per_stream <= RSS_PER_STREAM_GOAL)} |",
            f"| server CPU over {IDLE_WINDOW_SECONDS:.0f} s idle | "
            f"{idle.cpu_fraction:.1%} of one core | <= {IDLE_CPU_GOAL:.0%} | "
            f"{_verdict(idle.cpu_fraction <= IDLE_CPU_GOAL)} |",
            f"| time to connect all | {idle.connect_seconds:.1f} s "
            f"({idle.connected / max(idle.connect_seconds, 1e-9):,.0f} streams/s); "
            f"{_failures(idle)} | | |",
        ]
    for dispatch in result.dispatch:
        p50 = percentile_ms(dispatch.from_returned_us, 0.5)
        p99 = dispatch.p99_ms
        verdict = "reference" if dispatch.reference else _verdict(not dispatch.missed)
        lines.append(
            f"| dispatch at {dispatch.rate}/s, {dispatch.label}: create returned → robot, "
            "p50 / p99 | "
            f"{_ms(p50)} / {_ms(p99)} ms (from send: "
            f"{_ms(percentile_ms(dispatch.from_sent_us, 0.5))} / "
            f"{_ms(percentile_ms(dispatch.from_sent_us, 0.99))} ms; create p99 "
            f"{_ms(percentile_ms(dispatch.create_us, 0.99))} ms; creates answered at "
            f"{dispatch.completed_rate:,.0f}/s; "
            f"{dispatch.received:,} of {dispatch.created:,} received) | "
            f"p99 <= {dispatch.goal_ms:.0f} ms | {verdict} |"
        )
    storm = result.storm
    if storm is not None:
        lines.append(
            f"| reconnect storm, {storm.robots:,} robots: readiness → last delivery | "
            f"{storm.from_ready:.1f} s (median {storm.median_from_ready:.1f} s; "
            f"{storm.from_spawn:.1f} s from the process's start; {storm.delivered:,} delivered, "
            f"{storm.reconnected:,} hellos welcomed; down {storm.down_seconds:.1f} s, "
            f"{storm.failed_attempts:,} attempts refused meanwhile) | "
            f"<= {STORM_GOAL_SECONDS:.0f} s | "
            f"{_verdict(storm.complete and storm.from_ready <= STORM_GOAL_SECONDS)} |"
        )
    for estop in result.estop:
        rounds = " / ".join(
            f"{first / 1000:.0f}→{last / 1000:.0f}"
            for first, last in zip(estop.first_us, estop.last_us, strict=True)
        )
        lines.append(
            f"| e-stop of an environment of {estop.robots:,} robots, {estop.label}: engage sent "
            "→ robot, p50 / p99 / max | "
            f"{_ms(percentile_ms(estop.latency_us, 0.5))} / {_ms(estop.p99_ms)} / "
            f"{_ms(max(estop.latency_us, default=0) / 1000)} ms (the first→last robot of each "
            f"round: {rounds} ms; engage answered after "
            f"{_ms(percentile_ms(estop.engage_us, 0.5))} ms, p50; "
            f"{len(estop.latency_us):,} of {estop.robots * estop.rounds:,} received) | "
            f"p99 <= {estop.goal_ms:.0f} ms | {_verdict(not estop.missed)} |"
        )
    notify = result.notify
    if notify is not None:
        with_rate, without_rate = notify.rate(True), notify.rate(False)
        with_p99, without_p99 = notify.commit_p99_ms(True), notify.commit_p99_ms(False)
        lines += [
            f"| NOTIFY: tx/s with / without pg_notify | {with_rate:,.0f} / {without_rate:,.0f} "
            f"({with_rate / without_rate:.2f}x) | | |",
            f"| NOTIFY: commit p99 with / without | {_ms(with_p99)} / {_ms(without_p99)} ms "
            f"(transaction p99 {_ms(notify.transaction_p99_ms(True))} / "
            f"{_ms(notify.transaction_p99_ms(False))} ms) | | |",
        ]
    lines += [
        "",
        textwrap.fill(
            f"PostgreSQL {result.postgres_version} (embedded pgserver), one database shared by "
            f"the server processes, each `roz-server serve` with production settings but "
            f"{', '.join(f'{k}={v}' for k, v in SERVER_SETTINGS.items())}. {result.fleet:,} "
            f"hosts with robot keys made in {result.fleet_seconds:.0f} s through the "
            f"repositories over the owner connection (for speed). Robots: grpcio asyncio in up "
            f"to {LOAD_PROCESSES} load processes, {STREAMS_PER_CHANNEL} streams per connection, "
            f"{HELLOS_IN_FLIGHT} first hellos in flight per process, reconnecting after up to "
            f"{RECONNECT_JITTER_SECONDS} s of jitter. Dispatch: {DISPATCH_RATE} CreateCommand/s "
            f"(gRPC, open loop) over {DISPATCH_ROBOTS} robots for {settings.dispatch_seconds} s "
            f"after {DISPATCH_WARMUP_SECONDS} s of warm-up, every delivery acked; times from "
            f"time.time() in both processes; a reference row, at {DISPATCH_REFERENCE_RATE}/s "
            f"for up to {DISPATCH_REFERENCE_SECONDS} s, when the servers did not answer "
            f"{DISPATCH_RATE}/s. E-stop: {settings.estop_robots:,} robots, every host in one "
            f"environment, in {LOAD_PROCESSES} load processes on one server process; "
            f"{ESTOP_ROUNDS} rounds each way of EngageEnvironmentEstop (gRPC), until every robot "
            "has it and the database holds every robot's acknowledgement, then the same for a "
            "clear; p50, p99 and max over every robot of every round, from time.time() just "
            f"before the call to the robot's. NOTIFY: {NOTIFY_WRITERS} writers (psycopg async, "
            f"one process), each on a host of its own, {NOTIFY_ROUNDS} round(s) of "
            f"{NOTIFY_SECONDS:.0f} s per variant after {NOTIFY_WARMUP_SECONDS:.0f} s of warm-up, "
            f"alternated, one listener draining "
            f"({notify.notifications if notify else 0:,} notifications). Servers, PostgreSQL and "
            f"load share {machine.cores()}; took {result.seconds:.0f} s, load average "
            f"{result.load_before:.2f} before and {result.load_after:.2f} after.",
            width=100,
        ),
    ]
    if result.profiles:
        lines += [
            "",
            f"What dominated each missed goal: py-spy ({result.profiler}) at 100 Hz, on the "
            "server while the phase ran, without stopping it (idle: for "
            f"{PROFILE_SECONDS} s after the window, pausing it to read C frames too; e-stop: "
            "from each engage until the last robot had it). Own "
            "time is a Python frame's and the C code's below it:",
        ]
        for goal, profiles in result.profiles.items():
            for profile in profiles:
                lines += _profile_lines(goal, profile)
    elif _missed(result):
        lines += ["", result.profiler]
    if idle is not None and idle.per_stream > RSS_PER_STREAM_GOAL:
        lines += [
            "",
            "RSS per stream: py-spy samples CPU, not memory, so nothing here says which objects "
            "hold it.",
        ]
    if result.broken:
        lines += ["", "BROKEN: " + "; ".join(result.broken)]
    return "\n".join(lines)


def _profile_lines(goal: str, profile: Profile) -> list[str]:
    def share(count: int) -> str:
        return f"{count / max(1, profile.samples):6.1%}"

    lines = ["", f"{goal}, server {profile.label}: {profile.samples:,} samples"]
    if profile.native:
        set_off = ", ".join(f"{share(n).strip()} {frame}" for frame, n in profile.collector_from)
        lines.append(
            f"  in the cyclic garbage collector: {share(profile.collector).strip()}"
            + (f", set off by {set_off}" if set_off else "")
        )
    lines += ["  own time:"] + [f"    {share(n)}  {frame}" for frame, n in profile.own]
    lines += ["  roz frames, with their callees:"]
    return lines + [f"    {share(n)}  {frame}" for frame, n in profile.roz]


def _missed(result: RobotResult) -> bool:
    idle, storm = result.idle, result.storm
    return bool(
        (idle and (idle.cpu_fraction > IDLE_CPU_GOAL or idle.per_stream > RSS_PER_STREAM_GOAL))
        or any(dispatch.missed for dispatch in result.dispatch)
        or (storm and storm.from_ready > STORM_GOAL_SECONDS)
        or any(estop.missed for estop in result.estop)
    )


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) == ["load"]:
        asyncio.run(_serve_load())
        return 0
    # pgserver asks platformdirs for a runtime directory it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    settings = RobotBenchSettings.from_env()
    if not settings.enabled:
        print("bench: robots: BENCH_ROBOT_PHASES=0, skipped", file=sys.stderr)
        return 0
    try:
        result = run(settings)
    except RuntimeError as exc:
        print(f"bench: robots: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    return 1 if result.broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
