"""A whole roz server for end-to-end tests: RozServer behind a real Hypercorn listener.

Each server gets a fresh database of its own: on the server named by ROZ_TEST_DATABASE_URL, or
else on one embedded PostgreSQL started for the session (starting one per server cost a second
each). A test that passes `data_dir` gets the embedded default itself, a PostgreSQL in that
directory, as `make run` does. Tests talk to servers only through real clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from pgserver import get_server
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from server.app import RozServer
from server.domain.api_keys import mint_secret
from server.listener import hypercorn_config
from server.settings import Settings
from server.storage.bootstrap import create_tenant
from server.storage.roles import app_role_name
from tests.support.server import RunningServer, free_port, running

TEST_DATABASE_URL = os.environ.get("ROZ_TEST_DATABASE_URL") or None


@dataclass
class Roz:
    """A running server and what a test needs to reach it."""

    listener: RunningServer
    app: RozServer
    admin_key: str
    data_dir: Path

    @property
    def url(self) -> str:
        return self.listener.url

    def rest(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}".encode()} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.listener.target)

    def new_tenant(self, label: str = "tenant") -> str:
        """A fresh tenant's admin key, made the way `roz-server admin create-tenant` makes it."""
        name = f"{label}-{uuid.uuid4().hex[:8]}"
        _, secret = self.listener.call(create_tenant(self.app.database.owner_dsn, name))
        return str(secret)


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _create_database(server_dsn: str) -> str:
    name = f"roz_e2e_{uuid.uuid4().hex[:12]}"
    async with await AsyncConnection.connect(server_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_dsn, dbname=name)


async def _drop_database(server_dsn: str, dsn: str) -> None:
    name = str(conninfo_to_dict(dsn)["dbname"])
    async with await AsyncConnection.connect(server_dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        await conn.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app_role_name(name)))
        )


RozFactory = Callable[..., Roz]


class TestClock:
    """A wall clock a test moves by hand: `roz_factory(clock=TestClock())`."""

    __test__ = False

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@contextmanager
def private_directory() -> Iterator[Path]:
    """A directory outside pytest's temporary root, for embedded PostgreSQL data.

    As root, pgserver runs PostgreSQL as the user "pgserver", which must traverse every parent
    directory; pytest resets its own root to mode 0700 whenever any pytest session starts.
    """
    path = Path(tempfile.mkdtemp(prefix="roz-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def roz_dir() -> Iterator[Path]:
    with private_directory() as path:
        yield path


@contextmanager
def postgres_server() -> Iterator[Callable[[], str]]:
    """Where new test databases are made: ROZ_TEST_DATABASE_URL's server, or an embedded
    PostgreSQL started on first use and stopped when the block ends."""
    with ExitStack() as root:
        cluster: list[str] = []

        def server_dsn() -> str:
            if TEST_DATABASE_URL is not None:
                return TEST_DATABASE_URL
            if not cluster:
                place = root.enter_context(private_directory())
                embedded = get_server(place / "cluster", cleanup_mode="stop")
                root.callback(embedded.cleanup)
                cluster.append(embedded.get_uri())
            return cluster[0]

        yield server_dsn


@contextmanager
def roz_servers(server_dsn: Callable[[], str] | None = None) -> Iterator[RozFactory]:
    """Starts servers with settings overrides; all are stopped when the block ends. Their
    databases are made on `server_dsn`'s server (by default a PostgreSQL of the block's own)."""
    stack: list[Any] = []
    databases: list[str] = []
    root = ExitStack()
    scratch = root.enter_context(private_directory())
    if server_dsn is None:
        server_dsn = root.enter_context(postgres_server())

    def start(**overrides: Any) -> Roz:
        own_data_dir = overrides.pop("data_dir", None)
        data_dir = own_data_dir or Path(tempfile.mkdtemp(dir=scratch))
        database_url = overrides.pop("database_url", None)
        if database_url is None and (own_data_dir is None or TEST_DATABASE_URL is not None):
            database_url = _run(_create_database(server_dsn()))
            databases.append(database_url)
        # admin_key=None lets the server generate one and save it in the data directory.
        admin_key = overrides.pop("admin_key", "") if "admin_key" in overrides else mint_secret()
        clock = overrides.pop("clock", None)  # the wall clock of device logins and robot links
        monotonic = overrides.pop("monotonic", None)  # robot links' silence and keepalives
        # The port is chosen first so the server knows its own address (the approval page's URL).
        overrides.setdefault("port", free_port())
        settings = dataclasses.replace(
            Settings(),
            data_dir=data_dir,
            database_url=database_url,
            admin_key=admin_key,
            **overrides,
        )
        apps: list[RozServer] = []

        def build() -> Any:
            apps.append(RozServer(settings, clock=clock, monotonic=monotonic))
            return apps[0].asgi

        context = running(build, config=hypercorn_config(settings), port=settings.port)
        listener = context.__enter__()
        stack.append(context)
        if admin_key is None:
            admin_key = (data_dir / "admin-key").read_text().strip()
        return Roz(listener=listener, app=apps[0], admin_key=admin_key, data_dir=data_dir)

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)
    for url in databases:
        _run(_drop_database(server_dsn(), url))
    root.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[], str]]:
    """The session's PostgreSQL server, on which every test database is made."""
    with postgres_server() as server_dsn:
        yield server_dsn


@pytest.fixture(scope="module")
def roz_factory(postgres: Callable[[], str]) -> Iterator[RozFactory]:
    """Servers that live until the end of the module: servers (each with its pool and its
    listener) that lingered to the session's end added up to PostgreSQL's connection limit."""
    with roz_servers(postgres) as start:
        yield start


@pytest.fixture
def roz_factory_per_test() -> Iterator[RozFactory]:
    """Servers stopped at the end of the test: for a data_dir the test itself cleans up."""
    with roz_servers() as start:
        yield start


@pytest.fixture(scope="session")
def roz(postgres: Callable[[], str]) -> Iterator[Roz]:
    """The session's shared server, with generous rate limits."""
    with roz_servers(postgres) as start:
        yield start(rate_limit_rps=100_000.0, rate_limit_burst=100_000)


@pytest.fixture(scope="module")
def clock() -> TestClock:
    """The wall clock of the module's `server`, moved by hand (device logins)."""
    return TestClock()


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory, clock: TestClock) -> Roz:
    """A server of the module's own, on `clock`, with generous rate limits."""
    return roz_factory(clock=clock, rate_limit_rps=100_000.0, rate_limit_burst=100_000)
