"""Migrations: applied once even when several processes start at once, and history is immutable."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from psycopg import AsyncConnection

from server.storage import migrations
from server.storage.database import Database
from server.storage.migrations import MigrationError, load_migrations, migrate
from tests.server.conftest import NewDatabaseUrl

PACKAGED = Path(migrations.__file__).parent / "migrations"


async def _applied(url: str) -> list[tuple[int, str, str]]:
    async with await AsyncConnection.connect(url) as conn:
        rows = await (
            await conn.execute(
                "SELECT version, name, checksum FROM roz.schema_migrations ORDER BY version"
            )
        ).fetchall()
    return [(int(v), str(n), str(c)) for v, n, c in rows]


def test_the_packaged_migrations_are_numbered_in_order() -> None:
    loaded = load_migrations()
    assert [m.version for m in loaded] == list(range(1, len(loaded) + 1))
    assert loaded[0].name == "tenancy"


async def test_concurrent_migrations_from_several_connections_apply_once(
    new_database_url: NewDatabaseUrl,
) -> None:
    url = await new_database_url()
    files = load_migrations()
    connections = [await AsyncConnection.connect(url, autocommit=True) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(conn, files) for conn in connections))
    finally:
        for conn in connections:
            await conn.close()
    applied_now = sorted(m.version for result in results for m in result)
    assert applied_now == [m.version for m in files]  # each exactly once, by someone
    assert await _applied(url) == [(m.version, m.name, m.checksum) for m in files]


async def test_several_servers_starting_at_once_share_one_schema_and_role(
    new_database_url: NewDatabaseUrl, tmp_path: Path
) -> None:
    url = await new_database_url()
    servers = [Database(database_url=url, data_dir=tmp_path, pool_max_size=2) for _ in range(4)]
    await asyncio.gather(*(server.open() for server in servers))
    try:
        assert len({server.app_role for server in servers}) == 1
        # Every process can still log in: none reset the password the others use.
        assert all(await asyncio.gather(*(server.health_check() for server in servers)))
        for server in servers:
            async with server.pool.connection() as conn:
                await (await conn.execute("SELECT 1")).fetchone()
    finally:
        await asyncio.gather(*(server.close() for server in servers))
    assert len(await _applied(url)) == len(load_migrations())


async def test_a_changed_applied_migration_stops_the_start(
    new_database_url: NewDatabaseUrl, tmp_path: Path
) -> None:
    url = await new_database_url()
    directory = tmp_path / "migrations"
    shutil.copytree(PACKAGED, directory)
    async with Database(database_url=url, data_dir=tmp_path, migrations_dir=directory):
        pass
    edited = directory / "0002_environments.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(MigrationError, match="0002_environments was changed"):
        async with Database(database_url=url, data_dir=tmp_path, migrations_dir=directory):
            pass
    recorded = {version: checksum for version, _, checksum in await _applied(url)}
    assert recorded[2] == load_migrations(PACKAGED)[1].checksum


async def test_a_database_newer_than_the_server_is_refused(
    new_database_url: NewDatabaseUrl, tmp_path: Path
) -> None:
    url = await new_database_url()
    directory = tmp_path / "migrations"
    shutil.copytree(PACKAGED, directory)
    (directory / "0099_future.sql").write_text("CREATE TABLE roz.future (id int);\n")
    async with Database(database_url=url, data_dir=tmp_path, migrations_dir=directory):
        pass
    with pytest.raises(MigrationError, match="0099_future"):
        async with Database(database_url=url, data_dir=tmp_path):
            pass


async def test_a_failing_migration_leaves_nothing_behind(
    new_database_url: NewDatabaseUrl, tmp_path: Path
) -> None:
    url = await new_database_url()
    directory = tmp_path / "migrations"
    shutil.copytree(PACKAGED, directory)
    # After every packaged migration, whatever their number.
    (directory / "9999_broken.sql").write_text(
        "CREATE TABLE roz.half_done (id int);\nSELECT 1 / 0;\n"
    )
    with pytest.raises(Exception, match="division by zero"):
        async with Database(database_url=url, data_dir=tmp_path, migrations_dir=directory):
            pass
    assert [version for version, _, _ in await _applied(url)] == [
        m.version for m in load_migrations(PACKAGED)
    ]
    async with await AsyncConnection.connect(url) as conn:
        exists = await (await conn.execute("SELECT to_regclass('roz.half_done')")).fetchone()
    assert exists == (None,)


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_missing_padding.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("SELECT 1;")
    (tmp_path / "0001_other.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="version 1"):
        load_migrations(tmp_path)
