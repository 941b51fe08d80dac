"""Three `roz-server serve` processes on one database and 1,000 schedule triggers due in the same
second: every trigger fires exactly once, with its task, and the processes share the work; when
one of them is SIGKILLed holding a batch, its transaction rolls back and the others fire what it
held, still exactly once.

Everything is read back as a user reads it (REST fire histories and task listings of each
tenant), and counted once more in the database over the owner connection, below row-level
security, where a fire or task in the wrong tenant would still show. Which process fired what is
recorded nowhere; that they shared the work shows in pg_stat_activity, as batches under way at
the same time (a process fires one batch at a time).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from server.domain.api_keys import mint_secret
from server.storage.bootstrap import create_tenant
from tests.e2e.conftest import Roz, _create_database, _drop_database, _run
from tests.e2e.test_operations import serving

TENANTS = 5
TRIGGERS = 1_000
# How far ahead the triggers are due: creating 1,000 over REST takes 4-6 s on two cores, and a
# trigger created after its time would wait a day (each creation is checked against it).
LEAD_SECONDS = 15
FIRED_TIMEOUT_SECONDS = 30.0
CREATORS = 12  # requests in flight while the triggers are made


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]


@dataclass(frozen=True)
class Tenant:
    key: str
    environment_id: str


@dataclass
class Fleet:
    """The triggers made for one test: all due at `due`, by tenant."""

    due: datetime
    tenants: list[Tenant]
    triggers: dict[str, Tenant]  # trigger id → its tenant


@dataclass
class Trio:
    servers: list[Server]
    dsn: str  # the database, as its owner (row-level security does not apply)
    clients: list[httpx.Client]

    def rest(self, number: int, key: str, method: str, path: str, **kwargs: Any) -> Any:
        """A call through one of the running processes, by `number` in turn."""
        running = [
            client
            for client, server in zip(self.clients, self.servers, strict=True)
            if server.process.poll() is None
        ]
        client = running[number % len(running)]
        response = client.request(
            method, path, headers={"authorization": f"Bearer {key}"}, **kwargs
        )
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def count(self, query: str, *params: Any) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def trio(roz: Roz, roz_dir: Path) -> Iterator[Trio]:
    owner = roz.app.database.owner_dsn
    dsn = _run(_create_database(owner))
    settings = {
        "DATABASE_URL": dsn,
        "ROZ_ADMIN_KEY": mint_secret(),
        "ROZ_LOG_LEVEL": "WARNING",  # nobody reads the pipe until the end
        "ROZ_RATE_LIMIT_RPS": "100000",
        "ROZ_RATE_LIMIT_BURST": "100000",
        # Three processes beside the session's servers on one PostgreSQL: a small pool each
        # keeps the suite under the server's connection limit (100 by default).
        "ROZ_DB_POOL_MAX": "4",
    }
    try:
        with ExitStack() as stack:
            servers = [
                Server(*stack.enter_context(serving(roz_dir / name, **settings)))
                for name in ("a", "b", "c")
            ]
            clients = [
                stack.enter_context(
                    httpx.Client(
                        base_url=server.url,
                        timeout=30,
                        limits=httpx.Limits(max_connections=CREATORS),
                    )
                )
                for server in servers
            ]
            yield Trio(servers, dsn, clients)
    finally:
        _run(_drop_database(owner, dsn))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def in_parallel(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=CREATORS) as pool:
        return list(pool.map(work, items))


def make_fleet(trio: Trio) -> Fleet:
    """TENANTS tenants, each with an environment and its share of TRIGGERS schedule triggers,
    all due at one whole second LEAD_SECONDS ahead; made through every process in turn."""
    tenants = []
    for number in range(TENANTS):
        _, key = _run(create_tenant(trio.dsn, f"fleet-{number}-{uuid.uuid4().hex[:6]}"))
        made = trio.rest(number, key, "POST", "/api/v1/environments", json={"name": "yard"})
        tenants.append(Tenant(key, str(made["id"])))
    due = (datetime.now(UTC) + timedelta(seconds=LEAD_SECONDS)).replace(microsecond=0)
    cron = f"{due.second} {due.minute} {due.hour} * * *"

    def create(number: int) -> tuple[str, Tenant]:
        tenant = tenants[number % TENANTS]
        body = {
            "name": f"sweep-{number}",
            "environment_id": tenant.environment_id,
            "task_prompt": f"sweep aisle {number}",
            "schedule": {"cron": cron},
        }
        made = trio.rest(number, tenant.key, "POST", "/api/v1/triggers", json=body)
        # Made after its time, a trigger would wait for tomorrow: then LEAD_SECONDS is too short.
        assert utc(made["next_fire_time"]) == due, (made["next_fire_time"], due)
        return str(made["id"]), tenant

    return Fleet(due, tenants, dict(in_parallel(create, list(range(TRIGGERS)))))


# A backend of a batch of fires: in a transaction that has written (or locked rows), at a
# statement on what a fire reads or writes (not, say, the audit trail's sealing).
_IN_BATCH = (
    "datname = current_database() AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
    r" AND query ~ 'roz\.(triggers|trigger_fires|tasks|environments)\M'"
)
# The fires so far, and the batches under way: a process fires one batch at a time.
_FIRING = (
    "SELECT (SELECT count(*) FROM roz.trigger_fires),"
    f" (SELECT count(*) FROM pg_stat_activity WHERE {_IN_BATCH})"
)


def wait_fired(trio: Trio) -> int:
    """Until the ledger holds a fire for every trigger, polled in the database, so that the
    servers are not asked while they fire. Returns the most batches seen under way at once."""
    deadline = time.monotonic() + LEAD_SECONDS + FIRED_TIMEOUT_SECONDS
    most = 0
    with psycopg.connect(trio.dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(_FIRING).fetchone()
            assert row is not None
            fired, batches = row
            most = max(most, batches)
            if fired >= TRIGGERS:
                return most
            assert time.monotonic() < deadline, f"{fired} of {TRIGGERS} triggers fired"
            time.sleep(0.01)


@dataclass(frozen=True)
class Fired:
    fires: dict[str, dict[str, Any]]  # trigger id → its one fire
    tasks: dict[str, dict[str, Any]]  # task id → task, over every tenant


def check_fired_once(trio: Trio, fleet: Fleet) -> Fired:
    """Every trigger fired once at its due time and made one task that names it and its fire;
    nothing else fired and nothing is due any more."""

    def history(item: tuple[int, tuple[str, Tenant]]) -> tuple[str, list[dict[str, Any]]]:
        number, (trigger_id, tenant) = item
        page = trio.rest(
            number,
            tenant.key,
            "GET",
            f"/api/v1/triggers/{trigger_id}/fires",
            params={"page_size": 10},
        )
        return trigger_id, page.get("fires", [])

    histories = dict(in_parallel(history, list(enumerate(fleet.triggers.items()))))
    assert {trigger: len(found) for trigger, found in histories.items() if len(found) != 1} == {}
    fires = {trigger: found[0] for trigger, found in histories.items()}
    assert Counter(fire["outcome"] for fire in fires.values()) == {"OUTCOME_CREATED": TRIGGERS}
    assert Counter(fire["source"] for fire in fires.values()) == {"SOURCE_SCHEDULE": TRIGGERS}
    assert {utc(fire["scheduled_time"]) for fire in fires.values()} == {fleet.due}

    tasks: dict[str, dict[str, Any]] = {}
    for number, tenant in enumerate(fleet.tenants):
        token = ""
        while True:
            page = trio.rest(
                number,
                tenant.key,
                "GET",
                "/api/v1/tasks",
                params={"page_size": 1000, "page_token": token},
            )
            for task in page.get("tasks", []):
                assert task["id"] not in tasks
                tasks[task["id"]] = task
            if not (token := page.get("next_page_token", "")):
                break
    assert len(tasks) == TRIGGERS
    for trigger_id, fire in fires.items():
        task = tasks[fire["task_id"]]
        assert (task["trigger_id"], task["trigger_fire_id"]) == (trigger_id, fire["id"])
        assert task["prompt"].startswith("sweep aisle ")

    # Below row-level security: nothing in a tenant the listings above did not show, no time
    # fired twice under another spelling of its key, nothing still due.
    counts = {
        "fires": "SELECT count(*) FROM roz.trigger_fires",
        "times fired": "SELECT count(DISTINCT (trigger_id, scheduled_time)) FROM roz.trigger_fires",
        "tasks": "SELECT count(*) FROM roz.tasks",
        "fires with tasks": "SELECT count(DISTINCT trigger_fire_id) FROM roz.tasks",
    }
    assert {name: trio.count(query) for name, query in counts.items()} == dict.fromkeys(
        counts, TRIGGERS
    )
    due = "SELECT count(*) FROM roz.triggers WHERE next_fire_time <= %s"
    assert trio.count(due, fleet.due) == 0
    return Fired(fires, tasks)


def test_a_thousand_triggers_due_at_once_fire_once_each_across_three_processes(
    trio: Trio,
) -> None:
    fleet = make_fleet(trio)
    early = trio.count("SELECT count(*) FROM roz.trigger_fires")
    assert datetime.now(UTC) < fleet.due  # so that count was taken before the due time
    assert early == 0
    batches_at_once = wait_fired(trio)
    check_fired_once(trio, fleet)
    assert batches_at_once >= 2  # the processes shared the work


# The batches waiting for the environments the test holds.
_BLOCKED = f"SELECT count(*) FROM pg_stat_activity WHERE {_IN_BATCH} AND wait_event_type = 'Lock'"
# The triggers due but claimed by some batch: FOR KEY SHARE skips the rows a claim (FOR UPDATE)
# holds, and blocks no claim for longer than this one statement.
_UNCLAIMED = (
    "SELECT id::text FROM roz.triggers WHERE next_fire_time <= %s FOR KEY SHARE SKIP LOCKED"
)


def test_a_process_killed_holding_a_batch_leaves_it_to_the_others(trio: Trio) -> None:
    fleet = make_fleet(trio)
    victim = trio.servers[2]
    environments = [tenant.environment_id for tenant in fleet.tenants]
    with psycopg.connect(trio.dsn) as blocker:
        # A fire's task needs its environment (read FOR SHARE, and its foreign key): with every
        # environment held, each process stops inside its first batch, after the claim.
        blocker.execute(
            "SELECT id FROM roz.environments WHERE id = ANY(%s::uuid[]) FOR UPDATE",
            (environments,),
        )
        deadline = time.monotonic() + LEAD_SECONDS + FIRED_TIMEOUT_SECONDS
        while trio.count(_BLOCKED) < len(trio.servers):
            assert time.monotonic() < deadline, f"{trio.count(_BLOCKED)} batches under way"
            time.sleep(0.02)
        assert trio.count(_BLOCKED) == len(trio.servers)  # one batch each, no more
        with psycopg.connect(trio.dsn) as probe:
            unclaimed = {row[0] for row in probe.execute(_UNCLAIMED, (fleet.due,)).fetchall()}
        held = set(fleet.triggers) - unclaimed
        assert held  # claimed, not yet fired
        assert trio.count("SELECT count(*) FROM roz.trigger_fires WHERE outcome = 'created'") == 0
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        killed_at = datetime.now(UTC)
        blocker.rollback()

    wait_fired(trio)
    fired = check_fired_once(trio, fleet)

    # A task's create_time is when the transaction of its batch began. The survivors finished
    # the batches they held, begun before the kill; what the victim held rolled back with it
    # and was fired again, by a survivor, in a batch begun after it.
    def begun(trigger: str) -> datetime:
        return utc(fired.tasks[fired.fires[trigger]["task_id"]]["create_time"])

    after = {trigger for trigger in held if begun(trigger) > killed_at}
    assert 0 < len(after) < len(held), (len(after), len(held))
    assert all(begun(trigger) < killed_at for trigger in held - after)
