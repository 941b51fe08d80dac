"""A real PostgreSQL for the server tests: embedded pgserver by default, or the server named by
ROZ_TEST_DATABASE_URL (on which each run creates databases with random names and drops them).

`database` is the session's roz Database, started exactly as the server starts it (embedded
when no URL is set). `new_database_url` hands out further empty databases on the same server
for tests that need a first start of their own (migrations, bootstrap).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from server.domain.environments import EnvironmentDraft
from server.domain.tenants import Tenant
from server.storage.api_keys import ApiKeyRepository, LastUsedRecorder
from server.storage.bootstrap import create_tenant
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.roles import app_role_name
from server.storage.tenancy import tenant_transaction

TEST_DATABASE_URL = os.environ.get("ROZ_TEST_DATABASE_URL") or None


async def _create_database(server_dsn: str) -> str:
    name = f"roz_test_{uuid.uuid4().hex[:12]}"
    async with await AsyncConnection.connect(server_dsn, autocommit=True) as conn:
        await conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    return make_conninfo(server_dsn, dbname=name)


async def _drop_database(server_dsn: str, dsn: str) -> None:
    name = conninfo_to_dict(dsn)["dbname"]
    assert isinstance(name, str)
    async with await AsyncConnection.connect(server_dsn, autocommit=True) as conn:
        await conn.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )
        # The request role is cluster-wide; its privileges went with the database.
        await conn.execute(
            pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(app_role_name(name)))
        )


@contextmanager
def _embedded_data_dir() -> Iterator[Path]:
    """A data directory for pgserver, outside pytest's temporary root.

    Run as root, pgserver starts PostgreSQL as the user "pgserver", which needs to traverse
    every directory above its data. pytest resets its root (/tmp/pytest-of-<user>) to mode 0700
    whenever any pytest session starts on the machine, which would pull the floor from under a
    running server; a directory of our own directly in the system temp dir is not touched.
    """
    path = Path(tempfile.mkdtemp(prefix="roz-test-"))
    try:
        yield path
    finally:
        _stop_leftover_server(path / "postgres")
        shutil.rmtree(path, ignore_errors=True)


def _stop_leftover_server(pgdata: Path) -> None:
    """Fast-stops a server a failed test left running here, so no orphan outlives the run."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    with _embedded_data_dir() as path:
        yield path


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[Database]:
    with _embedded_data_dir() as data_dir:
        if TEST_DATABASE_URL is None:
            db = Database(database_url=None, data_dir=data_dir)
            await db.open()
            try:
                yield db
            finally:
                await db.close()
            return
        url = await _create_database(TEST_DATABASE_URL)
        db = Database(database_url=url, data_dir=data_dir)
        try:
            await db.open()
            yield db
        finally:
            await db.close()
            await _drop_database(TEST_DATABASE_URL, url)


@pytest.fixture(scope="session")
def server_dsn(database: Database) -> str:
    """A superuser DSN on the server behind `database`, for creating more databases."""
    return TEST_DATABASE_URL or database.owner_dsn


NewDatabaseUrl = Callable[[], Awaitable[str]]


@pytest.fixture
async def new_database_url(server_dsn: str) -> AsyncIterator[NewDatabaseUrl]:
    """Makes empty databases (as DATABASE_URLs) on the test server; drops them afterwards."""
    created: list[str] = []

    async def make() -> str:
        url = await _create_database(server_dsn)
        created.append(url)
        return url

    yield make
    for url in created:
        await _drop_database(server_dsn, url)


@dataclass(frozen=True)
class TenantWithKey:
    tenant: Tenant
    admin_secret: str

    @property
    def id(self) -> uuid.UUID:
        return self.tenant.id


async def make_tenant(database: Database, label: str = "tenant") -> TenantWithKey:
    tenant, secret = await create_tenant(database.owner_dsn, f"{label}-{uuid.uuid4().hex[:10]}")
    return TenantWithKey(tenant, secret)


@pytest.fixture
async def tenant_a(database: Database) -> TenantWithKey:
    return await make_tenant(database, "a")


@pytest.fixture
async def tenant_b(database: Database) -> TenantWithKey:
    return await make_tenant(database, "b")


@pytest.fixture
def environments(database: Database) -> EnvironmentRepository:
    return EnvironmentRepository(database.pool)


@pytest.fixture
async def recorder(database: Database) -> AsyncIterator[LastUsedRecorder]:
    recorder = LastUsedRecorder(database.pool, interval_seconds=3600)
    yield recorder
    await recorder.close()


@pytest.fixture
def api_keys(database: Database, recorder: LastUsedRecorder) -> ApiKeyRepository:
    return ApiKeyRepository(database.pool, recorder)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- rows the storage tests build on -----------------------------------------------------


async def sql(
    database: Database, tenant: TenantWithKey, query: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    async with tenant_transaction(database.pool, tenant.id) as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall() if cursor.description else []


async def new_environment(environments: EnvironmentRepository, tenant: TenantWithKey) -> uuid.UUID:
    created = await environments.create(
        tenant.id, EnvironmentDraft(name=f"env-{uuid.uuid4().hex[:8]}")
    )
    return created.id


async def new_host(
    database: Database, tenant: TenantWithKey, environment_id: uuid.UUID | None = None
) -> uuid.UUID:
    rows = await sql(
        database,
        tenant,
        "INSERT INTO roz.hosts (tenant_id, environment_id, name) VALUES (%s, %s, %s) RETURNING id",
        (tenant.id, environment_id, f"host-{uuid.uuid4().hex[:8]}"),
    )
    return rows[0][0]  # type: ignore[no-any-return]
