"""Device logins and approval-page sessions in PostgreSQL, through their SECURITY DEFINER functions.

Neither table belongs to a tenant until a person decides, so the request role holds no privilege
on them; each function of migration 0007 does one narrow thing. A poll runs in one transaction:
lock the login, decide (server/domain/device_auth.py), and either record the poll or mint the
key in the approver's tenant and mark the code used — so a key is minted exactly once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from server.domain import device_auth
from server.domain.api_keys import ApiKey, NewApiKey, Principal
from server.domain.device_auth import (
    ApproverSession,
    DeviceRequest,
    PendingAuthorization,
    PolledAuthorization,
    PollOutcome,
    State,
    decide_poll,
    hash_device_code,
    hash_session_id,
    key_name,
    mint_device_code,
    mint_session_id,
    mint_user_code,
)
from server.storage.api_keys import insert_api_key
from server.storage.database import Pool
from server.storage.tenancy import set_tenant

_START = "SELECT roz.start_device_authorization(%s, %s, %s, %s, %s, %s::text[], %s, %s, %s)"
_LOCK = (
    "SELECT id, state, expire_time, poll_interval_seconds, last_poll_time, client_name,"
    " tenant_id, decided_by_key_id, approver_usable, granted_scopes"
    " FROM roz.lock_device_authorization(%s, %s)"
)
_RECORD = "SELECT roz.record_device_poll(%s, %s, %s, %s)"
_FIND = (
    "SELECT id, user_code, client_name, client_id, client_address, requested_scopes,"
    " create_time, expire_time FROM roz.find_device_authorization(%s, %s)"
)
_DECIDE = "SELECT roz.decide_device_authorization(%s, %s, %s, %s, %s, %s::text[])"
_START_SESSION = "SELECT roz.start_device_session(%s, %s, %s, %s, %s)"
_FIND_SESSION = (
    "SELECT key_id, tenant_id, scopes, key_name, tenant_name, expire_time"
    " FROM roz.find_device_session(%s, %s)"
)
_END_SESSION = "SELECT roz.end_device_session(%s)"
_PURGE = "SELECT roz.purge_device_authorizations(%s, %s)"
_USER_CODE_ATTEMPTS = 10  # collisions need ~10^5 waiting logins; ten draws never all collide


class DeviceAuthorizationRepository:
    """Device logins as the request role sees them: only through roz's functions."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def start(
        self,
        request: DeviceRequest,
        *,
        client_address: str,
        now: datetime,
        lifetime: timedelta,
        interval_seconds: int,
    ) -> tuple[str, str]:
        """Stores a new login; returns its device code and user code (undashed)."""
        device_code = mint_device_code()
        async with self._pool.connection() as conn:
            for _ in range(_USER_CODE_ATTEMPTS):
                user_code = mint_user_code()
                cursor = await conn.execute(
                    _START,
                    (
                        hash_device_code(device_code),
                        user_code,
                        request.client_name,
                        request.client_id,
                        client_address[:100],
                        sorted(request.scopes),
                        now,
                        now + lifetime,
                        interval_seconds,
                    ),
                )
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    return device_code, user_code
        raise RuntimeError("no free user code after several draws")

    async def exchange(self, device_code: str, now: datetime) -> tuple[ApiKey, str]:
        """The minted key and its secret, or DeviceFlowError with what the poll answers."""
        code_hash = hash_device_code(device_code)
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(_LOCK, (code_hash, now))
            row = await cursor.fetchone()
            found = None if row is None else _polled(row)
            decision = decide_poll(found, now)
            if decision.outcome is PollOutcome.GRANT:
                assert found is not None
                assert found.tenant_id is not None
                # The transaction becomes the approver's tenant's, for RLS on the key insert.
                await set_tenant(conn, found.tenant_id)
                new = NewApiKey(
                    name=key_name(found.client_name, now),
                    scopes=found.granted_scopes,
                    expire_time=None,
                )
                key, secret = await insert_api_key(
                    conn, found.tenant_id, new, created_by_key_id=found.approver_key_id
                )
                await conn.execute(_RECORD, (code_hash, now, 0, key.id))
                return key, secret
            if decision.last_poll_time is not None:
                await conn.execute(
                    _RECORD, (code_hash, decision.last_poll_time, decision.interval_seconds, None)
                )
        assert decision.error is not None
        raise decision.error  # after the commit: the poll's time and interval are kept

    async def find_pending(self, user_code: str, now: datetime) -> PendingAuthorization | None:
        """The waiting, unexpired login of a normalised user code."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_FIND, (user_code, now))).fetchone()
        if row is None:
            return None
        return PendingAuthorization(
            id=row[0],
            user_code=row[1],
            client_name=row[2],
            client_id=row[3],
            client_address=row[4],
            requested_scopes=frozenset(row[5]),
            create_time=row[6],
            expire_time=row[7],
        )

    async def decide(
        self,
        authorization_id: UUID,
        approver: Principal,
        *,
        approve: bool,
        scopes: frozenset[str],
        now: datetime,
    ) -> bool:
        """Approves or denies a waiting login; False if it is no longer waiting (or expired)."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _DECIDE,
                (
                    authorization_id,
                    now,
                    approver.tenant_id,
                    approver.key_id,
                    approve,
                    sorted(scopes) if approve else None,
                ),
            )
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def start_session(self, approver: Principal, now: datetime) -> str | None:
        """A new approval-page session for a key; its secret id, or None if the key is unusable."""
        session_id = mint_session_id()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _START_SESSION,
                (
                    hash_session_id(session_id),
                    approver.tenant_id,
                    approver.key_id,
                    now,
                    now + device_auth.SESSION_LIFETIME,
                ),
            )
            row = await cursor.fetchone()
        return session_id if row and row[0] else None

    async def find_session(self, session_id: str, now: datetime) -> ApproverSession | None:
        """The signed-in approver, or None for an unknown, expired or revoked session."""
        if not session_id or len(session_id) > 100:
            return None
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_FIND_SESSION, (hash_session_id(session_id), now))
            row = await cursor.fetchone()
        if row is None:
            return None
        principal = Principal(key_id=row[0], tenant_id=row[1], scopes=frozenset(row[2]))
        return ApproverSession(
            principal=principal, key_name=row[3], tenant_name=row[4], expire_time=row[5]
        )

    async def end_session(self, session_id: str) -> None:
        if not session_id or len(session_id) > 100:
            return
        async with self._pool.connection() as conn:
            await conn.execute(_END_SESSION, (hash_session_id(session_id),))


async def purge_device_authorizations(pool: Pool, now: datetime) -> int:
    """The sweep: used logins, logins expired a while ago, ended sessions; how many went."""
    async with pool.connection() as conn:
        row = await (await conn.execute(_PURGE, (now, device_auth.EXPIRED_RETENTION))).fetchone()
    return int(row[0]) if row else 0


def _polled(row: Any) -> PolledAuthorization:
    return PolledAuthorization(
        id=row[0],
        state=State(row[1]),
        expire_time=row[2],
        interval_seconds=int(row[3]),
        last_poll_time=row[4],
        client_name=str(row[5]),
        tenant_id=row[6],
        approver_key_id=row[7],
        approver_usable=bool(row[8]),
        granted_scopes=frozenset(row[9] or ()),
    )
