"""Robot keys in the database: bound to a host of their own tenant, returned with their binding by
the lookup made before a tenant is known, and deleted with their host."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from psycopg import AsyncConnection, sql

from server.domain.api_keys import NewApiKey, validate_new_key
from server.domain.commands import CommandDraft
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from server.domain.hosts import HostDraft
from server.storage.api_keys import ApiKeyRepository
from server.storage.commands import CommandRepository
from server.storage.database import Database
from server.storage.hosts import HostRepository
from server.storage.migrations import load_migrations, migrate
from tests.server.conftest import NewDatabaseUrl, TenantWithKey


@pytest.fixture
def hosts(database: Database) -> HostRepository:
    return HostRepository(database.pool)


def _robot(host_id: uuid.UUID | str, name: str = "robot") -> NewApiKey:
    return validate_new_key(name, [], None, now=datetime.now(UTC), host_id=host_id)


async def _host(hosts: HostRepository, tenant: TenantWithKey) -> uuid.UUID:
    return (await hosts.create(tenant.id, HostDraft(name=f"h-{uuid.uuid4().hex[:8]}"))).id


async def test_a_bound_key_authenticates_with_its_host(
    api_keys: ApiKeyRepository, hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    host_id = await _host(hosts, tenant_a)
    key, secret = await api_keys.create(tenant_a.id, _robot(host_id))
    assert (key.host_id, key.scopes) == (host_id, frozenset())
    principal = await api_keys.authenticate(secret)
    assert principal is not None
    assert (principal.key_id, principal.tenant_id, principal.host_id) == (
        key.id,
        tenant_a.id,
        host_id,
    )
    assert principal.scopes == frozenset()
    assert (await api_keys.get(tenant_a.id, key.id)).host_id == host_id
    listed = await api_keys.list(tenant_a.id, page_size=1000)
    assert {item.id: item.host_id for item in listed.items}[key.id] == host_id
    # An ordinary key has no binding, at rest and when it authenticates.
    principal = await api_keys.authenticate(tenant_a.admin_secret)
    assert principal is not None
    assert principal.host_id is None


async def test_another_tenants_host_is_refused_exactly_like_a_missing_one(
    api_keys: ApiKeyRepository,
    hosts: HostRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    theirs = await _host(hosts, tenant_b)
    refusals = []
    for host_id in (theirs, uuid.uuid4()):
        with pytest.raises(InvalidArgument) as raised:
            await api_keys.create(tenant_a.id, _robot(host_id))
        refusals.append(
            (raised.value.message, [(v.field, v.description) for v in raised.value.violations])
        )
    assert refusals[0] == refusals[1]
    assert refusals[0][1] == [("api_key.host_id", "no host with this id exists")]


async def test_the_database_refuses_scopes_on_a_bound_key(
    api_keys: ApiKeyRepository, hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    host_id = await _host(hosts, tenant_a)
    # Past the domain's validation: the CHECK still holds the line.
    forged = replace(_robot(host_id), scopes=frozenset({"admin"}))
    with pytest.raises(InvalidArgument) as raised:
        await api_keys.create(tenant_a.id, forged)
    assert [v.field for v in raised.value.violations] == ["api_key.scopes"]


async def test_deleting_a_host_deletes_its_keys_and_no_other(
    api_keys: ApiKeyRepository, hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    doomed, kept = await _host(hosts, tenant_a), await _host(hosts, tenant_a)
    key, secret = await api_keys.create(tenant_a.id, _robot(doomed))
    other, other_secret = await api_keys.create(tenant_a.id, _robot(kept))
    await hosts.delete(tenant_a.id, doomed)
    assert await api_keys.authenticate(secret) is None
    with pytest.raises(NotFound):
        await api_keys.get(tenant_a.id, key.id)
    assert await api_keys.authenticate(other_secret) is not None
    assert await api_keys.authenticate(tenant_a.admin_secret) is not None
    assert (await api_keys.get(tenant_a.id, other.id)).host_id == kept


async def test_a_host_that_cannot_be_deleted_keeps_its_keys(
    database: Database,
    api_keys: ApiKeyRepository,
    hosts: HostRepository,
    tenant_a: TenantWithKey,
) -> None:
    host_id = await _host(hosts, tenant_a)
    _, secret = await api_keys.create(tenant_a.id, _robot(host_id))
    await CommandRepository(database.pool).create(
        tenant_a.id, CommandDraft(host_id=host_id, type="home"), actor=None
    )
    with pytest.raises(FailedPrecondition):
        await hosts.delete(tenant_a.id, host_id)
    principal = await api_keys.authenticate(secret)
    assert principal is not None
    assert principal.host_id == host_id


async def test_the_lookup_keeps_its_grants_through_the_migration(
    new_database_url: NewDatabaseUrl,
) -> None:
    """A server of the previous version still authenticates while a new one migrates."""
    url = await new_database_url()
    files = load_migrations()
    robot_keys = next(m for m in files if m.name == "robot_keys")
    role = f"roz_test_{uuid.uuid4().hex[:8]}"
    signature = "roz.authenticate_api_key(text, bytea)"
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, [m for m in files if m.version < robot_keys.version])
        await conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        try:
            await conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                    sql.SQL(signature), sql.Identifier(role)
                )
            )
            await migrate(conn, files)
            rows = await (
                await conn.execute(
                    "SELECT has_function_privilege(%s, %s, 'EXECUTE'),"
                    " has_function_privilege('public', %s, 'EXECUTE')",
                    (role, signature, signature),
                )
            ).fetchone()
        finally:
            await conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert rows == (True, False)
