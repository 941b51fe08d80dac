"""First start: one default tenant and one admin key, ever; operators add tenants by name."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pytest
from psycopg import AsyncConnection

from server.domain.api_keys import looks_like_key, mint_secret
from server.domain.errors import AlreadyExists, InvalidArgument
from server.storage.api_keys import ApiKeyRepository
from server.storage.bootstrap import ADMIN_KEY_FILE, bootstrap, create_tenant, write_private_file
from server.storage.database import Database
from tests.server.conftest import NewDatabaseUrl


async def _counts(db: Database) -> tuple[int, int]:
    async with await AsyncConnection.connect(db.owner_dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT (SELECT count(*) FROM roz.tenants), (SELECT count(*) FROM roz.api_keys)"
            )
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.fixture
async def fresh(new_database_url: NewDatabaseUrl, data_dir: Path) -> Database:
    return Database(database_url=await new_database_url(), data_dir=data_dir)


async def test_first_start_creates_one_admin_key_and_restarts_none(
    fresh: Database, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.storage.bootstrap")
    async with fresh as db:
        result = await bootstrap(db.owner_dsn, data_dir)
        assert result is not None
        assert result.tenant.name == "default"
        assert result.api_key.scopes == frozenset({"admin"})
        assert result.key_file == data_dir / ADMIN_KEY_FILE
        secret = (data_dir / ADMIN_KEY_FILE).read_text().strip()
        assert looks_like_key(secret)
        principal = await ApiKeyRepository(db.pool).authenticate(secret)
        assert principal is not None
        assert (principal.tenant_id, principal.scopes) == (result.tenant.id, frozenset({"admin"}))
    # Shown once, at WARNING, saying where it was saved.
    shown = [r for r in caplog.records if secret in r.getMessage()]
    assert len(shown) == 1
    assert shown[0].levelno == logging.WARNING
    assert str(data_dir / ADMIN_KEY_FILE) in shown[0].getMessage()

    caplog.clear()
    async with fresh as db:
        assert await bootstrap(db.owner_dsn, data_dir) is None
        assert await _counts(db) == (1, 1)
    assert (data_dir / ADMIN_KEY_FILE).read_text().strip() == secret
    assert not [r for r in caplog.records if secret in r.getMessage()]


async def test_the_key_file_is_readable_by_its_owner_only(fresh: Database, data_dir: Path) -> None:
    async with fresh as db:
        await bootstrap(db.owner_dsn, data_dir)
    mode = stat.S_IMODE(os.stat(data_dir / ADMIN_KEY_FILE).st_mode)
    assert mode == 0o600
    assert not [name for name in os.listdir(data_dir) if name.endswith(".tmp")]


def test_private_files_are_never_created_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o644)
    write_private_file(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


async def test_a_given_admin_key_becomes_the_admin_key(fresh: Database, data_dir: Path) -> None:
    given = mint_secret()
    async with fresh as db:
        result = await bootstrap(db.owner_dsn, data_dir, admin_key=given)
        assert result is not None
        assert result.key_file is None
        principal = await ApiKeyRepository(db.pool).authenticate(given)
        assert principal is not None
        assert principal.scopes == frozenset({"admin"})
        # A different ROZ_ADMIN_KEY on a later start changes nothing.
        assert await bootstrap(db.owner_dsn, data_dir, admin_key=mint_secret()) is None
        assert await _counts(db) == (1, 1)
    assert not (data_dir / ADMIN_KEY_FILE).exists()


@pytest.mark.parametrize("bad", ["roz_sk_short", "sk_" + "A" * 43, "roz_sk_" + "A" * 42 + "!"])
async def test_a_malformed_admin_key_is_refused(fresh: Database, data_dir: Path, bad: str) -> None:
    async with fresh as db:
        with pytest.raises(ValueError, match="ROZ_ADMIN_KEY"):
            await bootstrap(db.owner_dsn, data_dir, admin_key=bad)
        assert await _counts(db) == (0, 0)


async def test_servers_starting_together_mint_one_key(fresh: Database, data_dir: Path) -> None:
    async with fresh as db:
        results = await asyncio.gather(
            *(bootstrap(db.owner_dsn, data_dir / str(i)) for i in range(4))
        )
        assert len([r for r in results if r is not None]) == 1
        assert await _counts(db) == (1, 1)


async def test_create_tenant_returns_a_working_admin_key(database: Database) -> None:
    tenant, secret = await create_tenant(database.owner_dsn, "acme-robotics")
    try:
        principal = await ApiKeyRepository(database.pool).authenticate(secret)
        assert principal is not None
        assert (principal.tenant_id, principal.scopes) == (tenant.id, frozenset({"admin"}))
        with pytest.raises(AlreadyExists, match="acme-robotics"):
            await create_tenant(database.owner_dsn, "acme-robotics")
    finally:
        async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as conn:
            await conn.execute("DELETE FROM roz.tenants WHERE id = %s", (tenant.id,))


@pytest.mark.parametrize("name", ["", "   ", "two\nlines", "x" * 129])
async def test_create_tenant_refuses_bad_names(database: Database, name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await create_tenant(database.owner_dsn, name)
    assert [v.field for v in raised.value.violations] == ["tenant.name"]
