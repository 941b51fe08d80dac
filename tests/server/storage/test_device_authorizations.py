"""Device logins in PostgreSQL: hashes only, one decision, one key, sessions, and the purge."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import AsyncConnection

from server.domain.api_keys import Principal
from server.domain.device_auth import (
    DeviceFlowError,
    DeviceRequest,
    OAuthError,
    normalize_user_code,
)
from server.storage.api_keys import ApiKeyRepository
from server.storage.database import Database
from server.storage.device_authorizations import (
    DeviceAuthorizationRepository,
    purge_device_authorizations,
)
from tests.server.conftest import TenantWithKey

LIFETIME = timedelta(minutes=15)


@pytest.fixture
def logins(database: Database) -> DeviceAuthorizationRepository:
    return DeviceAuthorizationRepository(database.pool)


async def _approver(api_keys: ApiKeyRepository, tenant: TenantWithKey) -> Principal:
    principal = await api_keys.authenticate(tenant.admin_secret)
    assert principal is not None
    return principal


async def _start(
    logins: DeviceAuthorizationRepository, now: datetime, scopes: frozenset[str] = frozenset()
) -> tuple[str, str]:
    return await logins.start(
        DeviceRequest(client_name="lab laptop", client_id="", scopes=scopes),
        client_address="10.1.2.3",
        now=now,
        lifetime=LIFETIME,
        interval_seconds=5,
    )


async def _count(database: Database, query: str, *params: object) -> int:
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])


async def test_only_the_hash_of_the_device_code_is_stored(
    database: Database, logins: DeviceAuthorizationRepository
) -> None:
    now = datetime.now(UTC)
    device_code, user_code = await _start(logins, now)
    digest = hashlib.sha256(device_code.encode()).digest()
    assert (
        await _count(
            database,
            "SELECT count(*) FROM roz.device_authorizations WHERE device_code_hash = %s"
            " AND user_code = %s",
            digest,
            user_code,
        )
        == 1
    )
    assert (
        await _count(
            database,
            "SELECT count(*) FROM roz.device_authorizations AS d"
            " WHERE position(%s::bytea IN row_to_json(d)::text::bytea) > 0",
            device_code.encode(),
        )
        == 0
    )


async def test_a_login_is_decided_once_and_collected_once(
    database: Database,
    logins: DeviceAuthorizationRepository,
    api_keys: ApiKeyRepository,
    tenant_a: TenantWithKey,
) -> None:
    now = datetime.now(UTC)
    approver = await _approver(api_keys, tenant_a)
    device_code, user_code = await _start(logins, now, frozenset({"tasks:read"}))
    pending = await logins.find_pending(user_code, now)
    assert pending is not None
    assert pending.client_address == "10.1.2.3"
    assert pending.requested_scopes == {"tasks:read"}

    grant = frozenset({"tasks:read"})
    assert await logins.decide(pending.id, approver, approve=True, scopes=grant, now=now)
    assert not await logins.decide(pending.id, approver, approve=False, scopes=grant, now=now)
    assert await logins.find_pending(user_code, now) is None

    key, secret = await logins.exchange(device_code, now)
    assert key.tenant_id == tenant_a.id
    assert key.scopes == grant
    assert key.created_by_key_id == approver.key_id
    assert await api_keys.authenticate(secret) is not None
    with pytest.raises(DeviceFlowError) as used:
        await logins.exchange(device_code, now + timedelta(seconds=10))
    assert used.value.error is OAuthError.INVALID_GRANT
    assert (
        await _count(
            database, "SELECT count(*) FROM roz.api_keys WHERE tenant_id = %s", tenant_a.id
        )
        == 2
    )


async def test_a_key_of_another_tenant_cannot_decide(
    logins: DeviceAuthorizationRepository,
    api_keys: ApiKeyRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    now = datetime.now(UTC)
    approver = await _approver(api_keys, tenant_a)
    _, user_code = await _start(logins, now)
    pending = await logins.find_pending(user_code, now)
    assert pending is not None
    forged = Principal(key_id=approver.key_id, tenant_id=tenant_b.id, scopes=approver.scopes)
    assert not await logins.decide(pending.id, forged, approve=True, scopes=frozenset(), now=now)
    assert await logins.find_pending(user_code, now) is not None


async def test_polls_are_recorded_even_though_they_answer_with_an_error(
    logins: DeviceAuthorizationRepository,
) -> None:
    now = datetime.now(UTC)
    device_code, _ = await _start(logins, now)
    with pytest.raises(DeviceFlowError) as first:
        await logins.exchange(device_code, now)
    assert first.value.error is OAuthError.AUTHORIZATION_PENDING
    with pytest.raises(DeviceFlowError) as second:
        await logins.exchange(device_code, now + timedelta(seconds=1))
    assert second.value.error is OAuthError.SLOW_DOWN
    assert second.value.interval_seconds == 10


async def test_sessions_follow_their_key(
    logins: DeviceAuthorizationRepository, api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    now = datetime.now(UTC)
    approver = await _approver(api_keys, tenant_a)
    session_id = await logins.start_session(approver, now)
    assert session_id is not None
    found = await logins.find_session(session_id, now)
    assert found is not None
    assert found.principal == approver
    assert found.tenant_name == tenant_a.tenant.name
    assert await logins.find_session(session_id, now + timedelta(minutes=11)) is None
    assert await logins.find_session("not-a-session", now) is None

    await api_keys.revoke(tenant_a.id, approver.key_id)
    assert await logins.find_session(session_id, now) is None
    assert await logins.start_session(approver, now) is None


async def test_the_purge_removes_used_and_long_expired_logins_and_old_sessions(
    database: Database,
    logins: DeviceAuthorizationRepository,
    api_keys: ApiKeyRepository,
    tenant_a: TenantWithKey,
) -> None:
    now = datetime.now(UTC)
    approver = await _approver(api_keys, tenant_a)
    used_code, used_user_code = await _start(logins, now)
    pending = await logins.find_pending(used_user_code, now)
    assert pending is not None
    await logins.decide(pending.id, approver, approve=True, scopes=frozenset(), now=now)
    await logins.exchange(used_code, now)
    waiting, waiting_user_code = await _start(logins, now)
    session_id = await logins.start_session(approver, now)
    assert session_id is not None

    total = "SELECT count(*) FROM roz.device_authorizations WHERE user_code = ANY(%s)"
    codes = [used_user_code, waiting_user_code]
    await purge_device_authorizations(database.pool, now)
    assert await _count(database, total, codes) == 1  # the used one went at once

    # Expired: still answered as expired_token for a while, then gone.
    await purge_device_authorizations(database.pool, now + LIFETIME + timedelta(minutes=5))
    assert await _count(database, total, codes) == 1
    with pytest.raises(DeviceFlowError) as expired:
        await logins.exchange(waiting, now + LIFETIME + timedelta(minutes=5))
    assert expired.value.error is OAuthError.EXPIRED_TOKEN
    await purge_device_authorizations(database.pool, now + LIFETIME + timedelta(minutes=11))
    assert await _count(database, total, codes) == 0
    assert await logins.find_session(session_id, now) is None  # ended by the purge too


def test_user_codes_are_read_the_way_people_type_them() -> None:
    assert normalize_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalize_user_code(" BCDF GHJK ") == "BCDFGHJK"
    assert normalize_user_code("BCDFGHJ") is None
    assert normalize_user_code("BCDF-GHJA") is None  # vowels are never in a code
