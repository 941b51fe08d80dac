"""The database roz runs on: embedded or DATABASE_URL, migrated, pooled as the request role.

Start-up, in order: start the embedded PostgreSQL when there is no URL; connect as the owner
(the URL's user, or pgserver's superuser) and, under the migration lock, apply migrations and
set up the request role (server/storage/roles.py); then open a pool that logs in as that role.
The owner connection is closed again: requests never run as the owner.

After start-up the database may go away (server/storage/availability.py): requests are then
refused at once with UNAVAILABLE, a probe waits for it to answer again, and an embedded server
that died is started again. Requests need no restart of roz either way.

Requirements on an external server: the DATABASE_URL role owns the database's schema `roz` (it
creates it), has CREATEROLE, and is SUPERUSER or BYPASSRLS — the SECURITY DEFINER functions that
look an API key up before a tenant is known run as it and must see every tenant's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.storage import migrations as schema
from server.storage.availability import PROBE_TIMEOUT_SECONDS, Availability
from server.storage.pool import GuardedPool
from server.storage.roles import app_role_name, ensure_app_role

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

# The database the embedded server holds roz's schema in (its request role: roz_app_roz).
EMBEDDED_DATABASE = "roz"
APPLICATION_NAME = "roz-server"
# How long the pool keeps retrying a connection it lost before giving the slot up. Short: after
# an outage the availability probe reopens the pool, and a slot still in a long backoff would
# keep the pool from growing for minutes.
POOL_RECONNECT_SECONDS = 5.0
POOL_MAX_IDLE_SECONDS = 60.0


class DatabaseStartError(RuntimeError):
    """The database cannot be used as configured; the message says what to change."""


class Database:
    """One roz database: owner DSN for maintenance, a request-role pool for everything else."""

    def __init__(
        self,
        *,
        database_url: str | None,
        data_dir: Path,
        app_role: str | None = None,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        connect_timeout: float = 30.0,
        migrations_dir: Path | None = None,
    ) -> None:
        self._database_url = database_url
        self._data_dir = data_dir
        self._app_role = app_role
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._connect_timeout = connect_timeout
        self._migrations_dir = migrations_dir
        self._embedded: PostgresServer | None = None
        self._owner_dsn: str | None = None
        self._request_dsn: str | None = None
        self._pool: Pool | None = None
        self.availability = Availability(
            self._probe, restart=self._restart_embedded, reconnect=self._reconnect
        )

    async def open(self) -> None:
        """Starts, migrates and connects; call once, in the application's lifespan."""
        if self._pool is not None:
            raise RuntimeError("the database is already open")
        try:
            if self._database_url is None:
                self._embedded = await asyncio.to_thread(
                    _start_embedded, self._data_dir / "postgres"
                )
                self._owner_dsn = await _ensure_embedded_database(self._embedded)
            else:
                self._owner_dsn = self._database_url
            role, password = await self._prepare()
            self._app_role = role
            self._request_dsn = make_conninfo(
                self._owner_dsn,
                user=role,
                password=password,
                application_name=APPLICATION_NAME,
            )
            self._pool = GuardedPool(
                self._request_dsn,
                availability=self.availability,
                min_size=self._pool_min_size,
                max_size=self._pool_max_size,
                # Transactions are explicit (tenant_transaction); a lone SELECT needs none.
                kwargs={"autocommit": True},
                reconnect_timeout=POOL_RECONNECT_SECONDS,
                # Connections beyond min_size that a burst opened go again after a quiet
                # minute (one per minute), so processes sharing a PostgreSQL hold few idle ones.
                max_idle=POOL_MAX_IDLE_SECONDS,
                open=False,
                name="roz",
            )
            try:
                await self._pool.open(wait=True, timeout=self._connect_timeout)
            except PoolTimeout as exc:
                raise DatabaseStartError(
                    f"could not log in as the request role {role}; the server must accept "
                    "password (scram-sha-256) or trust logins for it from this host (pg_hba.conf)"
                ) from exc
        except BaseException:
            await self.close()
            raise
        log.info(
            "database ready (%s, request role %s)",
            "embedded" if self._embedded else "DATABASE_URL",
            role,
        )

    async def _prepare(self) -> tuple[str, str]:
        migrations = await asyncio.to_thread(schema.load_migrations, self._migrations_dir)
        async with await AsyncConnection.connect(
            self.owner_dsn,
            autocommit=True,
            connect_timeout=int(self._connect_timeout),
            application_name=f"{APPLICATION_NAME} (owner)",
        ) as conn:
            await _check_owner(conn)
            database = await (await conn.execute("SELECT current_database()")).fetchone()
            assert database is not None
            role = self._app_role or app_role_name(str(database[0]))
            # One lock around both steps: the grants are derived from the migrated schema.
            async with schema.advisory_lock(conn):
                await schema.migrate(conn, migrations)
                password = await ensure_app_role(conn, role)
        return role, password

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the database is not open")
        return self._pool

    def is_pool_session(self, backend_pid: int) -> bool:
        """Whether a backend pid is one of this process's request sessions."""
        pool = self._pool
        return isinstance(pool, GuardedPool) and backend_pid in pool.backend_pids

    @property
    def owner_dsn(self) -> str:
        """For maintenance only (bootstrap, tenant creation, tests); never for requests."""
        if self._owner_dsn is None:
            raise RuntimeError("the database is not open")
        return self._owner_dsn

    @property
    def request_dsn(self) -> str:
        """The request role's connection string (the pool's; the notification listener's)."""
        if self._request_dsn is None:
            raise RuntimeError("the database is not open")
        return self._request_dsn

    @property
    def app_role(self) -> str:
        if self._app_role is None:
            raise RuntimeError("the database is not open")
        return self._app_role

    @property
    def embedded(self) -> bool:
        return self._embedded is not None

    async def health_check(self, timeout_seconds: float = 2.0) -> bool:
        """True when a request connection answers SELECT 1 within the time given.

        False at once while the database is known to be down; a failure makes it suspect (the
        availability probe logs the outage, once).
        """
        if self._pool is None or not self.availability.up:
            return False
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self._pool.connection(timeout=timeout_seconds) as conn:
                    await conn.execute("SELECT 1")
        except Exception as exc:  # health answers yes or no; it never raises
            log.debug("database health check failed", exc_info=True)
            self.availability.suspect(exc)
            return False
        return True

    async def _probe(self) -> None:
        """Raises unless a fresh request-role connection answers (the availability probe)."""
        if self._request_dsn is None:
            raise RuntimeError("the database is not open")
        async with await AsyncConnection.connect(
            self._request_dsn, autocommit=True, connect_timeout=max(2, int(PROBE_TIMEOUT_SECONDS))
        ) as conn:
            await conn.execute("SELECT 1")

    async def _reconnect(self) -> None:
        """Back after an outage: drops the pool's dead connections, opens fresh ones."""
        if self._pool is not None:
            await self._pool.check()

    async def _restart_embedded(self) -> bool:
        """Down: if the embedded server's postmaster is gone, starts it again (True if it did)."""
        if self._embedded is None:
            return False
        return await asyncio.to_thread(_restart_embedded, self._embedded)

    async def close(self) -> None:
        """Closes the pool and stops the embedded server if this was its last user."""
        await self.availability.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        embedded, self._embedded = self._embedded, None
        if embedded is not None:
            await asyncio.to_thread(_stop_embedded, embedded)

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _check_owner(conn: AsyncConnection[Any]) -> None:
    cursor = await conn.execute(
        "SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    row = await cursor.fetchone()
    assert row is not None
    superuser, bypassrls, createrole = (bool(value) for value in row)
    if not (superuser or bypassrls):
        raise DatabaseStartError(
            "the DATABASE_URL role must be SUPERUSER or have BYPASSRLS: roz's API-key lookup "
            "runs as it, before any tenant is known"
        )
    if not (superuser or createrole):
        raise DatabaseStartError(
            "the DATABASE_URL role must have CREATEROLE: roz creates its own request role"
        )


async def _ensure_embedded_database(server: PostgresServer) -> str:
    async with await AsyncConnection.connect(server.get_uri(), autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)
        )
        if await cursor.fetchone() is None:
            # Another process sharing the data directory may have created it first.
            with contextlib.suppress(
                psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation
            ):
                await conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DATABASE))
                )
    return server.get_uri(database=EMBEDDED_DATABASE)


# pgserver keeps one handle per data directory per process and stops the server when the last
# *process* lets go; these count the users inside this process (tests open several Databases).
_embedded_lock = threading.Lock()
_embedded_users: dict[Path, int] = {}


def _start_embedded(pgdata: Path) -> PostgresServer:
    """Blocking: runs initdb on first use, then pg_ctl start (or attaches to a running one)."""
    # Imported here: slow, and only needed without DATABASE_URL.
    from pgserver.postgres_server import get_server

    pgdata = pgdata.expanduser().resolve()
    with _embedded_lock:
        pgdata.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # "stop", not "delete": the data stays; the server stops with its last user, and
        # pgserver's exit hook stops it too if the process ends without closing.
        server = get_server(pgdata, cleanup_mode="stop")
        _embedded_users[pgdata] = _embedded_users.get(pgdata, 0) + 1
    log.info("embedded PostgreSQL running in %s (pid %s)", pgdata, server.get_pid())
    return server


def _restart_embedded(server: PostgresServer) -> bool:
    """Blocking: starts the embedded server again if its postmaster died (kill -9, OOM killer).

    A postmaster that is still there, or not yet reaped, is left alone (the next probe comes
    back): pgserver would take a zombie for a running server.
    """
    pid = server.get_pid()
    if pid is not None and _postmaster_lingers(pid):
        return False
    pgdata = Path(server.pgdata)
    # Ours, then pgserver's: pgserver's lock is one object per process and not safe across
    # threads, and a restart must never race the stop of the same server at shutdown.
    with _embedded_lock:
        if pgdata not in _embedded_users or not (pgdata / "PG_VERSION").exists():
            return False  # released meanwhile, or its data directory is gone: nothing to start
        with server._lock:  # across processes sharing the data directory
            log.warning("embedded PostgreSQL (pid %s) is gone; starting it again", pid)
            server.ensure_postgres_running()
    log.warning("embedded PostgreSQL running again (pid %s)", server.get_pid())
    return True


def _postmaster_lingers(pid: int) -> bool:
    """True while `pid` runs or is a zombie; reaps it when this process is its parent."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # we were its reaper (roz as pid 1 in a container)
    except ChildProcessError:
        pass  # someone else's child: init reaps it, and until then it lingers
    return _alive(pid)


def _stop_embedded(server: PostgresServer) -> None:
    """Blocking: pg_ctl stop (fast mode, a clean shutdown) once no user is left."""
    pgdata = Path(server.pgdata)
    with _embedded_lock:
        users = _embedded_users.get(pgdata, 1) - 1
        if users > 0:
            _embedded_users[pgdata] = users
            return
        _embedded_users.pop(pgdata, None)
        _forget_dead_handles(server)
        server.cleanup()
    log.info("embedded PostgreSQL in %s released", pgdata)


def _forget_dead_handles(server: PostgresServer) -> None:
    """Drops processes that died without closing from pgserver's list of users.

    pgserver stops the server only when the closing process is the last one listed; a crashed
    run would otherwise keep every later clean shutdown from stopping it.
    """
    with server._lock:
        handles = server.global_process_id_list
        handles.put([pid for pid in handles.get() if _alive(pid)])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
