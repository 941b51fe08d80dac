"""Schema migrations: plain SQL files applied in order, once, under an advisory lock.

Files are `NNNN_name.sql` in server/storage/migrations/. Each is applied in its own transaction
together with its row in roz.schema_migrations (version, name, checksum, applied_at). Several
server processes may start at once: the advisory lock (scoped to the database) makes the others
wait and then find nothing left to do. A file whose checksum differs from the one recorded when
it was applied stops the start: history has been rewritten, and guessing what to do is worse.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

log = logging.getLogger(__name__)

# Any fixed 64-bit number: it only has to differ from other advisory locks in the same database.
MIGRATION_LOCK = 0x726F_7A5F_6D69_6772  # "roz_migr"

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_BOOKKEEPING = b"""
CREATE SCHEMA IF NOT EXISTS roz;
CREATE TABLE IF NOT EXISTS roz.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""
_APPLIED = "SELECT version, name, checksum FROM roz.schema_migrations ORDER BY version"
_RECORD = "INSERT INTO roz.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"


class MigrationError(RuntimeError):
    """The database's migration history does not match this server's files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: bytes
    checksum: str


def load_migrations(directory: Path | None = None) -> tuple[Migration, ...]:
    """The migration files in version order. Blocking file reads: call through to_thread."""
    root = directory if directory is not None else _packaged_directory()
    found: dict[int, Migration] = {}
    for entry in sorted(root.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version}")
        sql = entry.read_bytes()
        found[version] = Migration(
            version=version,
            name=match.group(2),
            sql=sql,
            checksum=hashlib.sha256(sql).hexdigest(),
        )
    return tuple(found[version] for version in sorted(found))


@asynccontextmanager
async def advisory_lock(
    conn: AsyncConnection[Any], key: int = MIGRATION_LOCK
) -> AsyncIterator[None]:
    """A session-level advisory lock; re-entrant within one connection.

    The connection must be in autocommit mode so that the unlock never lands in an aborted
    transaction; if the process dies, PostgreSQL releases the lock with the session.
    """
    if not conn.autocommit:
        raise ValueError("advisory_lock needs a connection in autocommit mode")
    await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


async def migrate(
    conn: AsyncConnection[Any], migrations: Sequence[Migration] | None = None
) -> tuple[Migration, ...]:
    """Applies the pending migrations on an owner connection; returns those applied now."""
    if migrations is None:
        migrations = await asyncio.to_thread(load_migrations)
    async with advisory_lock(conn):
        await conn.execute(_BOOKKEEPING)
        cursor = await conn.execute(_APPLIED)
        applied = {int(row[0]): (str(row[1]), str(row[2])) for row in await cursor.fetchall()}
        _check_history(applied, migrations)
        pending = [migration for migration in migrations if migration.version not in applied]
        for migration in pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(_RECORD, (migration.version, migration.name, migration.checksum))
            log.info(
                "applied migration %04d_%s",
                migration.version,
                migration.name,
                extra={"migration": migration.version},
            )
        return tuple(pending)


def _check_history(applied: dict[int, tuple[str, str]], migrations: Sequence[Migration]) -> None:
    known = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{name}, which this server does not "
                "know; is an older server starting against a newer database?"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{migration.name} was changed after it was applied "
                f"(recorded checksum {checksum[:12]}…, file {migration.checksum[:12]}…); "
                "add a new migration instead of editing an applied one"
            )


def _packaged_directory() -> Path:
    root = importlib.resources.files("server.storage") / "migrations"
    # The package is installed as plain files (setuptools package-data), never zipped.
    return Path(str(root))
