"""Triggers under load: BENCH_TRIGGER_COUNT (1,000) schedule triggers due in the same second
across three processes, and signed webhook deliveries. `python -m bench.triggers` runs it alone
and prints its report; `make bench` runs it after the watch fan-out and prints the same section.

It runs as bench/robots.py does, and with its parts: an embedded PostgreSQL of its own, a fresh
database, three `roz-server serve` processes with the production settings but a rate limit that
never interferes, WARNING logs and no drain delay. Tenants are made as `roz-server admin
create-tenant` makes them; environments and triggers through the API (REST), the requests spread
over the three processes in turn.

1. Lateness: the triggers, over TENANTS tenants, are created with a 6-field cron that fires at
   one whole second ahead (UTC) by LEAD_SECONDS and LEAD_SECONDS_PER_TRIGGER each; every
   creation must say so. From a second before that until every trigger has fired, the bench
   counts the fire ledger (roz.trigger_fires, over the owner connection) every POLL_SECONDS: the
   k-th fire committed is as late as the first count of k or more is after the due second (so
   its resolution is POLL_SECONDS and a count). Also what each fire records, the fire_time a
   fire's history shows (the ledger's create_time, a server clock's reading) minus its
   scheduled_time. p50, p99 and max of both; the goal is on the committed one. Then exactly once
   is checked: one fire per trigger, CREATED, with one task, nothing still due. The CPU each
   process and PostgreSQL used while they fired says who did the work.
2. Webhooks: one webhook trigger; BENCH_WEBHOOKS (2,000) deliveries, each its own webhook-id,
   signed beforehand (Standard Webhooks, standardwebhooks' own signer), POSTed to
   /api/v1/triggers/{id}/webhook by BENCH_WEBHOOK_CONCURRENCY (4) senders (httpx asyncio,
   HTTP/1.1 kept alive, one connection per sender and process), each delivery to the processes
   in turn, after WEBHOOK_WARMUP untimed ones and WEBHOOK_SERIAL sent one at a time (the latency
   without queueing); latency from the request sent to its answer read. Then REPLAYS of
   delivered ids, which must answer `duplicate` with the first fire. The ledger must then hold
   one CREATED fire with its task per webhook-id, and nothing for the replays.

py-spy (.venv/bin/py-spy or on PATH) samples the servers while they fire and while the
deliveries run, without stopping them; the profile is printed when a goal is missed.
BENCH_TRIGGERS=0 skips it all. Exits 1 only when something broke: a server did not start, a
trigger did not fire exactly once, a delivery failed, a replay fired again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from standardwebhooks.webhooks import Webhook

from bench import machine
from bench.load import percentile_ms
from bench.robots import (
    SERVER_SETTINGS,
    Profile,
    ServerProcess,
    _cluster,
    _profile_lines,
    _scratch_database,
    cpu_seconds,
    profiling,
    py_spy,
)
from bench.watches import _busy_seconds
from server.domain.api_keys import mint_secret
from server.storage.bootstrap import create_tenant

# Goals.
LATENESS_P99_GOAL_MS = 1_000.0
WEBHOOK_P99_GOAL_MS = 20.0

PROCESSES = 3
TENANTS = 5
# How far ahead the triggers are due: creating 1,000 over REST takes some 5 s on two cores, and
# one made after the due second would wait a day (the bench checks every creation's next time).
LEAD_SECONDS = 10.0
LEAD_SECONDS_PER_TRIGGER = 0.01
CREATORS = 12  # creations in flight
POLL_SECONDS = 0.01
FIRED_TIMEOUT_SECONDS = 60.0
WEBHOOK_WARMUP = 100
WEBHOOK_SERIAL = 200  # one at a time, before the timed run: the latency without queueing
REPLAYS = 200


@dataclass(frozen=True)
class TriggerBenchSettings:
    enabled: bool
    triggers: int
    webhooks: int
    concurrency: int

    @classmethod
    def from_env(cls) -> TriggerBenchSettings:
        def number(name: str, default: int, minimum: int = 1) -> int:
            value = int(float(os.environ.get(name) or default))
            if value < minimum:
                raise SystemExit(f"bench: {name} must be at least {minimum}")
            return value

        return cls(
            enabled=float(os.environ.get("BENCH_TRIGGERS") or 1) > 0,
            triggers=number("BENCH_TRIGGER_COUNT", 1_000),
            webhooks=number("BENCH_WEBHOOKS", 2_000),
            concurrency=number("BENCH_WEBHOOK_CONCURRENCY", 4),
        )


def _progress(message: str) -> None:
    print(f"bench: triggers: {message}", file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatenessResult:
    triggers: int
    create_seconds: float  # making them over REST
    committed_us: list[int]  # each fire's commit (as counted) after its due second
    recorded_us: list[int]  # each fire's fire_time minus scheduled_time
    cpu: list[tuple[str, float]]  # CPU seconds of each process, PostgreSQL, the machine, firing

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.committed_us, 0.99)

    @property
    def missed(self) -> bool:
        return self.p99_ms is None or self.p99_ms > LATENESS_P99_GOAL_MS


@dataclass(frozen=True)
class WebhookResult:
    deliveries: int
    concurrency: int
    latency_us: list[int]
    seconds: float  # the timed deliveries' wall time
    serial_us: list[int]  # one at a time
    replay_us: list[int]
    cpu: list[tuple[str, float]]  # the same, over the timed deliveries

    @property
    def p99_ms(self) -> float | None:
        return percentile_ms(self.latency_us, 0.99)

    @property
    def missed(self) -> bool:
        return self.p99_ms is None or self.p99_ms > WEBHOOK_P99_GOAL_MS


@dataclass
class TriggerResult:
    settings: TriggerBenchSettings
    postgres_version: str = ""
    lateness: LatenessResult | None = None
    webhooks: WebhookResult | None = None
    profiles: dict[str, list[Profile]] = field(default_factory=dict)  # by missed goal
    profiler: str = ""
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0


# -- the API ------------------------------------------------------------------------------------


class Api:
    """REST calls spread over the processes in turn, `in_flight` at most."""

    def __init__(self, servers: Sequence[ServerProcess], in_flight: int) -> None:
        self.servers = servers
        self._clients = [
            httpx.AsyncClient(
                base_url=f"http://{server.target}",
                timeout=60,
                limits=httpx.Limits(max_connections=in_flight),
            )
            for server in servers
        ]
        self._in_flight = asyncio.Semaphore(in_flight)
        self._turn = itertools.count()

    async def call(self, key: str, method: str, path: str, **kwargs: Any) -> Any:
        client = self._clients[next(self._turn) % len(self._clients)]
        async with self._in_flight:
            response = await client.request(
                method, path, headers={"authorization": f"Bearer {key}"}, **kwargs
            )
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))


@dataclass(frozen=True)
class _Tenant:
    key: str
    environment_id: str


async def _tenants(api: Api, dsn: str, count: int) -> list[_Tenant]:
    tenants = []
    for number in range(count):
        _, key = await create_tenant(dsn, f"bench-{number}-{uuid.uuid4().hex[:6]}")
        made = await api.call(key, "POST", "/api/v1/environments", json={"name": "yard"})
        tenants.append(_Tenant(key, str(made["id"])))
    return tenants


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _make_schedules(api: Api, tenants: Sequence[_Tenant], count: int) -> tuple[datetime, int]:
    """`count` triggers over the tenants, due at one whole second; that second, and how many
    creations named another (made too late)."""
    lead = LEAD_SECONDS + count * LEAD_SECONDS_PER_TRIGGER
    due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
    cron = f"{due.second} {due.minute} {due.hour} * * *"

    async def create(number: int) -> bool:
        tenant = tenants[number % len(tenants)]
        body = {
            "name": f"sweep-{number}",
            "environment_id": tenant.environment_id,
            "task_prompt": f"sweep aisle {number}",
            "schedule": {"cron": cron},
        }
        made = await api.call(tenant.key, "POST", "/api/v1/triggers", json=body)
        return _utc(made["next_fire_time"]) == due

    made = await asyncio.gather(*(create(number) for number in range(count)))
    return due, made.count(False)


# -- 1. lateness --------------------------------------------------------------------------------


_COUNT_FIRES = "SELECT count(*) FROM roz.trigger_fires WHERE source = 'schedule'"
_RECORDED = (
    "SELECT (extract(epoch FROM create_time - scheduled_time) * 1e6)::bigint"
    " FROM roz.trigger_fires WHERE source = 'schedule'"
)
# What exactly once means here, each figure equal to the triggers made.
_ONCE = {
    "fires": _COUNT_FIRES,
    "created fires": _COUNT_FIRES + " AND outcome = 'created'",
    "triggers fired": "SELECT count(DISTINCT trigger_id) FROM roz.trigger_fires"
    " WHERE source = 'schedule'",
    "tasks": "SELECT count(*) FROM roz.tasks WHERE trigger_fire_id IS NOT NULL",
    "tasks of distinct fires": "SELECT count(DISTINCT t.trigger_fire_id) FROM roz.tasks AS t"
    " JOIN roz.trigger_fires AS f ON f.id = t.trigger_fire_id AND f.task_id = t.id",
}


def _database_cpu(root: Path) -> float:
    """CPU seconds so far of the embedded PostgreSQL in `root`: its postmaster and every process
    it started (a backend's ends with it: the servers' pools keep theirs)."""
    postmaster = int((root / "postgres" / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if postmaster in (parent, int(entry.name)):
                total += cpu_seconds(int(entry.name))
    return total


def _cpu_meter(
    labelled: Sequence[tuple[str, int]], root: Path
) -> Callable[[], list[tuple[str, float]]]:
    """What returns the CPU seconds each process, PostgreSQL and the whole machine have used
    since this call."""
    labels = [label for label, _ in labelled] + ["PostgreSQL", "the whole machine"]

    def now() -> list[float]:
        return [cpu_seconds(pid) for _, pid in labelled] + [_database_cpu(root), _busy_seconds()]

    before = now()

    def since() -> list[tuple[str, float]]:
        return [
            (label, later - was) for label, later, was in zip(labels, now(), before, strict=True)
        ]

    return since


def _count(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def lateness_phase(
    result: TriggerResult, servers: Sequence[ServerProcess], dsn: str, root: Path
) -> None:
    settings = result.settings
    _progress(
        f"lateness: making {settings.triggers:,} schedule triggers over {TENANTS} tenants, due "
        f"{LEAD_SECONDS + settings.triggers * LEAD_SECONDS_PER_TRIGGER:.0f} s ahead"
    )

    async def make() -> tuple[datetime, int, float]:
        api = Api(servers, CREATORS)
        try:
            tenants = await _tenants(api, dsn, TENANTS)
            started = time.monotonic()
            due, late = await _make_schedules(api, tenants, settings.triggers)
            return due, late, time.monotonic() - started
        finally:
            await api.close()

    due, late, create_seconds = asyncio.run(make())
    if late:
        result.broken.append(
            f"lateness: {late} triggers were made after their due second (LEAD_SECONDS and "
            "LEAD_SECONDS_PER_TRIGGER are too short for this machine)"
        )
        return
    left = (due - datetime.now(UTC)).total_seconds()
    _progress(f"lateness: made in {create_seconds:.1f} s; due in {left:.1f} s")
    labelled = [(f"server {server.label}", server.pid) for server in servers]
    seen: list[tuple[float, int]] = []  # (time.time(), fires counted)
    with psycopg.connect(dsn, autocommit=True) as conn:
        time.sleep(max(0.0, left - 1.0))
        with profiling(labelled, root) as profiles:
            cpu_since = _cpu_meter(labelled, root)
            deadline = time.monotonic() + FIRED_TIMEOUT_SECONDS + 1.0
            while time.monotonic() < deadline:
                counted = _count(conn, _COUNT_FIRES)
                seen.append((time.time(), counted))
                if counted >= settings.triggers:
                    break
                time.sleep(POLL_SECONDS)
            cpu = cpu_since()
        recorded = [int(row[0]) for row in conn.execute(_RECORDED).fetchall()]
        once = {name: _count(conn, query) for name, query in _ONCE.items()}
        still_due = _count(
            conn, "SELECT count(*) FROM roz.triggers WHERE next_fire_time <= %s", due
        )
    committed = _committed(seen, due.timestamp(), settings.triggers)
    run = LatenessResult(settings.triggers, create_seconds, committed, recorded, cpu)
    result.lateness = run
    wrong = {name: n for name, n in once.items() if n != settings.triggers}
    if wrong or still_due or len(committed) < settings.triggers:
        result.broken.append(
            f"lateness: {len(committed):,} of {settings.triggers:,} fired within "
            f"{FIRED_TIMEOUT_SECONDS:.0f} s; expected {settings.triggers:,} of each, got "
            f"{wrong or 'that'}; {still_due} still due"
        )
    if run.missed and profiles:
        result.profiles["fire lateness"] = profiles
    _progress(
        f"lateness: committed p50 / p99 / max {_ms(percentile_ms(committed, 0.5))} / "
        f"{_ms(run.p99_ms)} / {_ms(max(committed, default=0) / 1000)} ms"
    )


def _committed(seen: Sequence[tuple[float, int]], due: float, total: int) -> list[int]:
    """Each fire's lateness in µs: when the count first reached its place, minus `due`."""
    late: list[int] = []
    for at, counted in seen:
        late += [round((at - due) * 1e6)] * (min(counted, total) - len(late))
    return late


# -- 2. webhooks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Delivery:
    webhook_id: str
    body: bytes
    headers: dict[str, str]


def _signed(secret: str, number: int) -> _Delivery:
    webhook_id = f"msg_{number}_{uuid.uuid4().hex[:12]}"
    body = f'{{"ref": "refs/heads/main", "after": "{uuid.uuid4().hex}", "n": {number}}}'.encode()
    at = datetime.now(UTC)
    return _Delivery(
        webhook_id,
        body,
        {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
            "content-type": "application/json",
        },
    )


@dataclass(frozen=True)
class _Answer:
    latency_us: int
    status: int
    duplicate: bool
    fire_id: str
    text: str


async def _deliver_all(
    servers: Sequence[ServerProcess], path: str, deliveries: Sequence[_Delivery], senders: int
) -> list[_Answer]:
    """Every delivery, `senders` at a time, each to the processes in turn; in their order."""
    answers: list[_Answer | None] = [None] * len(deliveries)
    queue = iter(enumerate(deliveries))

    async def sender() -> None:
        clients = [
            httpx.AsyncClient(base_url=f"http://{server.target}", timeout=60) for server in servers
        ]
        try:
            for number, delivery in queue:
                client = clients[number % len(clients)]
                sent = time.perf_counter()
                response = await client.post(path, content=delivery.body, headers=delivery.headers)
                latency = round((time.perf_counter() - sent) * 1e6)
                body = response.json() if response.status_code == 200 else {}
                answers[number] = _Answer(
                    latency,
                    response.status_code,
                    bool(body.get("duplicate", False)),
                    str(body.get("fire", {}).get("id", "")),
                    response.text[:200],
                )
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))

    await asyncio.gather(*(sender() for _ in range(senders)))
    return [answer for answer in answers if answer is not None]


def webhook_phase(
    result: TriggerResult, servers: Sequence[ServerProcess], admin_key: str, dsn: str, root: Path
) -> None:
    settings = result.settings

    async def make() -> dict[str, Any]:
        api = Api(servers, 1)
        try:
            env = await api.call(admin_key, "POST", "/api/v1/environments", json={"name": "ci"})
            body = {
                "name": "deploys",
                "environment_id": env["id"],
                "task_prompt": "deploy what was pushed",
                "webhook": {},
            }
            made: dict[str, Any] = await api.call(admin_key, "POST", "/api/v1/triggers", json=body)
            return made
        finally:
            await api.close()

    trigger = asyncio.run(make())
    secret = trigger["webhook"]["secret"]
    path = f"/api/v1/triggers/{trigger['id']}/webhook"
    warmup = [_signed(secret, number) for number in range(WEBHOOK_WARMUP)]
    serial = [_signed(secret, WEBHOOK_WARMUP + n) for n in range(WEBHOOK_SERIAL)]
    timed = [_signed(secret, WEBHOOK_WARMUP + WEBHOOK_SERIAL + n) for n in range(settings.webhooks)]
    replays = timed[:REPLAYS]
    _progress(
        f"webhooks: {WEBHOOK_WARMUP} deliveries of warm-up, {WEBHOOK_SERIAL} one at a time, "
        f"{settings.webhooks:,} {settings.concurrency} at a time, then {len(replays)} replays"
    )
    labelled = [(f"server {server.label}", server.pid) for server in servers]
    warmed = asyncio.run(_deliver_all(servers, path, warmup, settings.concurrency))
    warmed += (one_by_one := asyncio.run(_deliver_all(servers, path, serial, 1)))
    with profiling(labelled, root) as profiles:
        cpu_since = _cpu_meter(labelled, root)
        started = time.monotonic()
        answers = asyncio.run(_deliver_all(servers, path, timed, settings.concurrency))
        seconds = time.monotonic() - started
        cpu = cpu_since()
    replayed = asyncio.run(_deliver_all(servers, path, replays, settings.concurrency))
    run = WebhookResult(
        settings.webhooks,
        settings.concurrency,
        [answer.latency_us for answer in answers],
        seconds,
        [answer.latency_us for answer in one_by_one],
        [answer.latency_us for answer in replayed],
        cpu,
    )
    result.webhooks = run
    wrong: list[str] = []
    failed = [a for a in [*warmed, *answers] if a.status != 200 or a.duplicate or not a.fire_id]
    if failed:
        wrong.append(f"{len(failed)} deliveries did not fire (the first: {failed[0].text})")
    first_fires = [answer.fire_id for answer in answers[:REPLAYS]]
    not_duplicate = [
        a
        for a, fire in zip(replayed, first_fires, strict=True)
        if not a.duplicate or a.fire_id != fire
    ]
    if not_duplicate:
        wrong.append(f"{len(not_duplicate)} replays were not the first fire's duplicate")
    fired = WEBHOOK_WARMUP + WEBHOOK_SERIAL + settings.webhooks
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = {
            "fires": _count(
                conn, "SELECT count(*) FROM roz.trigger_fires WHERE trigger_id = %s", trigger["id"]
            ),
            "webhook-ids": _count(
                conn,
                "SELECT count(DISTINCT webhook_id) FROM roz.trigger_fires"
                " WHERE trigger_id = %s AND outcome = 'created'",
                trigger["id"],
            ),
            "tasks": _count(
                conn, "SELECT count(*) FROM roz.tasks WHERE trigger_id = %s", trigger["id"]
            ),
        }
    if wrong_counts := {name: n for name, n in counts.items() if n != fired}:
        wrong.append(f"expected {fired:,} of each, got {wrong_counts}")
    if wrong:
        result.broken.append("webhooks: " + "; ".join(wrong))
    if run.missed and profiles:
        result.profiles["webhook deliveries"] = profiles
    _progress(
        f"webhooks: p50 / p99 {_ms(percentile_ms(run.latency_us, 0.5))} / {_ms(run.p99_ms)} ms "
        f"(one at a time {_ms(percentile_ms(run.serial_us, 0.5))} / "
        f"{_ms(percentile_ms(run.serial_us, 0.99))} ms); "
        f"replays {_ms(percentile_ms(run.replay_us, 0.5))} / "
        f"{_ms(percentile_ms(run.replay_us, 0.99))} ms"
    )


# -- the whole ----------------------------------------------------------------------------------


def run(settings: TriggerBenchSettings) -> TriggerResult:
    result = TriggerResult(settings)
    result.profiler = py_spy() or "py-spy is not installed: a missed goal goes unprofiled"
    started = time.monotonic()
    result.load_before = os.getloadavg()[0]  # another busy process on the machine skews it all
    root = Path(tempfile.mkdtemp(prefix="roz-bench-triggers-"))
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


def _serve(result: TriggerResult, cluster: str, root: Path) -> None:
    with (
        _scratch_database(cluster, "roz_bench_triggers") as dsn,
        contextlib.ExitStack() as stack,
    ):
        admin_key = mint_secret()
        servers = []
        for label in "ABC"[:PROCESSES]:
            server = ServerProcess(label, dsn, admin_key, root)
            stack.callback(server.stop)
            server.start()
            servers.append(server)
        lateness_phase(result, servers, dsn, root)
        for server in servers:
            server.check()
        webhook_phase(result, servers, admin_key, dsn, root)


# -- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _spread(values_us: Sequence[int]) -> str:
    return (
        f"{_ms(percentile_ms(values_us, 0.5))} / {_ms(percentile_ms(values_us, 0.99))} / "
        f"{_ms(max(values_us, default=0) / 1000)} ms"
    )


def _verdict(missed: bool) -> str:
    return "BELOW GOAL" if missed else "PASS"


def _cpu(cpu: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {seconds:.2f} s" for label, seconds in cpu) + f" ({machine.cores()})"


def render(result: TriggerResult) -> str:
    settings = result.settings
    lines = [
        "",
        f"## Triggers: {settings.triggers:,} schedules due in one second across {PROCESSES} "
        "processes; signed webhook deliveries",
        "",
        "| figure | value | goal | result |",
        "|---|---|---|---|",
    ]
    if (late := result.lateness) is not None:
        lines += [
            f"| {late.triggers:,} schedule triggers due in the same second, {TENANTS} tenants, "
            f"{PROCESSES} processes: committed after the due second, p50 / p99 / max | "
            f"{_spread(late.committed_us)} (each fire's fire_time - scheduled_time: "
            f"{_spread(late.recorded_us)}; made over REST in {late.create_seconds:.1f} s) | "
            f"p99 <= {LATENESS_P99_GOAL_MS:.0f} ms | {_verdict(late.missed)} |",
            f"| CPU while they fired | {_cpu(late.cpu)} | | |",
        ]
    if (hooks := result.webhooks) is not None:
        lines += [
            f"| {hooks.deliveries:,} signed webhook deliveries, each a new webhook-id, "
            f"{hooks.concurrency} at a time over {PROCESSES} processes: verified and fired, "
            f"p50 / p99 / max | {_spread(hooks.latency_us)} "
            f"({hooks.deliveries / hooks.seconds:,.0f} deliveries/s) | "
            f"p99 <= {WEBHOOK_P99_GOAL_MS:.0f} ms | {_verdict(hooks.missed)} |",
            f"| {len(hooks.serial_us)} deliveries one at a time: p50 / p99 / max | "
            f"{_spread(hooks.serial_us)} | | |",
            f"| {len(hooks.replay_us)} replays (a delivered webhook-id again): p50 / p99 / max | "
            f"{_spread(hooks.replay_us)} | | |",
            f"| CPU over the timed deliveries | {_cpu(hooks.cpu)} | | |",
        ]
    lines += [
        "",
        textwrap.fill(
            f"PostgreSQL {result.postgres_version} (embedded pgserver), one database shared by "
            f"{PROCESSES} `roz-server serve` processes with production settings but "
            f"{', '.join(f'{k}={v}' for k, v in SERVER_SETTINGS.items())}. Lateness: a fire "
            f"counts as committed when the bench's count of the fire ledger (every "
            f"{POLL_SECONDS * 1000:.0f} ms, owner connection) first reaches its place; "
            "fire_time is what its history shows. Every trigger checked for exactly one "
            "CREATED fire with its task. Webhooks: one trigger, "
            f"deliveries signed beforehand, {WEBHOOK_WARMUP} untimed first, sent by httpx "
            "asyncio over kept-alive HTTP/1.1 to each process in turn, timed from send to the "
            "answer read; every webhook-id checked for one fire and task, every replay for "
            f"`duplicate` and the first fire. Servers, PostgreSQL and the bench share "
            f"{machine.cores()}; took {result.seconds:.0f} s, load average "
            f"{result.load_before:.2f} before and {result.load_after:.2f} after.",
            width=100,
        ),
    ]
    if result.profiles:
        lines += [
            "",
            f"What dominated each missed goal: py-spy ({result.profiler}) at 100 Hz, on the "
            "servers, without stopping them. Own time is a Python frame's and the C code's "
            "below it:",
        ]
        for goal, profiles in result.profiles.items():
            for profile in profiles:
                lines += _profile_lines(goal, profile)
    elif (late and late.missed) or (hooks and hooks.missed):
        lines += ["", result.profiler]
    if result.broken:
        lines += ["", "BROKEN: " + "; ".join(result.broken)]
    return "\n".join(lines)


def main() -> int:
    # pgserver asks platformdirs for a runtime directory it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    settings = TriggerBenchSettings.from_env()
    if not settings.enabled:
        print("bench: triggers: BENCH_TRIGGERS=0, skipped", file=sys.stderr)
        return 0
    try:
        result = run(settings)
    except RuntimeError as exc:
        print(f"bench: triggers: {exc}", file=sys.stderr)
        return 1
    print(render(result))
    return 1 if result.broken else 0


if __name__ == "__main__":
    sys.exit(main())
