"""Environment rows: create, get, list, update (replace or field mask), delete.

Every method runs in a tenant transaction, and no statement filters by tenant: row-level
security does, so another tenant's id behaves exactly like a missing one (NotFound).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain.environments import (
    Environment,
    EnvironmentDraft,
    EnvironmentFields,
    EnvironmentKind,
)
from server.domain.errors import AlreadyExists, NotFound
from server.domain.pagination import Page
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.listing import Listing
from server.storage.tenancy import tenant_transaction

RESOURCE = "environment"
_COLUMNS = (
    "id, tenant_id, name, description, kind, allowed_tools, safety_policy_ids, host_ids,"
    " config, create_time, update_time"
)
_INSERT = (
    "INSERT INTO roz.environments"
    " (tenant_id, name, description, kind, allowed_tools, safety_policy_ids, host_ids, config)"
    " VALUES (%s, %s, %s, %s, %s::text[], %s::uuid[], %s::uuid[], %s)"
    " RETURNING " + _COLUMNS
)
_GET = "SELECT " + _COLUMNS + " FROM roz.environments WHERE id = %s"
_GET_FOR_UPDATE = _GET + " FOR UPDATE"
_UPDATE = (
    "UPDATE roz.environments SET name = %s, description = %s, kind = %s,"
    " allowed_tools = %s::text[], safety_policy_ids = %s::uuid[], host_ids = %s::uuid[],"
    " config = %s, update_time = greatest(now(), create_time)"
    " WHERE id = %s RETURNING " + _COLUMNS
)
_DELETE = "DELETE FROM roz.environments WHERE id = %s RETURNING id"


def _environment(
    *,
    kind: str,
    allowed_tools: list[str],
    safety_policy_ids: list[UUID],
    host_ids: list[UUID],
    **columns: Any,
) -> Environment:
    return Environment(
        kind=EnvironmentKind(kind),
        allowed_tools=tuple(allowed_tools),
        safety_policy_ids=tuple(safety_policy_ids),
        host_ids=tuple(host_ids),
        **columns,
    )


def _values(fields: EnvironmentFields) -> tuple[Any, ...]:
    return (
        fields.name,
        fields.description,
        fields.kind.value,
        list(fields.allowed_tools),
        list(fields.safety_policy_ids),
        list(fields.host_ids),
        Jsonb(fields.config),
    )


def _constraints(fields: EnvironmentFields) -> ConstraintErrors:
    return {
        "environments_tenant_id_name_key": lambda: AlreadyExists(
            f"an environment named {fields.name!r} already exists", resource=RESOURCE
        ),
    }


_LISTING = Listing("roz.environments", _COLUMNS, _environment)


class EnvironmentRepository:
    """The environments of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: UUID, draft: EnvironmentDraft) -> Environment:
        fields = draft.validate()
        with database_errors(RESOURCE, _constraints(fields)):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                created = await _one(conn, _INSERT, (tenant_id, *_values(fields)))
        assert created is not None
        return created

    async def get(self, tenant_id: UUID, environment_id: str | UUID) -> Environment:
        environment_uuid = resource_id(environment_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            environment = await _one(conn, _GET, (environment_uuid,))
        if environment is None:
            raise NotFound(RESOURCE, str(environment_uuid))
        return environment

    async def list(
        self, tenant_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[Environment]:
        """Newest first; the token is stable while rows are added or removed."""
        return await _LISTING.page(
            self._pool, tenant_id, page_size=page_size, page_token=page_token
        )

    async def update(
        self,
        tenant_id: UUID,
        environment_id: str | UUID,
        draft: EnvironmentDraft,
        mask: Collection[str] | None = None,
    ) -> Environment:
        """Replaces every mutable field, or only those in `mask` (names from UPDATABLE_FIELDS).

        With a mask, the stored row is read under FOR UPDATE, merged and validated whole, so
        the result obeys every rule even though the client sent only part of it.
        """
        environment_uuid = resource_id(environment_id, RESOURCE)
        fields = draft.validate() if mask is None else None
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if fields is None:
                assert mask is not None
                current = await _one(conn, _GET_FOR_UPDATE, (environment_uuid,))
                if current is None:
                    raise NotFound(RESOURCE, str(environment_uuid))
                fields = draft.merged_into(current.draft(), mask).validate()
            with database_errors(RESOURCE, _constraints(fields)):
                updated = await _one(conn, _UPDATE, (*_values(fields), environment_uuid))
        if updated is None:
            raise NotFound(RESOURCE, str(environment_uuid))
        return updated

    async def delete(self, tenant_id: UUID, environment_id: str | UUID) -> None:
        environment_uuid = resource_id(environment_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (await conn.execute(_DELETE, (environment_uuid,))).fetchone()
        if row is None:
            raise NotFound(RESOURCE, str(environment_uuid))


async def _one(
    conn: AsyncConnection[TupleRow], query: str, params: tuple[Any, ...]
) -> Environment | None:
    async with conn.cursor(row_factory=kwargs_row(_environment)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()
