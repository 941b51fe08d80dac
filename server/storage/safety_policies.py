"""Safety policy rows and their append-only versions: create, get, list, update, delete.

roz.safety_policies holds a policy's identity, current name and current version number;
roz.safety_policy_versions holds every version whole, never changed. An update writes version
n + 1 under a row lock, so two concurrent updates get two versions, never one lost. Row-level
security scopes every statement to the caller's tenant.

Other transactions read policies through the functions at the end: an environment's (a command's
creation), a host's (the check at dispatch), and a host's heartbeat window (the robot link).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg import errors as pg
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from server.domain.pagination import Page
from server.domain.safety_policies import (
    Box,
    Limits,
    Point,
    Prism,
    SafetyPolicy,
    SafetyPolicyDraft,
    SafetyPolicyFields,
    Workspace,
)
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.listing import Listing
from server.storage.tenancy import tenant_transaction

RESOURCE = "safety policy"
VERSION_RESOURCE = "safety policy version"
IN_USE = "SAFETY_POLICY_IN_USE"

_NAMES = (
    "id",
    "tenant_id",
    "name",
    "description",
    "version",
    "max_linear_velocity",
    "max_acceleration",
    "max_force",
    "max_payload",
    "workspace",
    "allowed_command_types",
    "denied_command_types",
    "approval_command_types",
    "create_time",
    "update_time",
    "approval_ttl",
    "heartbeat_window",
)
_COLUMNS = ", ".join(_NAMES)
# One version of each policy, as one row: identity and create_time from the policy, the rest
# (and update_time, when the version was written) from the version.
_VERSIONS = (
    "(SELECT p.id, p.tenant_id, v.name, v.description, v.version, v.max_linear_velocity,"
    " v.max_acceleration, v.max_force, v.max_payload, v.workspace, v.allowed_command_types,"
    " v.denied_command_types, v.approval_command_types, p.create_time,"
    " v.create_time AS update_time, v.approval_ttl, v.heartbeat_window"
    " FROM roz.safety_policies AS p JOIN roz.safety_policy_versions AS v"
    " ON v.tenant_id = p.tenant_id AND v.safety_policy_id = p.id) AS versions"
)
_LATEST = (
    "(SELECT p.id, p.tenant_id, v.name, v.description, v.version, v.max_linear_velocity,"
    " v.max_acceleration, v.max_force, v.max_payload, v.workspace, v.allowed_command_types,"
    " v.denied_command_types, v.approval_command_types, p.create_time,"
    " v.create_time AS update_time, v.approval_ttl, v.heartbeat_window"
    " FROM roz.safety_policies AS p JOIN roz.safety_policy_versions AS v"
    " ON v.tenant_id = p.tenant_id AND v.safety_policy_id = p.id"
    " AND v.version = p.current_version) AS latest"
)
_INSERT_POLICY = (
    "INSERT INTO roz.safety_policies (tenant_id, name) VALUES (%s, %s) RETURNING id, create_time"
)
_INSERT_VERSION = (
    "INSERT INTO roz.safety_policy_versions (tenant_id, safety_policy_id, version, name,"
    " description, max_linear_velocity, max_acceleration, max_force, max_payload, workspace,"
    " allowed_command_types, denied_command_types, approval_command_types, approval_ttl,"
    " heartbeat_window, create_time)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s::text[], %s::text[],"
    " %s::interval, %s::interval,"
    " coalesce(%s::timestamptz,"
    " greatest(clock_timestamp(), %s::timestamptz + interval '1 microsecond')))"
    " RETURNING create_time"
)
# Version 1 is written at the policy's create_time; each later one strictly after the last.
_LOCK = "SELECT current_version, update_time FROM roz.safety_policies WHERE id = %s FOR UPDATE"
_ADVANCE = (
    "UPDATE roz.safety_policies SET name = %s, current_version = %s, update_time = %s WHERE id = %s"
)
_GET_LATEST = "SELECT " + _COLUMNS + " FROM " + _LATEST + " WHERE id = %s"
_GET_VERSION = "SELECT " + _COLUMNS + " FROM " + _VERSIONS + " WHERE id = %s AND version = %s"
_EXISTS = "SELECT 1 FROM roz.safety_policies WHERE id = %s"
_A_USER = (
    "SELECT environment_id FROM roz.environment_safety_policies WHERE safety_policy_id = %s"
    " ORDER BY environment_id LIMIT 1"
)
_DELETE = "DELETE FROM roz.safety_policies WHERE id = %s RETURNING id"
_FOR_ENVIRONMENT = (
    "SELECT "
    + ", ".join(f"latest.{name}" for name in _NAMES)
    + " FROM roz.environment_safety_policies AS esp JOIN "
    + _LATEST
    + " ON latest.id = esp.safety_policy_id"
    " WHERE esp.environment_id = %s ORDER BY esp.position"
)
# The same through the host, in one statement: the dispatch check reads it for every batch.
_FOR_HOST = (
    "SELECT "
    + ", ".join(f"latest.{name}" for name in _NAMES)
    + " FROM roz.hosts AS h JOIN roz.environment_safety_policies AS esp"
    " ON esp.environment_id = h.environment_id JOIN "
    + _LATEST
    + " ON latest.id = esp.safety_policy_id"
    " WHERE h.id = %s ORDER BY esp.position"
)
_HEARTBEAT_WINDOW = (
    "SELECT min(v.heartbeat_window) FROM roz.hosts AS h"
    " JOIN roz.environment_safety_policies AS esp ON esp.environment_id = h.environment_id"
    " JOIN roz.safety_policies AS p ON p.id = esp.safety_policy_id"
    " JOIN roz.safety_policy_versions AS v"
    " ON v.safety_policy_id = p.id AND v.version = p.current_version"
    " WHERE h.id = %s"
)


def _policy(
    *,
    max_linear_velocity: float | None,
    max_acceleration: float | None,
    max_force: float | None,
    max_payload: float | None,
    workspace: dict[str, Any],
    allowed_command_types: list[str],
    denied_command_types: list[str],
    approval_command_types: list[str],
    **columns: Any,
) -> SafetyPolicy:
    return SafetyPolicy(
        limits=Limits(
            max_linear_velocity=max_linear_velocity,
            max_acceleration=max_acceleration,
            max_force=max_force,
            max_payload=max_payload,
        ),
        workspace=workspace_of(workspace),
        allowed_command_types=frozenset(allowed_command_types),
        denied_command_types=frozenset(denied_command_types),
        approval_command_types=frozenset(approval_command_types),
        **columns,
    )


def workspace_json(workspace: Workspace) -> dict[str, Any]:
    """The jsonb stored for a workspace (see the migration for its shape)."""
    return {
        "boxes": [{"min": _point_json(b.min), "max": _point_json(b.max)} for b in workspace.boxes],
        "prisms": [
            {
                "vertices": [_point_json(v) for v in prism.vertices],
                "min_z": prism.min_z,
                "max_z": prism.max_z,
            }
            for prism in workspace.prisms
        ],
    }


def workspace_of(stored: dict[str, Any]) -> Workspace:
    return Workspace(
        boxes=tuple(
            Box(min=_point_of(b["min"]), max=_point_of(b["max"])) for b in stored.get("boxes", ())
        ),
        prisms=tuple(
            Prism(
                vertices=tuple(_point_of(v) for v in prism["vertices"]),
                min_z=float(prism["min_z"]),
                max_z=float(prism["max_z"]),
            )
            for prism in stored.get("prisms", ())
        ),
    )


def _point_json(point: Point) -> dict[str, float]:
    return {"x": point.x, "y": point.y, "z": point.z}


def _point_of(stored: dict[str, Any]) -> Point:
    return Point(x=float(stored["x"]), y=float(stored["y"]), z=float(stored["z"]))


def _version_values(fields: SafetyPolicyFields) -> tuple[Any, ...]:
    return (
        fields.name,
        fields.description,
        fields.limits.max_linear_velocity,
        fields.limits.max_acceleration,
        fields.limits.max_force,
        fields.limits.max_payload,
        Jsonb(workspace_json(fields.workspace)),
        sorted(fields.allowed_command_types),
        sorted(fields.denied_command_types),
        sorted(fields.approval_command_types),
        fields.approval_ttl,
        fields.heartbeat_window,
    )


def _constraints(fields: SafetyPolicyFields) -> ConstraintErrors:
    return {
        "safety_policies_tenant_id_name_key": lambda: AlreadyExists(
            f"a safety policy named {fields.name!r} already exists", resource=RESOURCE
        ),
    }


_LISTING = Listing(_LATEST, _COLUMNS, _policy)


class SafetyPolicyRepository:
    """The safety policies of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: UUID, draft: SafetyPolicyDraft) -> SafetyPolicy:
        """Version 1 of a new policy."""
        fields = draft.validate()
        with database_errors(RESOURCE, _constraints(fields)):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                row = await (
                    await conn.execute(_INSERT_POLICY, (tenant_id, fields.name))
                ).fetchone()
                assert row is not None
                policy_id, create_time = row
                await conn.execute(
                    _INSERT_VERSION,
                    (tenant_id, policy_id, 1, *_version_values(fields), create_time, None),
                )
                created = await _one(conn, _GET_LATEST, (policy_id,))
        assert created is not None
        return created

    async def get(
        self, tenant_id: UUID, policy_id: str | UUID, version: int | None = None
    ) -> SafetyPolicy:
        """The latest version, or the one asked for (NotFound if it was never written)."""
        policy_uuid = resource_id(policy_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if version is None:
                found = await _one(conn, _GET_LATEST, (policy_uuid,))
            else:
                found = await _one(conn, _GET_VERSION, (policy_uuid, version))
                if found is None and await (await conn.execute(_EXISTS, (policy_uuid,))).fetchone():
                    raise NotFound(VERSION_RESOURCE, f"{policy_uuid}@{version}")
        if found is None:
            raise NotFound(RESOURCE, str(policy_uuid))
        return found

    async def list(
        self, tenant_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[SafetyPolicy]:
        """The latest version of each policy, newest policy first."""
        return await _LISTING.page(
            self._pool, tenant_id, page_size=page_size, page_token=page_token
        )

    async def update(
        self, tenant_id: UUID, policy_id: str | UUID, draft: SafetyPolicyDraft
    ) -> SafetyPolicy:
        """Writes the draft as the next version; every earlier version stays readable."""
        policy_uuid = resource_id(policy_id, RESOURCE)
        fields = draft.validate()
        with database_errors(RESOURCE, _constraints(fields)):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                row = await (await conn.execute(_LOCK, (policy_uuid,))).fetchone()
                if row is None:
                    raise NotFound(RESOURCE, str(policy_uuid))
                version = int(row[0]) + 1
                written = await (
                    await conn.execute(
                        _INSERT_VERSION,
                        (tenant_id, policy_uuid, version, *_version_values(fields), None, row[1]),
                    )
                ).fetchone()
                assert written is not None
                await conn.execute(_ADVANCE, (fields.name, version, written[0], policy_uuid))
                updated = await _one(conn, _GET_LATEST, (policy_uuid,))
        assert updated is not None
        return updated

    async def delete(self, tenant_id: UUID, policy_id: str | UUID) -> None:
        """Deletes the policy and every version; refused while an environment uses it."""
        policy_uuid = resource_id(policy_id, RESOURCE)
        try:
            async with tenant_transaction(self._pool, tenant_id) as conn:
                user = await (await conn.execute(_A_USER, (policy_uuid,))).fetchone()
                if user is not None:
                    raise FailedPrecondition(
                        f"the safety policy is used by environment {user[0]}; remove it from"
                        " the environment's safety_policy_ids first",
                        reason=IN_USE,
                        metadata={
                            "safety_policy_id": str(policy_uuid),
                            "environment_id": str(user[0]),
                        },
                    )
                row = await (await conn.execute(_DELETE, (policy_uuid,))).fetchone()
        except pg.ForeignKeyViolation as exc:
            # Attached meanwhile, or something else keeps a reference (e.g. applied versions).
            raise FailedPrecondition(
                "the safety policy is still in use",
                reason=IN_USE,
                metadata={
                    "safety_policy_id": str(policy_uuid),
                    "referenced_by": exc.diag.table_name or "",
                },
            ) from exc
        if row is None:
            raise NotFound(RESOURCE, str(policy_uuid))


async def latest_policies_for_environment(
    conn: AsyncConnection[Any], environment_id: UUID
) -> list[SafetyPolicy]:
    """The latest version of each policy attached to the environment, in attachment order.

    Runs on a connection already inside a tenant transaction; another tenant's environment
    has no policies here.
    """
    async with conn.cursor(row_factory=kwargs_row(_policy)) as cursor:
        await cursor.execute(_FOR_ENVIRONMENT, (environment_id,))
        return await cursor.fetchall()


async def latest_policies_for_host(conn: AsyncConnection[Any], host_id: UUID) -> list[SafetyPolicy]:
    """The latest version of each policy of the host's environment, in attachment order; none
    for a host without an environment (or one that does not exist). In the caller's tenant
    transaction, unlocked: what is current as the statement runs."""
    async with conn.cursor(row_factory=kwargs_row(_policy)) as cursor:
        await cursor.execute(_FOR_HOST, (host_id,))
        return await cursor.fetchall()


async def heartbeat_window_of_host(conn: AsyncConnection[Any], host_id: UUID) -> timedelta | None:
    """The heartbeat window the host's robot link is held to: the shortest `heartbeat_window`
    among the latest versions of its environment's policies; None when none sets one (or the
    host has no environment). In the caller's tenant transaction."""
    row = await (await conn.execute(_HEARTBEAT_WINDOW, (host_id,))).fetchone()
    return None if row is None else row[0]


async def _one(
    conn: AsyncConnection[TupleRow], query: str, params: tuple[Any, ...]
) -> SafetyPolicy | None:
    async with conn.cursor(row_factory=kwargs_row(_policy)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()
