"""Environment rows: create, get, list, update (replace or field mask), delete.

Every method runs in a tenant transaction, and no statement filters by tenant: row-level
security does, so another tenant's id behaves exactly like a missing one (NotFound).
`safety_policy_ids` live in roz.environment_safety_policies (ordered, foreign keys to both
sides) and `host_ids` are the hosts naming this environment; both are read by subquery.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg import errors as pg
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain.environments import (
    Environment,
    EnvironmentDraft,
    EnvironmentFields,
    EnvironmentKind,
)
from server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.domain.pagination import Page
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.listing import Listing
from server.storage.tenancy import tenant_transaction

RESOURCE = "environment"
IN_USE = "ENVIRONMENT_IN_USE"
_COLUMNS = (
    "id, tenant_id, name, description, kind, allowed_tools,"
    " ARRAY(SELECT esp.safety_policy_id FROM roz.environment_safety_policies AS esp"
    " WHERE esp.environment_id = environments.id ORDER BY esp.position) AS safety_policy_ids,"
    " ARRAY(SELECT h.id FROM roz.hosts AS h WHERE h.environment_id = environments.id"
    " ORDER BY h.create_time, h.id) AS host_ids,"
    " config, create_time, update_time"
)
_INSERT = (
    "INSERT INTO roz.environments (tenant_id, name, description, kind, allowed_tools, config)"
    " VALUES (%s, %s, %s, %s, %s::text[], %s) RETURNING id"
)
_GET = "SELECT " + _COLUMNS + " FROM roz.environments WHERE id = %s"
_GET_FOR_UPDATE = _GET + " FOR UPDATE"
_UPDATE = (
    "UPDATE roz.environments SET name = %s, description = %s, kind = %s,"
    " allowed_tools = %s::text[], config = %s, update_time = greatest(now(), create_time)"
    " WHERE id = %s RETURNING id"
)
_DELETE = "DELETE FROM roz.environments WHERE id = %s RETURNING id"
# RLS hides other tenants' policies, so theirs are reported exactly like ids that name nothing.
_MISSING_POLICIES = (
    "SELECT (listed.ordinality - 1)::integer, listed.id"
    " FROM unnest(%s::uuid[]) WITH ORDINALITY AS listed (id, ordinality)"
    " WHERE NOT EXISTS (SELECT 1 FROM roz.safety_policies AS p WHERE p.id = listed.id)"
    " ORDER BY 1"
)
_DETACH_POLICIES = "DELETE FROM roz.environment_safety_policies WHERE environment_id = %s"
_ATTACH_POLICIES = (
    "INSERT INTO roz.environment_safety_policies"
    " (tenant_id, environment_id, safety_policy_id, position)"
    " SELECT %s, %s, listed.id, (listed.ordinality - 1)::integer"
    " FROM unnest(%s::uuid[]) WITH ORDINALITY AS listed (id, ordinality)"
)
_A_HOST = "SELECT id FROM roz.hosts WHERE environment_id = %s ORDER BY create_time, id LIMIT 1"


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
        Jsonb(fields.config),
    )


def _constraints(fields: EnvironmentFields) -> ConstraintErrors:
    return {
        "environments_tenant_id_name_key": lambda: AlreadyExists(
            f"an environment named {fields.name!r} already exists", resource=RESOURCE
        ),
        # Only when a policy is deleted between our check and our insert.
        "environment_safety_policies_policy_fkey": lambda: InvalidArgument(
            "a safety policy of the environment does not exist",
            [FieldViolation("environment.safety_policy_ids", "a listed policy was just deleted")],
        ),
    }


async def _attach_policies(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    environment_id: UUID,
    policy_ids: tuple[UUID, ...],
) -> None:
    """Makes `policy_ids`, in order, the environment's policies; unknown ids are violations."""
    await conn.execute(_DETACH_POLICIES, (environment_id,))
    if not policy_ids:
        return
    missing = await (await conn.execute(_MISSING_POLICIES, (list(policy_ids),))).fetchall()
    if missing:
        raise InvalidArgument(
            "the environment names safety policies that do not exist",
            [
                FieldViolation(
                    f"environment.safety_policy_ids[{index}]", f"safety policy {policy} not found"
                )
                for index, policy in missing
            ],
        )
    await conn.execute(_ATTACH_POLICIES, (tenant_id, environment_id, list(policy_ids)))


_LISTING = Listing("roz.environments", _COLUMNS, _environment)


class EnvironmentRepository:
    """The environments of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: UUID, draft: EnvironmentDraft) -> Environment:
        fields = draft.validate()
        with database_errors(RESOURCE, _constraints(fields)):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                row = await (await conn.execute(_INSERT, (tenant_id, *_values(fields)))).fetchone()
                assert row is not None
                await _attach_policies(conn, tenant_id, row[0], fields.safety_policy_ids)
                created = await _one(conn, _GET, (row[0],))
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
                row = await (
                    await conn.execute(_UPDATE, (*_values(fields), environment_uuid))
                ).fetchone()
                if row is None:
                    raise NotFound(RESOURCE, str(environment_uuid))
                await _attach_policies(conn, tenant_id, environment_uuid, fields.safety_policy_ids)
                updated = await _one(conn, _GET, (environment_uuid,))
        assert updated is not None
        return updated

    async def delete(self, tenant_id: UUID, environment_id: str | UUID) -> None:
        """Detaches its safety policies; refused (FailedPrecondition) while anything uses it."""
        environment_uuid = resource_id(environment_id, RESOURCE)
        try:
            async with tenant_transaction(self._pool, tenant_id) as conn:
                host = await (await conn.execute(_A_HOST, (environment_uuid,))).fetchone()
                if host is not None:
                    raise FailedPrecondition(
                        "the environment still has hosts; move them to another environment"
                        " or delete them first",
                        reason=IN_USE,
                        metadata={"environment_id": str(environment_uuid), "host_id": str(host[0])},
                    )
                row = await (await conn.execute(_DELETE, (environment_uuid,))).fetchone()
        except pg.ForeignKeyViolation as exc:
            # Whatever else refers to it (tasks, triggers …), or a host added meanwhile.
            raise FailedPrecondition(
                "the environment is still in use",
                reason=IN_USE,
                metadata={
                    "environment_id": str(environment_uuid),
                    "referenced_by": exc.diag.table_name or "",
                },
            ) from exc
        if row is None:
            raise NotFound(RESOURCE, str(environment_uuid))


async def _one(
    conn: AsyncConnection[TupleRow], query: str, params: tuple[Any, ...]
) -> Environment | None:
    async with conn.cursor(row_factory=kwargs_row(_environment)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()
