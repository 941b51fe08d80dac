"""When PostgreSQL goes away: calls fail fast with UNAVAILABLE and a retry delay, health says
NOT_SERVING, and the server carries on by itself once the database is back — the embedded one
it starts again itself. A call cut off mid-query keeps the pool its connection, and a shutdown
does not wait on a database that is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from psycopg import AsyncConnection, sql
from roz.v1 import environments_pb2 as pb
from roz.v1 import environments_pb2_grpc

from server.app import RozServer
from server.domain.api_keys import mint_secret
from server.listener import hypercorn_config
from server.settings import Settings
from tests.e2e.conftest import TEST_DATABASE_URL, Roz, RozFactory, private_directory
from tests.e2e.test_operations import serving
from tests.support.server import free_port, running

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A client deadline well under the pool's 30 s: a call that hangs fails as DEADLINE_EXCEEDED.
CLIENT_DEADLINE = 5.0


def eventually(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def list_environments(roz: Roz, timeout: float = CLIENT_DEADLINE) -> grpc.StatusCode:
    """The code of one ListEnvironments over native gRPC; UNAVAILABLE must carry RetryInfo."""
    with roz.channel() as channel:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        try:
            stub.ListEnvironments(
                pb.ListEnvironmentsRequest(),
                metadata=[("authorization", f"Bearer {roz.admin_key}")],
                timeout=timeout,
            )
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            if code == grpc.StatusCode.UNAVAILABLE and retry_delay(error) < 1:
                raise AssertionError("UNAVAILABLE without RetryInfo") from None
            return code
    return grpc.StatusCode.OK


def retry_delay(error: Any) -> int:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return int(info.retry_delay.seconds)
    return 0


def rest_list(roz: Roz) -> httpx.Response:
    with roz.rest(roz.admin_key) as client:
        return client.get("/api/v1/environments", timeout=CLIENT_DEADLINE)


def health(roz: Roz) -> int:
    with roz.channel() as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CLIENT_DEADLINE
        )
    return int(response.status)


class Outages:
    """The storage layer's log lines about the database's state, from the server's thread."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def lines(self, text: str, port: int | None = None) -> list[logging.LogRecord]:
        """Records with `text`; with `port`, only those of the server listening there (its
        event loop's thread), for when other servers of the session share the database."""
        return [
            r
            for r in self._caplog.records
            if text in r.getMessage() and (port is None or r.threadName == f"hypercorn-{port}")
        ]

    def tracebacks(self) -> list[logging.LogRecord]:
        return [r for r in self._caplog.records if r.exc_info and r.levelno >= logging.WARNING]


@pytest.fixture
def outages(caplog: pytest.LogCaptureFixture) -> Outages:
    caplog.set_level(logging.INFO)
    return Outages(caplog)


# -- the embedded PostgreSQL dies -----------------------------------------------------------


@pytest.fixture
def embedded() -> Iterator[Roz]:
    """A server on an embedded PostgreSQL of its own, stopped (with it) at the end of the test."""
    if TEST_DATABASE_URL is not None:
        pytest.skip("kills the embedded PostgreSQL; ROZ_TEST_DATABASE_URL replaces it")
    with private_directory() as data_dir:
        settings = dataclasses.replace(
            Settings(),
            data_dir=data_dir,
            admin_key=mint_secret(),
            port=free_port(),
            # Health is re-checked hourly: only the outage itself can move it within the test.
            health_check_interval_seconds=3600,
        )
        apps: list[RozServer] = []

        def build() -> Any:
            apps.append(RozServer(settings))
            return apps[0].asgi

        with running(build, config=hypercorn_config(settings), port=settings.port) as listener:
            assert apps[0].database.embedded
            assert settings.admin_key is not None
            yield Roz(listener, apps[0], settings.admin_key, data_dir)


def postmaster_pid(roz: Roz) -> int:
    return int((roz.data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])


@contextmanager
def watching_health(roz: Roz) -> Iterator[list[int]]:
    """Every status grpc.health.v1 Watch sends for the whole server, collected as they come."""
    seen: list[int] = []
    with roz.channel() as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60
        )

        def collect() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                for response in stream:
                    seen.append(int(response.status))

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        try:
            eventually(lambda: seen == [SERVING])
            yield seen
        finally:
            stream.cancel()
            collector.join(10)


def test_the_embedded_postgres_is_restarted_and_calls_fail_fast_meanwhile(
    embedded: Roz, outages: Outages
) -> None:
    roz = embedded
    assert list_environments(roz) == grpc.StatusCode.OK
    with watching_health(roz) as seen:
        old_pid = postmaster_pid(roz)
        os.kill(old_pid, signal.SIGKILL)

        # Until it is back, every call is answered at once: UNAVAILABLE with RetryInfo, never
        # a call left hanging until the client's deadline. (A backend may still answer a
        # moment after its postmaster died, hence OK before the first UNAVAILABLE.)
        codes: list[grpc.StatusCode] = []

        def answered(code: grpc.StatusCode) -> bool:
            codes.append(list_environments(roz))
            return codes[-1] == code

        eventually(lambda: answered(grpc.StatusCode.UNAVAILABLE))
        eventually(lambda: NOT_SERVING in seen)
        eventually(lambda: answered(grpc.StatusCode.OK))
        assert set(codes) == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK}, codes
        assert postmaster_pid(roz) != old_pid
        eventually(lambda: seen == [SERVING, NOT_SERVING, SERVING])
        with roz.rest() as client:
            assert client.get("/ready").status_code == 200

    assert len(outages.lines("database unreachable")) == 1
    assert len(outages.lines("database answers again")) == 1
    assert len(outages.lines("starting it again")) == 1
    assert outages.tracebacks() == []


# -- DATABASE_URL: the machine's PostgreSQL stops and starts again --------------------------


def pg_ctlcluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def postgres_answers() -> bool:
    assert TEST_DATABASE_URL is not None

    async def probe() -> None:
        async with await AsyncConnection.connect(TEST_DATABASE_URL, connect_timeout=2) as conn:
            await conn.execute("SELECT 1")

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


@pytest.mark.skipif(
    TEST_DATABASE_URL is None, reason="stops the PostgreSQL server of ROZ_TEST_DATABASE_URL"
)
def test_with_database_url_the_server_carries_on_when_postgres_comes_back(
    roz_factory: RozFactory, outages: Outages
) -> None:
    roz = roz_factory(health_check_interval_seconds=3600)
    assert list_environments(roz) == grpc.StatusCode.OK
    try:
        pg_ctlcluster("stop")
        for _ in range(3):  # at once, each time: no call waits for the pool's timeout
            assert list_environments(roz) == grpc.StatusCode.UNAVAILABLE
            response = rest_list(roz)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
        with roz.rest() as client:
            assert client.get("/ready").status_code == 503
            assert client.get("/health").status_code == 200  # liveness: the process is fine
        assert health(roz) == NOT_SERVING
    finally:
        pg_ctlcluster("start")
        eventually(postgres_answers, seconds=60)  # the other tests need it back

    eventually(lambda: list_environments(roz) == grpc.StatusCode.OK)
    eventually(lambda: health(roz) == SERVING)
    with roz.rest() as client:
        assert client.get("/ready").status_code == 200
    # Every server of the session on this PostgreSQL notices; this one says so once.
    port = roz.listener.port
    assert len(outages.lines("database unreachable", port)) == 1
    assert len(outages.lines("database answers again", port)) == 1
    assert [r for r in outages.tracebacks() if r.name.startswith(("server", "gateway"))] == []


# -- a call cut off mid-query ---------------------------------------------------------------


async def lock_environments(roz: Roz, locked: asyncio.Event, release: asyncio.Event) -> None:
    """Holds roz.environments locked, so that any query on it waits until `release`."""
    async with await AsyncConnection.connect(roz.app.database.owner_dsn) as conn:
        await conn.execute("LOCK TABLE roz.environments IN ACCESS EXCLUSIVE MODE")
        locked.set()
        await release.wait()


async def events() -> tuple[asyncio.Event, asyncio.Event]:
    return asyncio.Event(), asyncio.Event()


def test_a_call_whose_deadline_expires_mid_query_keeps_the_pool_its_connection(
    roz_factory: RozFactory, outages: Outages
) -> None:
    roz = roz_factory()
    pool = roz.app.database.pool
    assert list_environments(roz) == grpc.StatusCode.OK
    before = pool.get_stats()
    locked, release = roz.listener.call(events())
    holder = asyncio.run_coroutine_threadsafe(
        lock_environments(roz, locked, release), roz.listener.loop
    )
    try:
        roz.listener.call(locked.wait())
        # The server's own deadline and the client's RST_STREAM both cancel the call, a few
        # milliseconds apart: the query is cancelled in PostgreSQL and the connection kept.
        for _ in range(5):
            assert list_environments(roz, timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        roz.listener.loop.call_soon_threadsafe(release.set)
        holder.result(10)
    assert list_environments(roz) == grpc.StatusCode.OK

    after = pool.get_stats()
    for lost in ("returns_bad", "connections_lost"):
        assert after.get(lost, 0) == before.get(lost, 0), after
    # Only this server's lines: the session's other servers, on the same PostgreSQL, may still
    # be discarding connections that an earlier test's restart of it closed.
    port = roz.listener.port
    assert outages.lines("closing connection", port) == []
    assert outages.lines("discarding", port) == []


# -- shutting down while the database is away -----------------------------------------------


async def cut_off_request_role(owner_dsn: str, role: str) -> None:
    """What a lost database looks like to the server: its request role cannot connect."""
    async with await AsyncConnection.connect(owner_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )


@pytest.mark.skipif(
    TEST_DATABASE_URL is not None, reason="runs `roz-server serve` on its embedded database"
)
def test_sigterm_with_the_database_away_ends_within_the_grace_period(roz_dir: Path) -> None:
    grace = 1.0  # serving() sets ROZ_SHUTDOWN_GRACE_SECONDS=1
    key = mint_secret()
    data_dir = roz_dir / "roz"
    with serving(data_dir, ROZ_ADMIN_KEY=key) as (url, process):
        headers = {"authorization": f"Bearer {key}"}
        # A used key: its last-used time is waiting to be written at shutdown.
        assert httpx.get(url + "/api/v1/environments", headers=headers).status_code == 200
        owner_dsn = f"postgresql://postgres@/roz?host={data_dir / 'postgres'}"
        asyncio.run(cut_off_request_role(owner_dsn, "roz_app_roz"))
        refused = httpx.get(url + "/api/v1/environments", headers=headers, timeout=CLIENT_DEADLINE)
        assert refused.status_code == 503
        eventually(lambda: httpx.get(url + "/ready", timeout=CLIENT_DEADLINE).status_code == 503)

        process.send_signal(signal.SIGTERM)
        # Kubernetes kills the pod 30 s after SIGTERM; the grace is for calls, not the database.
        assert process.wait(grace + 5) == 0
        log = process.stdout.read() if process.stdout else ""
    assert "could not write the last-used times of 1 API keys at shutdown" in log
