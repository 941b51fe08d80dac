"""API-key rows: create, get, list, revoke, authenticate, and batched last-used times.

Authentication is the one query made before a tenant is known, so it goes through the SECURITY
DEFINER function roz.authenticate_api_key and never reads the table directly. It is a read: the
key's last_used_time is remembered in memory by a LastUsedRecorder and written for all keys in
one statement every few seconds, instead of one write per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import kwargs_row

from server import background
from server.domain.api_keys import (
    ApiKey,
    NewApiKey,
    Principal,
    hash_secret,
    key_prefix,
    looks_like_key,
    mint_secret,
)
from server.domain.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.domain.pagination import Page
from server.storage.availability import DATABASE_AWAY
from server.storage.database import Pool
from server.storage.errors import database_errors, resource_id
from server.storage.listing import Listing
from server.storage.tenancy import tenant_transaction

log = logging.getLogger(__name__)

RESOURCE = "api key"
_COLUMNS = (
    "id, tenant_id, name, key_prefix, scopes, create_time, expire_time, last_used_time,"
    " revoke_time, created_by_key_id, host_id"
)
_INSERT = (
    "INSERT INTO roz.api_keys"
    " (tenant_id, name, key_prefix, key_hash, scopes, expire_time, created_by_key_id, host_id)"
    " VALUES (%s, %s, %s, %s, %s::text[], %s, %s, %s)"
    " RETURNING " + _COLUMNS
)
_GET = "SELECT " + _COLUMNS + " FROM roz.api_keys WHERE id = %s"
# No tenant filter: row-level security is the filter (and the tests prove it).
_REVOKE = (
    "UPDATE roz.api_keys SET revoke_time = now() WHERE id = %s AND revoke_time IS NULL"
    " RETURNING " + _COLUMNS
)
_AUTHENTICATE = "SELECT key_id, tenant_id, scopes, host_id FROM roz.authenticate_api_key(%s, %s)"
_TOUCH = "SELECT roz.touch_api_keys(%s::uuid[], %s::timestamptz[])"
_TENANT_NAME = "SELECT roz.tenant_name(%s)"
# The shutdown's last flush: a few seconds at most, so shutdown fits Kubernetes' grace period.
CLOSE_TIMEOUT_SECONDS = 2.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _api_key(*, scopes: list[str], **columns: Any) -> ApiKey:
    return ApiKey(scopes=frozenset(scopes), **columns)


async def insert_api_key(
    conn: AsyncConnection[Any],
    tenant_id: UUID,
    new: NewApiKey,
    *,
    secret: str | None = None,
    created_by_key_id: UUID | None = None,
) -> tuple[ApiKey, str]:
    """Stores a key in the transaction of `conn` (tenant already set); returns it and its secret.

    `secret` is for keys an operator supplies (ROZ_ADMIN_KEY); otherwise one is minted.
    """
    if secret is None:
        secret = mint_secret()
    elif not looks_like_key(secret):
        raise ValueError("an API key is roz_sk_ followed by 43 base64url characters")
    constraints = {
        "api_keys_key_hash_key": lambda: AlreadyExists(
            "this API key is already registered", resource=RESOURCE
        ),
        "api_keys_created_by_fkey": lambda: NotFound(RESOURCE, str(created_by_key_id)),
        # Another tenant's host fails the same composite key as a missing one: no leak.
        "api_keys_host_fkey": lambda: InvalidArgument(
            "the API key's host does not exist",
            [FieldViolation("api_key.host_id", "no host with this id exists")],
        ),
        "api_keys_host_key_has_no_scopes": lambda: InvalidArgument(
            "the API key is not valid",
            [FieldViolation("api_key.scopes", "a key bound to a host holds no scopes")],
        ),
    }
    with database_errors(RESOURCE, constraints):
        async with conn.cursor(row_factory=kwargs_row(_api_key)) as cursor:
            await cursor.execute(
                _INSERT,
                (
                    tenant_id,
                    new.name,
                    key_prefix(secret),
                    hash_secret(secret),
                    sorted(new.scopes),
                    new.expire_time,
                    created_by_key_id,
                    new.host_id,
                ),
            )
            key = await cursor.fetchone()
    assert key is not None
    return key, secret


_LISTING = Listing("roz.api_keys", _COLUMNS, _api_key, condition="revoke_time IS NULL")


class ApiKeyRepository:
    """The API keys of each tenant, as the request role sees them."""

    def __init__(
        self,
        pool: Pool,
        recorder: LastUsedRecorder | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self._clock = clock

    async def create(
        self, tenant_id: UUID, new: NewApiKey, *, created_by_key_id: UUID | None = None
    ) -> tuple[ApiKey, str]:
        """The stored key and its secret; the secret is never available again."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await insert_api_key(conn, tenant_id, new, created_by_key_id=created_by_key_id)

    async def get(self, tenant_id: UUID, key_id: str | UUID) -> ApiKey:
        """A key, revoked or not; another tenant's key is NotFound like a missing one."""
        key_uuid = resource_id(key_id, RESOURCE)
        async with (
            tenant_transaction(self._pool, tenant_id) as conn,
            conn.cursor(row_factory=kwargs_row(_api_key)) as cursor,
        ):
            await cursor.execute(_GET, (key_uuid,))
            key = await cursor.fetchone()
        if key is None:
            raise NotFound(RESOURCE, str(key_uuid))
        return key

    async def list(
        self, tenant_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[ApiKey]:
        """Keys that are not revoked, newest first."""
        return await _LISTING.page(
            self._pool, tenant_id, page_size=page_size, page_token=page_token
        )

    async def revoke(self, tenant_id: UUID, key_id: str | UUID) -> ApiKey:
        """Revokes a key; the next request made with it fails. Revoking twice is NotFound."""
        key_uuid = resource_id(key_id, RESOURCE)
        async with (
            tenant_transaction(self._pool, tenant_id) as conn,
            conn.cursor(row_factory=kwargs_row(_api_key)) as cursor,
        ):
            await cursor.execute(_REVOKE, (key_uuid,))
            key = await cursor.fetchone()
        if key is None:
            raise NotFound(RESOURCE, str(key_uuid))
        return key

    async def tenant_name(self, tenant_id: UUID) -> str:
        """The name of the caller's tenant (the request role cannot read roz.tenants itself)."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_TENANT_NAME, (tenant_id,))).fetchone()
        return str(row[0]) if row and row[0] is not None else ""

    async def authenticate(self, secret: str) -> Principal | None:
        """The caller behind a bearer secret, or None for anything but a usable key.

        Nothing is cached: a revoked or expired key fails on its very next request.
        """
        if not looks_like_key(secret):
            return None  # malformed input never reaches the database
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_AUTHENTICATE, (key_prefix(secret), hash_secret(secret)))
            row = await cursor.fetchone()
        if row is None:
            return None
        principal = Principal(
            key_id=row[0], tenant_id=row[1], scopes=frozenset(row[2]), host_id=row[3]
        )
        if self._recorder is not None:
            self._recorder.record(principal.key_id, self._clock())
        return principal


class LastUsedRecorder:
    """Remembers which keys were used, and when; writes them all in one UPDATE per flush.

    Accurate to the flush interval. Several processes each flush their own view; the database
    function only ever moves a key's time forward, so their order does not matter.
    """

    def __init__(self, pool: Pool, interval_seconds: float = 30.0) -> None:
        self._pool = pool
        self._interval = interval_seconds
        self._pending: dict[UUID, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, key_id: UUID, used_at: datetime) -> None:
        previous = self._pending.get(key_id)
        if previous is None or used_at > previous:
            self._pending[key_id] = used_at

    async def flush(self) -> int:
        """Writes what was recorded since the last flush; returns how many keys changed."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(_TOUCH, (list(batch), list(batch.values())))
                row = await cursor.fetchone()
        except BaseException:
            for key_id, used_at in batch.items():  # keep them for the next attempt
                self.record(key_id, used_at)
            raise
        return int(row[0]) if row else 0

    def start(self) -> None:
        """Flushes every interval in the background until close()."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="roz-last-used-flush")

    async def close(self, timeout_seconds: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stops the background flush and writes what is left; call before closing the pool.

        A failure is logged, not raised, and the last write gets `timeout_seconds`: losing a few
        last-used times must not stop, nor hold up, a shutdown with the database away.
        """
        task, self._task = self._task, None
        await background.stop(task)
        try:
            async with asyncio.timeout(timeout_seconds):
                await self.flush()
        except Exception as exc:
            log.warning(
                "could not write the last-used times of %d API keys at shutdown (%s)",
                self.pending,
                "timed out" if isinstance(exc, TimeoutError) else exc,
            )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except DATABASE_AWAY:
                pass  # the database is away (logged once, by availability); the times are kept
            except Exception:  # the times are kept for the next attempt
                log.warning("could not write API keys' last-used times", exc_info=True)
