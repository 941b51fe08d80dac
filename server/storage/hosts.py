"""Host rows and their append-only status history: register, get, list, update, status, delete.

Every method runs in a tenant transaction and leaves the tenant filter to row-level security,
so another tenant's host — or environment — behaves exactly like a missing one. A status change
locks the host row, so concurrent changes of one host are recorded one after the other, each
with the status it really replaced.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg import errors as pg
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.domain.hosts import (
    INITIAL_STATUS,
    REGISTERED_REASON,
    Host,
    HostDraft,
    HostFields,
    HostKind,
    HostStatus,
    HostStatusChange,
    StatusChange,
)
from server.domain.pagination import Page
from server.domain.robot_link import presence_status
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.listing import Listing
from server.storage.tenancy import tenant_transaction

RESOURCE = "host"
IN_USE = "HOST_IN_USE"
_COLUMNS = (
    "id, tenant_id, environment_id, name, kind, capabilities, labels, status, last_seen_time,"
    " create_time, update_time"
)
_CHANGE_COLUMNS = (
    "id, tenant_id, host_id, from_status, to_status, reason, changed_by_key_id, create_time"
)
_INSERT = (
    "INSERT INTO roz.hosts (tenant_id, name, kind, environment_id, capabilities, labels, status)"
    " VALUES (%s, %s, %s, %s, %s::text[], %s, %s) RETURNING " + _COLUMNS
)
_GET = "SELECT " + _COLUMNS + " FROM roz.hosts WHERE id = %s"
_GET_FOR_UPDATE = _GET + " FOR UPDATE"
_UPDATE = (
    "UPDATE roz.hosts SET name = %s, kind = %s, environment_id = %s, capabilities = %s::text[],"
    " labels = %s, update_time = greatest(now(), create_time)"
    " WHERE id = %s RETURNING " + _COLUMNS
)
# A change's time is strictly after the host's previous one, even if the clock steps back,
# so the history's (create_time, id) order is the order the changes were made in. The
# registration takes the host's own create_time.
_RECORD_CHANGE = (
    "INSERT INTO roz.host_status_changes"
    " (tenant_id, host_id, from_status, to_status, reason, changed_by_key_id, create_time)"
    " SELECT %s, %s, %s, %s, %s, %s, coalesce(%s::timestamptz, greatest(clock_timestamp(),"
    " (SELECT max(c.create_time) + interval '1 microsecond' FROM roz.host_status_changes AS c"
    " WHERE c.host_id = %s)))"
    " RETURNING create_time"
)
_SET_STATUS = (
    "UPDATE roz.hosts SET status = %s, update_time = %s,"
    " last_seen_time = CASE WHEN %s THEN %s ELSE last_seen_time END"
    " WHERE id = %s RETURNING " + _COLUMNS
)
# A report of the status the host already has: it was seen, nothing changed.
_SEEN = (
    "UPDATE roz.hosts SET last_seen_time = greatest(clock_timestamp(), last_seen_time)"
    " WHERE id = %s RETURNING " + _COLUMNS
)
# Presence takes the host's row like any status change, but FOR NO KEY UPDATE: deliveries being
# numbered for the host (which hold it FOR KEY SHARE) need not wait for it.
_GET_FOR_PRESENCE = _GET + " FOR NO KEY UPDATE"
_SEEN_AT = (
    "UPDATE roz.hosts SET last_seen_time = greatest(%s, last_seen_time)"
    " WHERE id = %s RETURNING " + _COLUMNS
)
_DELETE = "DELETE FROM roz.hosts WHERE id = %s RETURNING id"
_EXISTS = "SELECT 1 FROM roz.hosts WHERE id = %s"


def _host(
    *,
    kind: str,
    status: str,
    capabilities: list[str],
    labels: dict[str, str],
    **columns: Any,
) -> Host:
    return Host(
        kind=HostKind(kind),
        status=HostStatus(status),
        capabilities=tuple(capabilities),
        labels=dict(labels),
        **columns,
    )


def _change(*, from_status: str | None, to_status: str, **columns: Any) -> HostStatusChange:
    return HostStatusChange(
        from_status=None if from_status is None else HostStatus(from_status),
        to_status=HostStatus(to_status),
        **columns,
    )


def _values(fields: HostFields) -> tuple[Any, ...]:
    return (
        fields.name,
        fields.kind.value,
        fields.environment_id,
        list(fields.capabilities),
        Jsonb(fields.labels),
    )


def _constraints(fields: HostFields) -> ConstraintErrors:
    return {
        "hosts_tenant_id_name_key": lambda: AlreadyExists(
            f"a host named {fields.name!r} already exists", resource=RESOURCE
        ),
        # Another tenant's environment fails the same composite key as a missing one: no leak.
        "hosts_environment_fkey": lambda: InvalidArgument(
            "the host's environment does not exist",
            [
                FieldViolation(
                    "host.environment_id", f"environment {fields.environment_id} not found"
                )
            ],
        ),
    }


_LISTING = Listing("roz.hosts", _COLUMNS, _host, filters=("status", "environment_id"))
_HISTORY = Listing("roz.host_status_changes", _CHANGE_COLUMNS, _change, filters=("host_id",))


class HostRepository:
    """The hosts of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant_id: UUID, draft: HostDraft, changed_by_key_id: UUID | None = None
    ) -> Host:
        """Registers a host, OFFLINE until it reports otherwise; the registration is recorded."""
        fields = draft.validate()
        with database_errors(RESOURCE, _constraints(fields)):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                created = await _one(
                    conn, _INSERT, (tenant_id, *_values(fields), INITIAL_STATUS.value)
                )
                assert created is not None
                await _record(
                    conn, created, None, INITIAL_STATUS, REGISTERED_REASON, changed_by_key_id
                )
        return created

    async def get(self, tenant_id: UUID, host_id: str | UUID) -> Host:
        host_uuid = resource_id(host_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            host = await _one(conn, _GET, (host_uuid,))
        if host is None:
            raise NotFound(RESOURCE, str(host_uuid))
        return host

    async def list(
        self,
        tenant_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: HostStatus | None = None,
        environment_id: UUID | None = None,
    ) -> Page[Host]:
        """Newest first, optionally only one status and/or one environment's hosts."""
        return await _LISTING.page(
            self._pool,
            tenant_id,
            page_size=page_size,
            page_token=page_token,
            filters={
                "status": None if status is None else status.value,
                "environment_id": environment_id,
            },
        )

    async def update(
        self,
        tenant_id: UUID,
        host_id: str | UUID,
        draft: HostDraft,
        mask: Collection[str] | None = None,
    ) -> Host:
        """Replaces every settable field, or only those in `mask`; the status is not one."""
        host_uuid = resource_id(host_id, RESOURCE)
        fields = draft.validate() if mask is None else None
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if fields is None:
                assert mask is not None
                current = await _one(conn, _GET_FOR_UPDATE, (host_uuid,))
                if current is None:
                    raise NotFound(RESOURCE, str(host_uuid))
                fields = draft.merged_into(current.draft(), mask).validate()
            with database_errors(RESOURCE, _constraints(fields)):
                updated = await _one(conn, _UPDATE, (*_values(fields), host_uuid))
        if updated is None:
            raise NotFound(RESOURCE, str(host_uuid))
        return updated

    async def update_status(
        self,
        tenant_id: UUID,
        host_id: str | UUID,
        change: StatusChange,
        changed_by_key_id: UUID | None = None,
    ) -> Host:
        """Sets the status and records the change. ONLINE and DEGRADED also set last_seen_time.

        Reporting the status the host already has is a heartbeat: it refreshes last_seen_time
        (for ONLINE and DEGRADED) and records nothing, because nothing changed.
        """
        host_uuid = resource_id(host_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            current = await _one(conn, _GET_FOR_UPDATE, (host_uuid,))
            if current is None:
                raise NotFound(RESOURCE, str(host_uuid))
            if current.status == change.status:
                if not change.status.means_seen:
                    return current
                seen = await _one(conn, _SEEN, (host_uuid,))
                assert seen is not None
                return seen
            changed_at = await _record(
                conn, current, current.status, change.status, change.reason, changed_by_key_id
            )
            updated = await _one(
                conn,
                _SET_STATUS,
                (
                    change.status.value,
                    changed_at,
                    change.status.means_seen,
                    changed_at,
                    host_uuid,
                ),
            )
        assert updated is not None
        return updated

    async def list_status_changes(
        self, tenant_id: UUID, host_id: str | UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[HostStatusChange]:
        """The host's status history, newest first; its registration is the oldest entry."""
        host_uuid = resource_id(host_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            exists = await (await conn.execute(_EXISTS, (host_uuid,))).fetchone()
        if exists is None:
            raise NotFound(RESOURCE, str(host_uuid))
        return await _HISTORY.page(
            self._pool,
            tenant_id,
            page_size=page_size,
            page_token=page_token,
            filters={"host_id": host_uuid},
        )

    async def delete(self, tenant_id: UUID, host_id: str | UUID) -> None:
        """Deletes the host and its history; refused (FailedPrecondition) while it is used."""
        host_uuid = resource_id(host_id, RESOURCE)
        try:
            async with tenant_transaction(self._pool, tenant_id) as conn:
                row = await (await conn.execute(_DELETE, (host_uuid,))).fetchone()
        except pg.ForeignKeyViolation as exc:
            # Tasks or commands that target it: their history must keep its host.
            raise FailedPrecondition(
                "the host is still in use",
                reason=IN_USE,
                metadata={"host_id": str(host_uuid), "referenced_by": exc.diag.table_name or ""},
            ) from exc
        if row is None:
            raise NotFound(RESOURCE, str(host_uuid))


async def record_presence(
    conn: AsyncConnection[TupleRow],
    host_id: UUID,
    *,
    connected: bool,
    reason: str,
    now: datetime,
) -> Host | None:
    """In the caller's tenant transaction: the host's robot connected or went. Moves the status
    as presence_status says (recording the change with `reason`) and, on connecting, sets
    last_seen_time to `now`. None if the host is gone."""
    current = await _one(conn, _GET_FOR_PRESENCE, (host_id,))
    if current is None:
        return None
    target = presence_status(current.status, connected)
    if target is None:
        return await _one(conn, _SEEN_AT, (now, host_id)) if connected else current
    changed_at = await _record(conn, current, current.status, target, reason, None)
    return await _one(conn, _SET_STATUS, (target.value, changed_at, connected, now, host_id))


async def _record(
    conn: AsyncConnection[TupleRow],
    host: Host,
    from_status: HostStatus | None,
    to_status: HostStatus,
    reason: str,
    changed_by_key_id: UUID | None,
) -> datetime:
    """Appends one change to the host's history; returns its time."""
    cursor = await conn.execute(
        _RECORD_CHANGE,
        (
            host.tenant_id,
            host.id,
            None if from_status is None else from_status.value,
            to_status.value,
            reason,
            changed_by_key_id,
            host.create_time if from_status is None else None,
            host.id,
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    changed_at: datetime = row[0]
    return changed_at


async def _one(conn: AsyncConnection[TupleRow], query: str, params: tuple[Any, ...]) -> Host | None:
    async with conn.cursor(row_factory=kwargs_row(_host)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()
