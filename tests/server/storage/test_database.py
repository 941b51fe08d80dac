"""Starting, checking and stopping the database; the embedded server keeps data across restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psutil
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict

from server.domain.environments import EnvironmentDraft
from server.storage.bootstrap import bootstrap
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.roles import app_role_name
from tests.server.conftest import NewDatabaseUrl


def _postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


async def test_data_survives_a_restart_of_the_embedded_server(embedded_data_dir: Path) -> None:
    data_dir = embedded_data_dir
    async with Database(database_url=None, data_dir=data_dir) as db:
        assert db.embedded
        first = await bootstrap(db.owner_dsn, data_dir)
        assert first is not None
        created = await EnvironmentRepository(db.pool).create(
            first.tenant.id, EnvironmentDraft(name="persistent", config={"arm": "ur5"})
        )
        pid = _postmaster_pid(data_dir / "postgres")
        assert pid is not None
        assert psutil.pid_exists(pid)

    # Closed: the server was stopped cleanly, not left running.
    assert _postmaster_pid(data_dir / "postgres") is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    async with Database(database_url=None, data_dir=data_dir) as db:
        assert await bootstrap(db.owner_dsn, data_dir) is None
        found = await EnvironmentRepository(db.pool).get(first.tenant.id, created.id)
        assert found == created
        assert await db.health_check()


async def test_health_check_answers_false_once_closed(embedded_data_dir: Path) -> None:
    db = Database(database_url=None, data_dir=embedded_data_dir)
    assert not await db.health_check()
    await db.open()
    assert await db.health_check()
    await db.close()
    assert not await db.health_check()
    await db.close()  # closing twice is harmless


async def test_the_shared_health_check_uses_the_request_pool(database: Database) -> None:
    assert await database.health_check(timeout_seconds=5)


async def test_the_request_role_is_named_after_the_database(
    new_database_url: NewDatabaseUrl, tmp_path: Path
) -> None:
    url = await new_database_url()
    name = conninfo_to_dict(url)["dbname"]
    assert isinstance(name, str)
    async with Database(database_url=url, data_dir=tmp_path) as db:
        assert db.app_role == app_role_name(name) == f"roz_app_{name}"
        async with db.pool.connection() as conn:
            row = await (await conn.execute("SELECT current_user, current_database()")).fetchone()
        assert row == (db.app_role, name)


async def test_an_explicit_role_name_is_honoured(
    new_database_url: NewDatabaseUrl, tmp_path: Path
) -> None:
    url = await new_database_url()
    role = f"{app_role_name(str(conninfo_to_dict(url)['dbname']))}_x"
    try:
        async with Database(database_url=url, data_dir=tmp_path, app_role=role) as db:
            async with db.pool.connection() as conn:
                row = await (await conn.execute("SELECT current_user")).fetchone()
            assert row == (role,)
    finally:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            # Also revokes its CONNECT on the database, a shared object.
            await conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_the_request_password_is_never_stored_in_plain_by_postgres(
    database: Database,
) -> None:
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (database.app_role,)
            )
        ).fetchone()
    assert row is not None
    assert str(row[0]).startswith("SCRAM-SHA-256$")


def test_role_names_are_plain_identifiers_that_never_collide() -> None:
    assert app_role_name("roz") == "roz_app_roz"
    odd = app_role_name("Roz-Prod")
    assert odd.startswith("roz_app_roz_prod_")
    assert odd != app_role_name("roz_prod")
    long_a, long_b = app_role_name("x" * 80 + "a"), app_role_name("x" * 80 + "b")
    assert len(long_a.encode()) <= 63
    assert len(long_b.encode()) <= 63
    assert long_a != long_b


async def test_a_crashed_user_does_not_keep_the_embedded_server_running(
    embedded_data_dir: Path,
) -> None:
    finished = await asyncio.create_subprocess_exec("true")
    await finished.wait()  # its pid is now free: a process that died without closing
    pgdata = embedded_data_dir / "postgres"
    async with Database(database_url=None, data_dir=embedded_data_dir):
        handles = pgdata / ".handle_pids.json"
        pids = json.loads(handles.read_text())
        handles.write_text(json.dumps([finished.pid, *pids]))
    assert _postmaster_pid(pgdata) is None
