"""API keys in the database: only a hash is kept; revocation and expiry act on the next request."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed

from server.domain.api_keys import NewApiKey, looks_like_key, validate_new_key
from server.domain.errors import InvalidArgument, NotFound
from server.storage.api_keys import ApiKeyRepository, LastUsedRecorder
from server.storage.database import Database
from tests.server.conftest import TenantWithKey


def _new(
    name: str = "ci",
    scopes: Iterable[str] = ("environments:read",),
    expire_time: datetime | None = None,
) -> NewApiKey:
    return validate_new_key(name, scopes, expire_time, now=datetime.now(UTC))


async def _owner_row(database: Database, query: str, *params: object) -> tuple[object, ...] | None:
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        return await (await conn.execute(query, params)).fetchone()


async def test_create_returns_the_secret_once_and_stores_only_its_hash(
    database: Database, api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    key, secret = await api_keys.create(
        tenant_a.id, _new(scopes=("environments:write", "hosts:read"))
    )
    assert looks_like_key(secret)
    assert len(secret) == 50
    assert key.key_prefix == secret[:16]
    assert key.scopes == frozenset({"environments:write", "hosts:read"})
    assert key.tenant_id == tenant_a.id
    assert key.last_used_time is None
    assert key.revoke_time is None
    row = await _owner_row(
        database, "SELECT key_hash, row_to_json(k)::text FROM roz.api_keys k WHERE id = %s", key.id
    )
    assert row is not None
    assert row[0] == hashlib.sha256(secret.encode()).digest()
    assert secret not in str(row[1])
    assert secret[16:] not in str(row[1])


async def test_authenticate_resolves_a_key_to_its_tenant_and_scopes(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    key, secret = await api_keys.create(tenant_a.id, _new(scopes=("tasks:write",)))
    principal = await api_keys.authenticate(secret)
    assert principal is not None
    assert (principal.key_id, principal.tenant_id, principal.scopes) == (
        key.id,
        tenant_a.id,
        frozenset({"tasks:write"}),
    )


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "roz_sk_",
        "Bearer roz_sk_" + "A" * 43,
        "roz_sk_" + "A" * 42,
        "roz_sk_" + "A" * 44,
        "roz_sk_" + "A" * 42 + "=",
        "roz_sk_" + "A" * 43,  # well formed, but no such key
        "' OR 1=1 --",
    ],
)
async def test_authenticate_refuses_anything_but_a_registered_key(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey, secret: str
) -> None:
    assert await api_keys.authenticate(secret) is None


async def test_a_secret_one_character_off_is_refused(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    _, secret = await api_keys.create(tenant_a.id, _new())
    last = "A" if secret[-1] != "A" else "B"
    assert await api_keys.authenticate(secret[:-1] + last) is None


async def test_revocation_takes_effect_on_the_next_request(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    key, secret = await api_keys.create(tenant_a.id, _new())
    assert await api_keys.authenticate(secret) is not None
    revoked = await api_keys.revoke(tenant_a.id, key.id)
    assert revoked.revoke_time is not None
    assert await api_keys.authenticate(secret) is None
    # Still visible by id, gone from the list, and revoking again is NotFound.
    assert (await api_keys.get(tenant_a.id, key.id)).revoke_time == revoked.revoke_time
    listed = await api_keys.list(tenant_a.id, page_size=1000)
    assert key.id not in {item.id for item in listed.items}
    with pytest.raises(NotFound):
        await api_keys.revoke(tenant_a.id, key.id)


async def test_an_expired_key_stops_working(
    database: Database, api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    key, secret = await api_keys.create(tenant_a.id, _new(expire_time=soon))
    assert key.expire_time == soon
    assert await api_keys.authenticate(secret) is not None
    async with await AsyncConnection.connect(database.owner_dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE roz.api_keys SET expire_time = now() - interval '1 second' WHERE id = %s",
            (key.id,),
        )
    assert await api_keys.authenticate(secret) is None
    assert not (await api_keys.get(tenant_a.id, key.id)).is_usable(datetime.now(UTC))


def test_a_key_cannot_be_created_already_expired() -> None:
    with pytest.raises(InvalidArgument) as raised:
        _new(expire_time=datetime.now(UTC) - timedelta(seconds=1))
    assert [v.field for v in raised.value.violations] == ["api_key.expire_time"]


async def test_another_tenants_key_is_not_found_and_keeps_working(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    key, secret = await api_keys.create(tenant_a.id, _new())
    with pytest.raises(NotFound):
        await api_keys.get(tenant_b.id, key.id)
    with pytest.raises(NotFound):
        await api_keys.revoke(tenant_b.id, key.id)
    assert key.id not in {k.id for k in (await api_keys.list(tenant_b.id, page_size=1000)).items}
    assert await api_keys.authenticate(secret) is not None
    assert (await api_keys.get(tenant_a.id, key.id)).revoke_time is None


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "00000000-0000-0000-0000-00000000000g"])
async def test_a_malformed_id_is_not_found(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey, bad_id: str
) -> None:
    with pytest.raises(NotFound):
        await api_keys.get(tenant_a.id, bad_id)
    with pytest.raises(NotFound):
        await api_keys.revoke(tenant_a.id, bad_id)


async def test_the_creator_is_recorded_only_within_the_tenant(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    parent, _ = await api_keys.create(tenant_a.id, _new("parent"))
    child, _ = await api_keys.create(tenant_a.id, _new("child"), created_by_key_id=parent.id)
    assert child.created_by_key_id == parent.id
    with pytest.raises(NotFound):
        await api_keys.create(tenant_b.id, _new("smuggled"), created_by_key_id=parent.id)


async def test_list_pages_through_active_keys_newest_first(
    api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    created = [(await api_keys.create(tenant_a.id, _new(f"k{i}")))[0] for i in range(5)]
    seen = []
    token = ""
    while True:
        page = await api_keys.list(tenant_a.id, page_size=2, page_token=token)
        assert len(page.items) <= 2
        seen.extend(page.items)
        token = page.next_page_token
        if not token:
            break
    # The tenant's bootstrap admin key is the oldest.
    assert [k.name for k in seen] == ["k4", "k3", "k2", "k1", "k0", "admin"]
    assert {k.id for k in created} < {k.id for k in seen}


async def test_last_used_is_written_in_one_batch_not_per_request(
    database: Database,
    api_keys: ApiKeyRepository,
    recorder: LastUsedRecorder,
    tenant_a: TenantWithKey,
) -> None:
    keys = [await api_keys.create(tenant_a.id, _new(f"busy{i}")) for i in range(3)]
    ids = [key.id for key, _ in keys]
    version_query = "SELECT array_agg(xmin::text ORDER BY id) FROM roz.api_keys WHERE id = ANY(%s)"
    before = await _owner_row(database, version_query, ids)
    for _ in range(50):
        for _, secret in keys:
            assert await api_keys.authenticate(secret) is not None
    # 150 authentications wrote nothing: same row versions, no last-used time yet.
    assert await _owner_row(database, version_query, ids) == before
    for key_id in ids:
        assert (await api_keys.get(tenant_a.id, key_id)).last_used_time is None
    assert recorder.pending == 3

    assert await recorder.flush() == 3
    after = await _owner_row(database, version_query, ids)
    assert after is not None
    assert before is not None
    versions = after[0]
    assert isinstance(versions, list)
    assert len(set(versions)) == 1
    assert versions != before[0]
    for key_id in ids:
        used = (await api_keys.get(tenant_a.id, key_id)).last_used_time
        assert used is not None
        assert abs(used - datetime.now(UTC)) < timedelta(minutes=1)
    assert recorder.pending == 0
    assert await recorder.flush() == 0


async def test_last_used_never_moves_backwards(
    database: Database,
    recorder: LastUsedRecorder,
    api_keys: ApiKeyRepository,
    tenant_a: TenantWithKey,
) -> None:
    key, _ = await api_keys.create(tenant_a.id, _new())
    now = datetime.now(UTC)
    recorder.record(key.id, now - timedelta(seconds=5))
    assert await recorder.flush() == 1
    recorder.record(key.id, now - timedelta(minutes=5))  # another process's older view
    assert await recorder.flush() == 0
    recorder.record(key.id, now + timedelta(days=365))  # a clock in the future is clamped
    await recorder.flush()
    stored = (await api_keys.get(tenant_a.id, key.id)).last_used_time
    assert stored is not None
    assert stored <= datetime.now(UTC)


async def test_close_flushes_what_is_left(
    database: Database, api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    recorder = LastUsedRecorder(database.pool, interval_seconds=3600)
    recorder.start()
    keys = ApiKeyRepository(database.pool, recorder)
    key, secret = await keys.create(tenant_a.id, _new())
    await keys.authenticate(secret)
    await recorder.close()
    assert (await api_keys.get(tenant_a.id, key.id)).last_used_time is not None


async def test_the_background_flush_runs_on_its_interval(
    database: Database, api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    recorder = LastUsedRecorder(database.pool, interval_seconds=0.05)
    keys = ApiKeyRepository(database.pool, recorder)
    key, secret = await keys.create(tenant_a.id, _new())
    recorder.start()
    try:
        await keys.authenticate(secret)
        for _ in range(100):
            if (await api_keys.get(tenant_a.id, key.id)).last_used_time is not None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the background flush never wrote last_used_time")
    finally:
        await recorder.close()


async def test_a_failed_flush_keeps_the_times_and_close_does_not_raise() -> None:
    unreachable = AsyncConnectionPool("", open=False)  # never opened: every use fails
    recorder = LastUsedRecorder(unreachable)  # type: ignore[arg-type]
    key_id = uuid.uuid4()
    recorder.record(key_id, datetime.now(UTC))
    with pytest.raises(PoolClosed):
        await recorder.flush()
    assert recorder.pending == 1
    await recorder.close()  # logs instead of failing a shutdown
    assert recorder.pending == 1
