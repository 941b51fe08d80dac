"""Bulk rows for the commands and tasks scenarios, written over the owner connection.

These bypass the API for speed: 100,000 tasks through CreateTask and TransitionTask would take
longer than the whole benchmark, and each TransitionCommand run needs thousands of fresh
PENDING commands. The rows are what the API itself writes — every CHECK of
server/storage/migrations/0005_tasks.sql and 0006_commands.sql holds, each row has its history
from its creation on (the first transition, from NULL, with the creating key as actor), and the
states, times and deadlines agree with the transition tables — so a listed or transitioned row
is indistinguishable from one the API made. Each statement sets the tenant, as
owner_tenant_transaction does, so RLS's WITH CHECK would hold even without the owner's bypass.

After each commands run the commands of the bench host are deleted again (their history goes
with them, as the append-only trigger allows once a command is gone) and the tables vacuumed,
so every run starts from the same database and no run leaves dead rows for the next to pay.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.servers import Endpoints
from server.storage.database import APPLICATION_NAME

_SET_TENANT = "SELECT set_config('roz.tenant_id', %s, true)"

# Newest first, one task every `spacing` seconds back from now (every 7th shares its neighbour's
# create_time, so the id really breaks ties across page boundaries). The newest 0.5% are still
# PENDING, QUEUED or RUNNING; the rest finished as a fleet's tasks do: mostly SUCCEEDED, some
# FAILED, CANCELLED, TIMED_OUT or SAFETY_STOPPED. A RUNNING task started under an hour ago with a
# 2 h timeout, so the server's sweep does not touch the data set while the benchmark runs.
_SEED_TASKS = """
WITH spec AS (
    SELECT g.i,
           %(now)s - make_interval(secs => (g.i - (g.i %% 7 = 0)::int) * %(spacing)s::float8)
               AS create_time,
           CASE
               WHEN g.i <= %(active)s::integer
                   THEN (ARRAY['pending', 'queued', 'running'])[1 + g.i %% 3]
               WHEN h.v < 85 THEN 'succeeded'
               WHEN h.v < 93 THEN 'failed'
               WHEN h.v < 97 THEN 'cancelled'
               WHEN h.v < 99 THEN 'timed_out'
               ELSE 'safety_stopped'
           END AS state,
           h.v AS mix
      FROM generate_series(1, %(count)s::integer) AS g(i)
     CROSS JOIN LATERAL (SELECT abs(hashint4(g.i)) %% 100 AS v) AS h
), timed AS (
    SELECT spec.*,
           CASE WHEN state = 'running' THEN interval '2 hours' ELSE interval '1 hour' END
               AS timeout,
           CASE
               WHEN state = 'running'
                   THEN greatest(create_time + interval '3 seconds',
                                 %(now)s - make_interval(secs => 60 + mix * 30))
               WHEN state IN ('succeeded', 'failed', 'timed_out')
                   THEN create_time + make_interval(secs => 2 + mix %% 60)
           END AS start_time
      FROM spec
), finished AS (
    SELECT timed.*,
           CASE state
               WHEN 'succeeded' THEN start_time + make_interval(secs => 20 + mix * 17)
               WHEN 'failed' THEN start_time + make_interval(secs => 5 + mix * 3)
               WHEN 'timed_out' THEN start_time + timeout
               WHEN 'cancelled' THEN create_time + make_interval(secs => 5 + mix * 2)
               WHEN 'safety_stopped'
                   THEN create_time + interval '1 second' + make_interval(secs => 1 + mix)
           END AS end_time,
           CASE state
               WHEN 'succeeded' THEN 'packed and photographed'
               WHEN 'failed' THEN 'the gripper lost the item twice'
               WHEN 'cancelled' THEN 'order withdrawn by the customer'
               WHEN 'timed_out' THEN 'timeout'
               WHEN 'safety_stopped' THEN 'light curtain tripped in zone pack'
               ELSE ''
           END AS result
      FROM timed
), created AS (
    INSERT INTO roz.tasks (tenant_id, environment_id, host_id, prompt, timeout, allowed_tools,
                           labels, state, result, create_time, update_time, start_time,
                           run_deadline, end_time)
    SELECT %(tenant)s, %(environment)s,
           CASE WHEN i %% 5 = 0 THEN NULL ELSE (%(hosts)s::uuid[])[1 + i %% 2] END,
           format('Pick the items of order %%s from zone pick, pack them into tote %%s and '
                  'photograph the tote before it leaves the cell.', 100000 + i, i %% 40),
           timeout,
           CASE WHEN i %% 4 = 0 THEN (%(tools)s::text[])[1:2] ELSE %(tools)s::text[] END,
           jsonb_build_object('order', (100000 + i)::text,
                              'priority', CASE WHEN i %% 10 = 0 THEN 'rush' ELSE 'normal' END),
           state, result, create_time,
           coalesce(end_time, start_time,
                    CASE WHEN state = 'queued' THEN create_time + interval '1 second' END,
                    create_time),
           start_time,
           CASE WHEN state = 'running' THEN start_time + timeout END,
           end_time
      FROM finished
    RETURNING tenant_id, id, state, result, create_time, start_time, end_time
)
INSERT INTO roz.task_transitions
       (tenant_id, task_id, from_state, to_state, reason, actor_key_id, transition_time)
SELECT c.tenant_id, c.id, step.from_state, step.to_state, step.reason, step.actor, step.at
  FROM created AS c
 CROSS JOIN LATERAL (VALUES
       (1, NULL, 'pending', '', %(actor)s::uuid, c.create_time),
       (2, 'pending', 'queued', '', %(actor)s::uuid, c.create_time + interval '1 second'),
       (3, 'queued', 'running', '', %(actor)s::uuid, c.start_time),
       (4, 'running', c.state, c.result,
        CASE WHEN c.state = 'timed_out' THEN NULL ELSE %(actor)s::uuid END, c.end_time),
       (5, 'pending', 'cancelled', c.result, %(actor)s::uuid, c.end_time),
       (6, 'queued', 'safety_stopped', c.result, %(actor)s::uuid, c.end_time)
       ) AS step(n, from_state, to_state, reason, actor, at)
 WHERE step.n = 1
    OR (step.n = 2 AND c.state NOT IN ('pending', 'cancelled'))
    OR (step.n = 3 AND c.state IN ('running', 'succeeded', 'failed', 'timed_out'))
    OR (step.n = 4 AND c.state IN ('succeeded', 'failed', 'timed_out'))
    OR (step.n = 5 AND c.state = 'cancelled')
    OR (step.n = 6 AND c.state = 'safety_stopped')
 ORDER BY c.create_time, c.id, step.n
"""

# PENDING commands as CreateCommand stores one that passed both policies: the same params, the
# policy versions it was checked against, and its creation in the history. No timeout: one left
# RUNNING at the end of a run is never swept while another run is measured.
_SEED_COMMANDS = """
WITH created AS (
    INSERT INTO roz.commands (tenant_id, host_id, type, params, state, applied_policies,
                              create_time, update_time)
    SELECT %(tenant)s, %(host)s, 'move_to', %(params)s::jsonb || jsonb_build_object('seq', g.i),
           'pending', %(applied)s::jsonb, clock_timestamp(), clock_timestamp()
      FROM generate_series(1, %(count)s::integer) AS g(i)
    RETURNING tenant_id, id, create_time
), recorded AS (
    INSERT INTO roz.command_transitions
           (tenant_id, command_id, from_state, to_state, reason, actor_key_id, transition_time)
    SELECT tenant_id, id, NULL, 'pending', 'created', %(actor)s, create_time FROM created
)
SELECT id FROM created
"""


@dataclass(frozen=True)
class SeededTasks:
    count: int
    transitions: int
    seconds: float  # the INSERTs, then VACUUM ANALYZE


@contextmanager
def _owner(endpoints: Endpoints) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(
        endpoints.owner_dsn, autocommit=True, application_name="roz-bench (owner)"
    ) as conn:
        yield conn


def seed_tasks(endpoints: Endpoints, count: int) -> SeededTasks:
    """`count` tasks in the environment with the two arms, and their histories."""
    started = time.perf_counter()
    with _owner(endpoints) as conn:
        with conn.transaction():
            conn.execute(_SET_TENANT, (endpoints.tenant_id,))
            now = conn.execute("SELECT now()").fetchone()
            assert now is not None
            conn.execute(
                _SEED_TASKS,
                {
                    "now": now[0],
                    "count": count,
                    # About 30 days of history, whatever the count.
                    "spacing": 30 * 86400 / max(count, 1),
                    "active": max(3, count // 200),
                    "tenant": endpoints.tenant_id,
                    "environment": endpoints.environment_id,
                    "hosts": endpoints.host_ids,
                    "tools": endpoints.environment_tools,
                    "actor": endpoints.writer_key_id,
                },
            )
        # As a long-lived database has them: statistics, and a visibility map.
        conn.execute("VACUUM (ANALYZE) roz.tasks, roz.task_transitions")
        row = conn.execute(
            "SELECT (SELECT count(*) FROM roz.tasks WHERE tenant_id = %(t)s),"
            " (SELECT count(*) FROM roz.task_transitions WHERE tenant_id = %(t)s)",
            {"t": endpoints.tenant_id},
        ).fetchone()
    assert row is not None
    tasks, transitions = _int(row[0]), _int(row[1])
    if tasks != count:
        raise RuntimeError(f"seeding tasks: {tasks} rows instead of {count}")
    return SeededTasks(tasks, transitions, time.perf_counter() - started)


def command_params(seq: int | None = None) -> dict[str, object]:
    """A move within both policies' limits and workspaces (server/bench/servers.py)."""
    params: dict[str, object] = {
        "velocity": 0.8,
        "acceleration": 1.5,
        "force": 25.0,
        "payload": 2.4,
        "target": {"x": 0.4, "y": -0.3, "z": 0.9},
        "tool": "gripper",
    }
    if seq is not None:
        params["seq"] = seq
    return params


def seed_pending_commands(endpoints: Endpoints, count: int) -> list[str]:
    """`count` fresh PENDING commands on the bench's command host; returns their ids."""
    applied = [
        {"policy_id": policy_id, "version": version}
        for policy_id, version in endpoints.command_policies
    ]
    with _owner(endpoints) as conn, conn.transaction():
        conn.execute(_SET_TENANT, (endpoints.tenant_id,))
        rows = conn.execute(
            _SEED_COMMANDS,
            {
                "tenant": endpoints.tenant_id,
                "host": endpoints.command_host_id,
                "params": json.dumps(command_params()),
                "applied": json.dumps(applied),
                "count": count,
                "actor": endpoints.writer_key_id,
            },
        ).fetchall()
    return [str(row[0]) for row in rows]


@dataclass(frozen=True)
class CommandCensus:
    """What the bench host's commands are, and which transitions were recorded."""

    states: Counter[str]
    moves: Counter[tuple[str | None, str]]
    wrong_policies: int  # commands whose applied_policies are not the two current versions

    @property
    def commands(self) -> int:
        return sum(self.states.values())

    def transitions(self, from_state: str | None, to_state: str) -> int:
        return self.moves[(from_state, to_state)]


# A request-pool backend that is not idle: a call the load started is still being written.
_BUSY = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE application_name = %s AND pid <> pg_backend_pid() AND state <> 'idle'"
)


def settle(endpoints: Endpoints, timeout_seconds: float = 30.0) -> None:
    """Waits until the server has finished every call a load generator left in flight.

    A generator stops counting when its window closes, but the server goes on with the calls
    it had already received; the rows they write must be in before counting, or deleting.
    """
    deadline = time.monotonic() + timeout_seconds
    quiet = 0
    with _owner(endpoints) as conn:
        while quiet < 3:  # idle three times in a row, 50 ms apart
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server was still busy {timeout_seconds:.0f} s after the load"
                )
            busy = conn.execute(_BUSY, (APPLICATION_NAME,)).fetchone()
            quiet = quiet + 1 if busy is not None and busy[0] == 0 else 0
            time.sleep(0.05)


def census(endpoints: Endpoints) -> CommandCensus:
    applied = json.dumps(
        [
            {"policy_id": policy_id, "version": version}
            for policy_id, version in endpoints.command_policies
        ]
    )
    host = endpoints.command_host_id
    settle(endpoints)
    with _owner(endpoints) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
        states = conn.execute(
            "SELECT state, count(*) FROM roz.commands WHERE host_id = %s GROUP BY state", (host,)
        ).fetchall()
        moves = conn.execute(
            "SELECT t.from_state, t.to_state, count(*) FROM roz.command_transitions AS t"
            " JOIN roz.commands AS c ON c.tenant_id = t.tenant_id AND c.id = t.command_id"
            " WHERE c.host_id = %s GROUP BY 1, 2",
            (host,),
        ).fetchall()
        wrong = conn.execute(
            "SELECT count(*) FROM roz.commands WHERE host_id = %s"
            " AND applied_policies <> %s::jsonb",
            (host, applied),
        ).fetchone()
    return CommandCensus(
        states=Counter({str(state): _int(n) for state, n in states}),
        moves=Counter(
            {
                (None if before is None else str(before), str(after)): _int(n)
                for before, after, n in moves
            }
        ),
        wrong_policies=_int(wrong[0] if wrong else 0),
    )


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def remove_commands(endpoints: Endpoints) -> None:
    """Every command of the bench host and its history; then the tables are vacuumed."""
    settle(endpoints)
    with _owner(endpoints) as conn:
        with conn.transaction():
            conn.execute(_SET_TENANT, (endpoints.tenant_id,))
            conn.execute(
                "DELETE FROM roz.commands WHERE tenant_id = %s AND host_id = %s",
                (endpoints.tenant_id, endpoints.command_host_id),
            )
        conn.execute("VACUUM (ANALYZE) roz.commands, roz.command_transitions")
