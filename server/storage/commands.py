"""Command rows and their history: create (safety-checked), get, list, transition, delete, sweep.

Every method runs in a tenant transaction and no statement filters by tenant: row-level security
does, so another tenant's id behaves exactly like a missing one. Each change of state reads the
command under FOR UPDATE, asks the domain's transition table, and writes the new state and its
history row in the same transaction, so two racing changes can never both win.

The safety check at creation reads the host, its environment and the environment's policies in
the transaction that inserts the command, under FOR SHARE row locks taken parent first
(environment, then host, then policies). A concurrent change of the environment's policy list,
of the host's environment or of a policy (a new version) therefore waits for the insert to commit,
or commits before the check reads: the stored `applied_policies` are always versions that were
current while the command was checked and inserted.

A command enters its host's delivery log (server/storage/robot_deliveries.py) in the transaction
that makes it PENDING, at creation or on approval; a CANCELLED one that was in the log gets a
cancellation there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg import errors as pg
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain import safety
from server.domain.commands import (
    ROBOT_REPORTS,
    TRANSITIONS,
    Command,
    CommandDraft,
    CommandFields,
    CommandState,
    CommandTransition,
    Deletion,
    SessionAction,
    check_reason,
    check_requested_state,
    check_transition,
    deletion_of,
    initial_state,
    unknown_host,
)
from server.domain.errors import (
    AlreadyExists,
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.domain.pagination import Page
from server.domain.robot_deliveries import DeliveryKind
from server.domain.robot_link import Judgement, judge_report
from server.domain.safety import PolicyVersion
from server.domain.safety_policies import SafetyPolicy
from server.storage.database import Pool
from server.storage.errors import ConstraintErrors, database_errors, resource_id
from server.storage.estop_checks import check_host, lock_host_for_start
from server.storage.listing import Listing
from server.storage.robot_deliveries import enqueue, enqueue_cancellation
from server.storage.safety_policies import latest_policies_for_environment
from server.storage.tenancy import tenant_transaction

log = logging.getLogger(__name__)

RESOURCE = "command"
IDEMPOTENCY_CONSTRAINT = "commands_tenant_id_idempotency_key_key"
SWEEP_BATCH = 100

_HISTORY = (
    "(SELECT coalesce(json_agg(json_build_object("
    "'from_state', t.from_state, 'to_state', t.to_state, 'reason', t.reason,"
    " 'actor', t.actor_key_id, 'transition_time', t.transition_time) ORDER BY t.id), '[]'::json)"
    " FROM roz.command_transitions AS t"
    " WHERE t.tenant_id = commands.tenant_id AND t.command_id = commands.id) AS transitions"
)
_COLUMNS = (
    "id, tenant_id, host_id, type, params, idempotency_key, timeout, state, applied_policies,"
    " create_time, update_time, start_time, run_deadline, deliver_time, acknowledge_time, result,"
    " session_id, session_call_id, " + _HISTORY
)
_GET = "SELECT " + _COLUMNS + " FROM roz.commands WHERE id = %s"
_SET_RESULT = "UPDATE roz.commands SET result = %s WHERE id = %s"
_MANY = "SELECT " + _COLUMNS + " FROM roz.commands WHERE id = ANY(%s)"
_BY_KEY = "SELECT id, request_fingerprint FROM roz.commands WHERE idempotency_key = %s"
_HOST = "SELECT environment_id FROM roz.hosts WHERE id = %s"
_LOCK_HOST = _HOST + " FOR SHARE"
_LOCK_ENVIRONMENT = "SELECT 1 FROM roz.environments WHERE id = %s FOR SHARE"
# A policy's new version updates its head row, which this lock makes wait for our commit.
_LOCK_POLICIES = (
    "SELECT p.id FROM roz.safety_policies AS p"
    " WHERE p.id IN (SELECT esp.safety_policy_id FROM roz.environment_safety_policies AS esp"
    " WHERE esp.environment_id = %s) ORDER BY p.id FOR SHARE OF p"
)
_INSERT = (
    "WITH created AS ("
    " INSERT INTO roz.commands (tenant_id, host_id, type, params, idempotency_key,"
    " request_fingerprint, timeout, state, applied_policies, session_id, session_call_id,"
    " session_turn)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " RETURNING tenant_id, id, state, create_time)"
    " INSERT INTO roz.command_transitions"
    " (tenant_id, command_id, from_state, to_state, reason, actor_key_id, transition_time)"
    " SELECT tenant_id, id, NULL, state, %s, %s, create_time FROM created RETURNING command_id"
)
_LOCK = "SELECT state, host_id FROM roz.commands WHERE id = %s FOR UPDATE"
_LOCK_OVERDUE = (
    "SELECT state, host_id FROM roz.commands WHERE id = %s AND state = 'running'"
    " AND run_deadline <= now() FOR UPDATE SKIP LOCKED"
)
# RUNNING starts the clock: the deadline is measured from now, not from creation.
_TRANSITION = (
    "WITH changed AS ("
    " UPDATE roz.commands SET state = %(to)s, update_time = greatest(now(), update_time),"
    " start_time = CASE WHEN %(to)s = 'running' THEN now() ELSE start_time END,"
    " run_deadline = CASE WHEN %(to)s = 'running' THEN now() + timeout ELSE run_deadline END"
    " WHERE id = %(id)s RETURNING tenant_id, id)"
    " INSERT INTO roz.command_transitions"
    " (tenant_id, command_id, from_state, to_state, reason, actor_key_id)"
    " SELECT tenant_id, id, %(from)s, %(to)s, %(reason)s, %(actor)s FROM changed"
    " RETURNING command_id"
)
_HOST_OF = "SELECT host_id FROM roz.commands WHERE id = %s"
# A session's actions not yet started, in id order (the order every locker takes).
_LOCK_UNSTARTED = (
    "SELECT id, host_id, state FROM roz.commands WHERE session_id = %s"
    " AND state IN ('awaiting_approval', 'pending') ORDER BY id FOR UPDATE"
)
_REMOVE = "DELETE FROM roz.commands WHERE id = %s RETURNING id"
_OVERDUE = "SELECT tenant_id, command_id FROM roz.overdue_commands(%s)"


def _command(
    *,
    state: str,
    params: dict[str, Any],
    idempotency_key: str | None,
    applied_policies: list[dict[str, Any]],
    transitions: list[dict[str, Any]],
    **columns: Any,
) -> Command:
    return Command(
        state=CommandState(state),
        params=params,
        idempotency_key=idempotency_key or "",
        applied_policies=tuple(
            PolicyVersion(UUID(item["policy_id"]), int(item["version"]))
            for item in applied_policies
        ),
        transitions=tuple(_transition(item) for item in transitions),
        **columns,
    )


def _transition(item: Mapping[str, Any]) -> CommandTransition:
    return CommandTransition(
        from_state=CommandState(item["from_state"]) if item["from_state"] else None,
        to_state=CommandState(item["to_state"]),
        reason=item["reason"],
        actor=UUID(item["actor"]) if item["actor"] else None,
        transition_time=datetime.fromisoformat(item["transition_time"]),
    )


def _field(name: str, description: str) -> Callable[[], DomainError]:
    return lambda: InvalidArgument(
        "the command is not valid", [FieldViolation(f"command.{name}", description)]
    )


# The database backs the domain's rules up; should a check ever fire, it names the field.
CONSTRAINTS: ConstraintErrors = {
    # The host was there when checked but went before the insert: as if it never existed.
    "commands_host_fkey": unknown_host,
    "commands_type_format": _field("type", "type has 1 to 64 letters, digits or _ . : -"),
    "commands_params_object": _field("params", "params must be a JSON object"),
    "commands_idempotency_key_length": _field(
        "idempotency_key", "an idempotency key has 1 to 128 characters"
    ),
    "commands_timeout_range": _field("timeout", "timeout must be positive and at most 7 days"),
}

_LISTING = Listing("roz.commands", _COLUMNS, _command, filters=("host_id", "state"))


class _KeyTaken(Exception):
    """A concurrent create with the same idempotency key committed first."""


class CommandRepository:
    """The commands of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(
        self,
        tenant_id: UUID,
        draft: CommandDraft,
        *,
        actor: UUID | None,
        validate_only: bool = False,
    ) -> Command:
        """Checks the command against its host's environment's safety policies and stores it.

        With an idempotency key, a repeat of the same request returns the command it created;
        the same key with another request is AlreadyExists. `validate_only` answers the same
        (the would-be command, or the error) and stores nothing.
        """
        fields = draft.validate()
        try:
            return await self._create(tenant_id, fields, actor, validate_only)
        except _KeyTaken:
            # The other create committed: now the key finds its command (or a conflict).
            return await self._create(tenant_id, fields, actor, validate_only)

    async def _create(
        self, tenant_id: UUID, fields: CommandFields, actor: UUID | None, validate_only: bool
    ) -> Command:
        with database_errors(RESOURCE, CONSTRAINTS):
            async with tenant_transaction(self._pool, tenant_id) as conn:
                return await insert_command(
                    conn, tenant_id, fields, actor, validate_only=validate_only
                )

    async def get(self, tenant_id: UUID, command_id: str | UUID) -> Command:
        command_uuid = resource_id(command_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            command = await _one(conn, _GET, (command_uuid,))
        if command is None:
            raise NotFound(RESOURCE, str(command_uuid))
        return command

    async def list(
        self,
        tenant_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        host_id: UUID | None = None,
        state: CommandState | None = None,
    ) -> Page[Command]:
        """Newest first, optionally of one host or in one state; stable under inserts."""
        return await _LISTING.page(
            self._pool,
            tenant_id,
            page_size=page_size,
            page_token=page_token,
            filters={"host_id": host_id, "state": state.value if state else None},
        )

    async def transition(
        self,
        tenant_id: UUID,
        command_id: str | UUID,
        target: CommandState,
        *,
        reason: str = "",
        actor: UUID | None,
    ) -> Command:
        """A client moves a command to `target`, if the transition table allows it from its
        current state; `actor` is the client's API key, recorded with the change."""
        command_uuid = resource_id(command_id, RESOURCE)
        reason = check_reason(reason)
        # A client's request: server-only targets are refused before anything is read.
        check_requested_state(target)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if target is CommandState.RUNNING:
                await _hold_host_to_start(conn, command_uuid)
            current, host_id = await _locked_state(conn, command_uuid)
            check_transition(current, target)
            await _record(conn, command_uuid, current, target, reason, actor)
            await _tell_robot(conn, command_uuid, host_id, target)
            changed = await _one(conn, _GET, (command_uuid,))
        assert changed is not None
        return changed

    async def report(
        self,
        tenant_id: UUID,
        host_id: UUID,
        command_id: str | UUID,
        reported: CommandState,
        *,
        reason: str = "",
        result: Mapping[str, Any] | None = None,
        actor: UUID | None,
    ) -> tuple[Judgement, Command]:
        """A robot's report on a command of its host: the move is made if the transition table
        allows it (with `result` kept on the command); otherwise nothing changes. Returns the
        verdict and the command as it is now. Another host's command is NotFound."""
        command_uuid = resource_id(command_id, RESOURCE)
        reason = check_reason(reason)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if reported is CommandState.RUNNING:
                await _hold_host_to_start(conn, command_uuid)
            current, owner = await _locked_state(conn, command_uuid)
            if owner != host_id:
                raise NotFound(RESOURCE, str(command_uuid))
            judgement = judge_report(current, reported, TRANSITIONS, ROBOT_REPORTS)
            if judgement.applies:
                # The result first: the move's triggers (a session's action_finished) read it.
                if result is not None:
                    await conn.execute(_SET_RESULT, (Jsonb(dict(result)), command_uuid))
                await _record(conn, command_uuid, current, reported, reason, actor)
            found = await _one(conn, _GET, (command_uuid,))
        assert found is not None
        return judgement, found

    async def delete(self, tenant_id: UUID, command_id: str | UUID, *, actor: UUID | None) -> None:
        """Cancels a pending command (recorded), removes a finished one, refuses a running one."""
        command_uuid = resource_id(command_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            current, host_id = await _locked_state(conn, command_uuid)
            if deletion_of(current) is Deletion.CANCEL:
                check_transition(current, CommandState.CANCELLED)
                await _record(conn, command_uuid, current, CommandState.CANCELLED, "deleted", actor)
                await _tell_robot(conn, command_uuid, host_id, CommandState.CANCELLED)
                return
            await conn.execute(_REMOVE, (command_uuid,))

    async def time_out_overdue(self, limit: int = SWEEP_BATCH) -> int:
        """The server's sweep: RUNNING commands past their deadline become TIMED_OUT.

        Safe with several server processes: each command is re-read under its row lock (rows
        another transaction holds are skipped until the next sweep), so each times out once.
        """
        async with self._pool.connection() as conn:
            due = await (await conn.execute(_OVERDUE, (limit,))).fetchall()
        timed_out = 0
        for tenant_id, command_id in due:
            async with tenant_transaction(self._pool, tenant_id) as conn:
                row = await (await conn.execute(_LOCK_OVERDUE, (command_id,))).fetchone()
                if row is None:  # finished meanwhile, or another process has it
                    continue
                current = CommandState(row[0])
                check_transition(current, CommandState.TIMED_OUT, by_server=True)
                await _record(
                    conn,
                    command_id,
                    current,
                    CommandState.TIMED_OUT,
                    "no result within its timeout",
                    None,
                )
                await _tell_robot(conn, command_id, row[1], CommandState.TIMED_OUT)
            timed_out += 1
        if timed_out:
            log.info("timed out %d commands", timed_out, extra={"commands": timed_out})
        return timed_out


async def insert_command(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    fields: CommandFields,
    actor: UUID | None,
    *,
    validate_only: bool = False,
    action: SessionAction | None = None,
) -> Command:
    """CreateCommand's one path, in the caller's tenant transaction: the idempotent repeat, the
    host's e-stop, the safety policies (a violation raises), the insert, and the delivery log
    for a PENDING command. `action` marks a command a robot's agent proposed in a session."""
    if fields.idempotency_key:
        original = await _by_idempotency_key(conn, fields)
        if original is not None:
            return original
    policies = await _policies_of_host(conn, fields.host_id)
    await check_host(conn, fields.host_id, "new commands")
    verdict = safety.evaluate(fields.type, fields.motion, policies)
    verdict.enforce()
    state = initial_state(verdict.needs_approval)
    if validate_only:
        return _would_be(tenant_id, fields, state, verdict.applied)
    try:
        row = await (
            await conn.execute(
                _INSERT, _insert_values(tenant_id, fields, state, verdict.applied, actor, action)
            )
        ).fetchone()
    except pg.UniqueViolation as exc:
        if exc.diag.constraint_name == IDEMPOTENCY_CONSTRAINT:
            raise _KeyTaken from exc
        raise
    assert row is not None
    if state is CommandState.PENDING:
        await enqueue(conn, fields.host_id, DeliveryKind.COMMAND, row[0])
    created = await _one(conn, _GET, (row[0],))
    assert created is not None
    return created


async def _by_idempotency_key(
    conn: AsyncConnection[TupleRow], fields: CommandFields
) -> Command | None:
    row = await (await conn.execute(_BY_KEY, (fields.idempotency_key,))).fetchone()
    if row is None:
        return None
    command_id, fingerprint = row
    if bytes(fingerprint) != fields.fingerprint:
        raise AlreadyExists(
            f"idempotency key {fields.idempotency_key!r} was already used for a different "
            "command; use a new key for a new command",
            resource=RESOURCE,
        )
    return await _one(conn, _GET, (command_id,))


async def _policies_of_host(conn: AsyncConnection[TupleRow], host_id: UUID) -> list[SafetyPolicy]:
    """The latest versions of every policy of the host's environment, locked until commit."""
    for _ in range(3):
        row = await (await conn.execute(_HOST, (host_id,))).fetchone()
        if row is None:
            raise unknown_host()
        environment_id: UUID | None = row[0]
        # Parent before child, the order every writer locks in, so no lock cycle forms.
        if environment_id is not None:
            await conn.execute(_LOCK_ENVIRONMENT, (environment_id,))
        locked = await (await conn.execute(_LOCK_HOST, (host_id,))).fetchone()
        if locked is None:
            raise unknown_host()
        if locked[0] != environment_id:
            continue  # moved to another environment meanwhile: lock that one instead
        if environment_id is None:
            return []
        await conn.execute(_LOCK_POLICIES, (environment_id,))
        return await latest_policies_for_environment(conn, environment_id)
    raise InvalidArgument("the command's host keeps changing environment; try again")


def _would_be(
    tenant_id: UUID,
    fields: CommandFields,
    state: CommandState,
    applied: tuple[PolicyVersion, ...],
) -> Command:
    """The command a create would store now; it has no id, because it does not exist."""
    now = datetime.now(UTC)
    return Command(
        id=UUID(int=0),
        tenant_id=tenant_id,
        host_id=fields.host_id,
        type=fields.type,
        params=fields.params,
        idempotency_key=fields.idempotency_key,
        timeout=fields.timeout,
        state=state,
        applied_policies=applied,
        transitions=(),
        create_time=now,
        update_time=now,
        stored=False,
    )


def _insert_values(
    tenant_id: UUID,
    fields: CommandFields,
    state: CommandState,
    applied: tuple[PolicyVersion, ...],
    actor: UUID | None,
    action: SessionAction | None,
) -> tuple[Any, ...]:
    key = fields.idempotency_key or None
    return (
        tenant_id,
        fields.host_id,
        fields.type,
        Jsonb(fields.params),
        key,
        fields.fingerprint if key else None,
        fields.timeout,
        state.value,
        Jsonb([{"policy_id": str(p.policy_id), "version": p.version} for p in applied]),
        None if action is None else action.session_id,
        None if action is None else action.call_id,
        None if action is None else action.turn,
        "created",
        actor,
    )


async def _locked_state(
    conn: AsyncConnection[TupleRow], command_id: UUID
) -> tuple[CommandState, UUID]:
    """The command's state and host, locked until the transaction ends."""
    row = await (await conn.execute(_LOCK, (command_id,))).fetchone()
    if row is None:
        raise NotFound(RESOURCE, str(command_id))
    return CommandState(row[0]), row[1]


async def _tell_robot(
    conn: AsyncConnection[TupleRow], command_id: UUID, host_id: UUID, target: CommandState
) -> None:
    """Puts what the move means for the robot in its delivery log, in the move's transaction."""
    if target is CommandState.PENDING:  # approved
        await enqueue(conn, host_id, DeliveryKind.COMMAND, command_id)
    elif target in (CommandState.CANCELLED, CommandState.TIMED_OUT):
        # Timed out: the robot may still be at it, and must stop.
        await enqueue_cancellation(conn, host_id, DeliveryKind.COMMAND, command_id)


async def _hold_host_to_start(conn: AsyncConnection[TupleRow], command_id: UUID) -> None:
    """Before a command moves to RUNNING: its host held against an e-stop, and the move
    refused while the host is stopped (server/storage/estop_checks.py)."""
    row = await (await conn.execute(_HOST_OF, (command_id,))).fetchone()
    if row is None:
        raise NotFound(RESOURCE, str(command_id))
    await lock_host_for_start(conn, row[0], "commands starting")


async def stop_commands(
    conn: AsyncConnection[TupleRow],
    stopped: Sequence[tuple[UUID, UUID, CommandState, str]],
    actor: UUID | None,
) -> None:
    """An e-stop's engage, in its transaction: each (command, host, state, reason), locked by
    the caller, RUNNING or PENDING and sent (a server move), becomes FAILED with the reason, and
    its robot is sent a cancellation."""
    for command_id, host_id, current, reason in stopped:
        await _record(conn, command_id, current, CommandState.FAILED, reason, actor)
        await enqueue_cancellation(conn, host_id, DeliveryKind.COMMAND, command_id)


async def lock_unstarted_actions(
    conn: AsyncConnection[TupleRow], session_id: UUID
) -> list[tuple[UUID, UUID, CommandState]]:
    """In the caller's tenant transaction: the session's commands still awaiting approval or
    pending, as (command, host, state), locked until commit."""
    rows = await (await conn.execute(_LOCK_UNSTARTED, (session_id,))).fetchall()
    return [(row[0], row[1], CommandState(row[2])) for row in rows]


async def cancel_actions(
    conn: AsyncConnection[TupleRow],
    locked: Sequence[tuple[UUID, UUID, CommandState]],
    reason: str,
    actor: UUID | None,
) -> None:
    """Cancels commands locked by `lock_unstarted_actions` (a turn cancelled, a session
    ended): recorded, and a cancellation sent to a robot that may have them."""
    for command_id, host_id, current in locked:
        await _record(conn, command_id, current, CommandState.CANCELLED, reason, actor)
        await _tell_robot(conn, command_id, host_id, CommandState.CANCELLED)


async def _record(
    conn: AsyncConnection[TupleRow],
    command_id: UUID,
    current: CommandState,
    target: CommandState,
    reason: str,
    actor: UUID | None,
) -> None:
    await conn.execute(
        _TRANSITION,
        {
            "id": command_id,
            "from": current.value,
            "to": target.value,
            "reason": reason,
            "actor": actor,
        },
    )


async def _one(
    conn: AsyncConnection[TupleRow], query: str, params: tuple[Any, ...]
) -> Command | None:
    async with conn.cursor(row_factory=kwargs_row(_command)) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def commands_by_id(
    conn: AsyncConnection[TupleRow], command_ids: Sequence[UUID]
) -> dict[UUID, Command]:
    """In the caller's tenant transaction: the commands with these ids that exist, by id."""
    async with conn.cursor(row_factory=kwargs_row(_command)) as cursor:
        await cursor.execute(_MANY, (list(command_ids),))
        return {command.id: command for command in await cursor.fetchall()}


async def time_out_commands(pool: Pool) -> int:
    """The sweep (server/storage/sweeps.py): overdue RUNNING commands, every tenant, TIMED_OUT."""
    moved = 0
    while True:
        count = await CommandRepository(pool).time_out_overdue(SWEEP_BATCH)
        moved += count
        if count < SWEEP_BATCH:
            return moved
