"""Session rows, their turns and their event logs: start, read, what operators send, what the
robot's agent sends, the end.

Every method runs in a tenant transaction under row-level security. A change reads the session
under FOR UPDATE and asks the domain's rules (server/domain/sessions.py) before it writes; events
are appended by roz.append_session_event (migration 0016), which numbers them and, for those the
agent must hear, puts them in the host's delivery log in the same transaction.

Locks, in the order an e-stop's engage takes them (the host, the commands it ends, through their
moves' trigger their sessions, then the host's delivery log): a session's unstarted actions
(commands, in id order) before the session row, and the delivery log last (an event for the
agent). A proposal and an agent's end need the host or the session's commands after the
session row, so they hold the host (FOR SHARE) first.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg import errors as pg
from psycopg.rows import TupleRow, kwargs_row
from psycopg.types.json import Jsonb

from server.domain.commands import CommandDraft, CommandState, SessionAction
from server.domain.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from server.domain.pagination import Page
from server.domain.safety import SAFETY_VIOLATION
from server.domain.sessions import (
    AGENT_BOUND,
    CALL_ID_TAKEN,
    END_MESSAGES,
    ROBOT_OFFLINE,
    TURN_IN_PROGRESS,
    UNKNOWN_APPROVAL,
    UNKNOWN_CALL,
    AgentEnd,
    AgentEvent,
    AgentUpdate,
    Arrival,
    Decision,
    EndReason,
    EventKind,
    Origin,
    Proposal,
    Session,
    SessionEvent,
    SessionState,
    TextDelta,
    ToolCall,
    ToolResult,
    Turn,
    TurnFinish,
    TurnState,
    UserMessage,
    arrival,
    check_agent_event,
)
from server.storage.commands import CONSTRAINTS as COMMAND_CONSTRAINTS
from server.storage.commands import (
    cancel_actions,
    insert_command,
    lock_unstarted_actions,
)
from server.storage.database import Pool
from server.storage.errors import database_errors, resource_id
from server.storage.estop_checks import check_host, hold_host
from server.storage.listing import Listing
from server.storage.tenancy import tenant_transaction

RESOURCE = "session"
CHANNEL = "roz_session_events"
CALL_CONSTRAINT = "commands_session_call_key"

_COLUMNS = (
    "id, tenant_id, host_id, environment_id, started_by, state, end_reason, end_message,"
    " create_time, end_time, activity_time, last_sequence, agent_sequence, turn_count,"
    " active_turn, input_tokens, output_tokens"
)
_GET = "SELECT " + _COLUMNS + " FROM roz.sessions WHERE id = %s"
_LOCK = _GET + " FOR UPDATE"
_HOST = (
    "SELECT h.environment_id, l.link_id FROM roz.hosts AS h"
    " LEFT JOIN roz.robot_links AS l ON l.host_id = h.id WHERE h.id = %s"
)
_INSERT = (
    "INSERT INTO roz.sessions (host_id, tenant_id, environment_id, started_by)"
    " VALUES (%s, %s, %s, %s) RETURNING id"
)
_APPEND = (
    "SELECT event_id, event_sequence, event_time"
    " FROM roz.append_session_event(%s, %s, %s, %s, %s, %s, %s)"
)
_EVENT_COLUMNS = (
    "id, session_id, sequence, kind, origin, turn, correlation_id, payload, create_time"
)
_EVENTS_AFTER = (
    "SELECT " + _EVENT_COLUMNS + " FROM roz.session_events"
    " WHERE session_id = %s AND sequence > %s ORDER BY sequence LIMIT %s"
)
_EVENTS_BY_ID = "SELECT " + _EVENT_COLUMNS + " FROM roz.session_events WHERE id = ANY(%s)"
_LAST_OF_CALL = (
    "SELECT " + _EVENT_COLUMNS + " FROM roz.session_events"
    " WHERE session_id = %s AND kind = %s AND correlation_id = %s"
    " ORDER BY sequence DESC LIMIT 1"
)
_CALL_ASKED = (
    "SELECT 1 FROM roz.session_events"
    " WHERE session_id = %s AND kind = 'tool_call_requested' AND correlation_id = %s"
)
_START_TURN = (
    "WITH turn AS (UPDATE roz.sessions SET turn_count = turn_count + 1,"
    " active_turn = turn_count + 1"
    " WHERE id = %(session)s AND state = 'active' AND active_turn = 0"
    " RETURNING tenant_id, id, turn_count)"
    " INSERT INTO roz.session_turns (tenant_id, session_id, index, message_id)"
    " SELECT tenant_id, id, turn_count, %(message)s FROM turn RETURNING index"
)
_TURN_MESSAGE = "SELECT message_id FROM roz.session_turns WHERE session_id = %s AND index = %s"
_END_TURN = (
    "WITH ended AS (UPDATE roz.session_turns SET state = %(state)s, stop_reason = %(stop)s,"
    " input_tokens = %(input)s, output_tokens = %(output)s, end_time = now()"
    " WHERE session_id = %(session)s AND index = %(turn)s AND state = 'running'"
    " RETURNING input_tokens, output_tokens)"
    " UPDATE roz.sessions SET active_turn = 0,"
    " input_tokens = input_tokens + coalesce((SELECT input_tokens FROM ended), 0),"
    " output_tokens = output_tokens + coalesce((SELECT output_tokens FROM ended), 0)"
    " WHERE id = %(session)s"
)
_END = (
    "UPDATE roz.sessions SET state = 'ended', end_reason = %s, end_message = %s,"
    " end_time = now(), active_turn = 0 WHERE id = %s"
)
# Since when the session's robot has been away (NULL: a stream holds it), and whether nothing
# happened in it for the idle time.
_STILL_ABANDONED = (
    "SELECT CASE WHEN l.link_id IS NULL THEN coalesce(l.seen_time, l.connect_time, s.create_time)"
    " END, s.activity_time < now() - %s FROM roz.sessions AS s"
    " LEFT JOIN roz.robot_links AS l ON l.host_id = s.host_id WHERE s.id = %s"
)
_POSITIONS = (
    "SELECT id, agent_sequence FROM roz.sessions WHERE host_id = %s AND state = 'active'"
    " ORDER BY create_time"
)
_ADVANCE_AGENT = (
    "UPDATE roz.sessions AS s SET agent_sequence = %(sequence)s"
    " WHERE s.id = %(session)s AND s.host_id = %(host)s"
    " AND s.agent_sequence = %(sequence)s - 1 RETURNING "
    + ", ".join("s." + column.strip() for column in _COLUMNS.split(","))
    + ", (SELECT t.message_id FROM roz.session_turns AS t"
    " WHERE t.session_id = s.id AND t.index = s.active_turn) AS turn_message"
)
_TO_END = "SELECT tenant_id, session_id, reason FROM roz.sessions_to_end(%s, %s, %s)"
_TURN_COLUMNS = (
    "session_id, index, message_id, state, stop_reason, input_tokens, output_tokens,"
    " start_time, end_time"
)
_TURNS = (
    "SELECT " + _TURN_COLUMNS + " FROM roz.session_turns WHERE session_id = %s AND index > %s"
    " ORDER BY index LIMIT %s"
)
MAX_TURNS_PAGE = 100


def _session(*, state: str, end_reason: str | None, **columns: Any) -> Session:
    return Session(
        state=SessionState(state),
        end_reason=EndReason(end_reason) if end_reason else None,
        **columns,
    )


def _session_and_turn(*, turn_message: str | None, **columns: Any) -> tuple[Session, str]:
    return _session(**columns), turn_message or ""


def _event(*, kind: str, origin: str, **columns: Any) -> SessionEvent:
    return SessionEvent(kind=EventKind(kind), origin=Origin(origin), **columns)


def _turn(*, state: str, **columns: Any) -> Turn:
    return Turn(state=TurnState(state), **columns)


_LISTING = Listing("roz.sessions", _COLUMNS, _session, filters=("host_id", "state"))


@dataclass(frozen=True)
class AgentAnswer:
    """The answer to an agent's update: recorded (or recorded before), or refused and why; and
    the events it appended (not those its action's moves appended through their trigger)."""

    accepted: bool
    reason: str = ""
    events: Sequence[SessionEvent] = ()


@dataclass(frozen=True)
class ToEnd:
    tenant_id: UUID
    session_id: UUID
    reason: EndReason


class SessionRepository:
    """The sessions of each tenant, as the request role sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    # -- reading -----------------------------------------------------------------------------

    async def get(self, tenant_id: UUID, session_id: str | UUID) -> Session:
        session_uuid = resource_id(session_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await _one(conn, _GET, session_uuid)

    async def list(
        self,
        tenant_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        host_id: UUID | None = None,
        state: SessionState | None = None,
    ) -> Page[Session]:
        return await _LISTING.page(
            self._pool,
            tenant_id,
            page_size=page_size,
            page_token=page_token,
            filters={"host_id": host_id, "state": state.value if state else None},
        )

    async def turns(
        self, tenant_id: UUID, session_id: str | UUID, *, after: int, limit: int
    ) -> tuple[Sequence[Turn], bool]:
        """The session's turns after index `after`, oldest first; and whether more follow."""
        session_uuid = resource_id(session_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await _one(conn, _GET, session_uuid)
            async with conn.cursor(row_factory=kwargs_row(_turn)) as cursor:
                await cursor.execute(_TURNS, (session_uuid, after, limit + 1))
                rows = await cursor.fetchall()
        return rows[:limit], len(rows) > limit

    async def events_after(
        self, tenant_id: UUID, session_id: UUID, after: int, limit: int, *, check_exists: bool
    ) -> Sequence[SessionEvent]:
        """The session's events numbered above `after`, in order; with `check_exists`, NotFound
        when there are none because the tenant has no such session."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            async with conn.cursor(row_factory=kwargs_row(_event)) as cursor:
                await cursor.execute(_EVENTS_AFTER, (session_id, after, limit))
                events = await cursor.fetchall()
            if not events and check_exists:
                await _one(conn, _GET, session_id)
        return events

    # -- what operators do ---------------------------------------------------------------------

    async def start(self, tenant_id: UUID, host_id: str | UUID, *, actor: UUID | None) -> Session:
        """A session on a host whose robot is connected and not e-stopped; its first event is
        `session_started`, sent to the robot's agent."""
        host_uuid = resource_id(host_id, "host")
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await hold_host(conn, host_uuid)
            row = await (await conn.execute(_HOST, (host_uuid,))).fetchone()
            if row is None:
                raise NotFound("host", str(host_uuid))
            environment_id, link_id = row
            if link_id is None:
                raise FailedPrecondition(
                    "the host's robot is not connected; a session needs it online",
                    reason=ROBOT_OFFLINE,
                    metadata={"host_id": str(host_uuid)},
                )
            await check_host(conn, host_uuid, "new sessions")
            created = await (
                await conn.execute(_INSERT, (host_uuid, tenant_id, environment_id, actor))
            ).fetchone()
            assert created is not None
            session_id: UUID = created[0]
            await _append(
                conn,
                session_id,
                EventKind.SESSION_STARTED,
                Origin.SERVER,
                payload={
                    "host_id": str(host_uuid),
                    "environment_id": str(environment_id),
                    "started_by": "" if actor is None else str(actor),
                },
            )
            return await _one(conn, _GET, session_id)

    async def send_message(
        self, tenant_id: UUID, session_id: str | UUID, message: UserMessage
    ) -> Sequence[SessionEvent]:
        """Starts a turn with the operator's message (refused while one runs); returns the
        recorded message, which the agent is sent, and the turn's start."""
        session_uuid = resource_id(session_id, RESOURCE)
        message = message.validate(str(uuid.uuid4()))
        async with tenant_transaction(self._pool, tenant_id) as conn:
            # Locked, checked and begun in one statement when the session may take a turn.
            row = await (
                await conn.execute(
                    _START_TURN, {"session": session_uuid, "message": message.message_id}
                )
            ).fetchone()
            if row is None:  # it may not: say why
                session = await _one(conn, _GET, session_uuid)
                session.check_can_start_turn()
                # The turn that was running ended meanwhile: as if this came a moment earlier.
                raise FailedPrecondition(
                    "a turn was running; send the message again", reason=TURN_IN_PROGRESS
                )
            turn = int(row[0])
            event = await _append(
                conn,
                session_uuid,
                EventKind.USER_MESSAGE,
                Origin.OPERATOR,
                turn=turn,
                correlation=message.message_id,
                payload={"content": message.content, "message_id": message.message_id},
            )
            started = await _append(
                conn,
                session_uuid,
                EventKind.TURN_STARTED,
                Origin.SERVER,
                turn=turn,
                correlation=message.message_id,
                payload={"message_id": message.message_id},
            )
        return [event, started]

    async def send_tool_result(
        self, tenant_id: UUID, session_id: str | UUID, result: ToolResult, result_bytes: int
    ) -> SessionEvent:
        """The operator's side ran a tool the agent asked for: the agent is sent the result."""
        session_uuid = resource_id(session_id, RESOURCE)
        result.validate(result_bytes)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            session = await _one(conn, _LOCK, session_uuid)
            session.check_active()
            asked = await (
                await conn.execute(_CALL_ASKED, (session_uuid, result.call_id))
            ).fetchone()
            if asked is None:
                raise FailedPrecondition(
                    "the agent asked for no tool call with this id in this session",
                    reason=UNKNOWN_CALL,
                    metadata={"call_id": result.call_id},
                )
            payload: dict[str, Any] = {"call_id": result.call_id, "success": result.success}
            if result.result is not None:
                payload["result"] = dict(result.result)
            return await _append(
                conn,
                session_uuid,
                EventKind.TOOL_RESULT,
                Origin.OPERATOR,
                turn=session.active_turn,
                correlation=result.call_id,
                payload=payload,
            )

    async def action_of(self, tenant_id: UUID, session_id: str | UUID, decision: Decision) -> UUID:
        """The command a decision answers: an action of this session awaiting approval
        (UNKNOWN_APPROVAL otherwise, without saying whether it exists elsewhere)."""
        session_uuid = resource_id(session_id, RESOURCE)
        decision.validate()
        async with tenant_transaction(self._pool, tenant_id) as conn:
            session = await _one(conn, _GET, session_uuid)
            session.check_active()
            try:
                command_id = UUID(decision.approval_id)
            except ValueError:
                command_id = None
            row = (
                None
                if command_id is None
                else await (
                    await conn.execute(
                        "SELECT state FROM roz.commands WHERE id = %s AND session_id = %s",
                        (command_id, session_uuid),
                    )
                ).fetchone()
            )
        if command_id is None or row is None or row[0] != CommandState.AWAITING_APPROVAL.value:
            raise FailedPrecondition(
                "no action of this session awaits this approval",
                reason=UNKNOWN_APPROVAL,
                metadata={"approval_id": decision.approval_id[:128]},
            )
        return command_id

    async def resolution(self, tenant_id: UUID, session_id: UUID, command_id: UUID) -> SessionEvent:
        """The latest `approval_resolved` event of an action (its move's trigger wrote it)."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            row = await (
                await conn.execute(
                    "SELECT session_call_id FROM roz.commands WHERE id = %s", (command_id,)
                )
            ).fetchone()
            if row is None:
                raise NotFound("command", str(command_id))
            async with conn.cursor(row_factory=kwargs_row(_event)) as cursor:
                await cursor.execute(
                    _LAST_OF_CALL, (session_id, EventKind.APPROVAL_RESOLVED.value, row[0])
                )
                event = await cursor.fetchone()
        if event is None:
            raise NotFound("approval", str(command_id))
        return event

    async def cancel_turn(
        self, tenant_id: UUID, session_id: str | UUID, *, reason: str, actor: UUID | None
    ) -> Session:
        """Asks the agent to stop the running turn, and cancels its actions not yet started."""
        session_uuid = resource_id(session_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            unstarted = await lock_unstarted_actions(conn, session_uuid)
            session = await _one(conn, _LOCK, session_uuid)
            session.check_turn_running()
            await cancel_actions(conn, unstarted, _why("the turn was cancelled", reason), actor)
            await _append(
                conn,
                session_uuid,
                EventKind.TURN_CANCEL_REQUESTED,
                Origin.OPERATOR,
                turn=session.active_turn,
                correlation=await _turn_message(conn, session),
                payload={"reason": reason},
            )
            return await _one(conn, _GET, session_uuid)

    async def end_abandoned(self, found: ToEnd, *, robot_before: datetime, idle: timedelta) -> bool:
        """The sweep's end of one session it found, if it is still abandoned now that it is
        locked (the robot may have come back, an operator may have spoken)."""
        async with tenant_transaction(self._pool, found.tenant_id) as conn:
            unstarted = await lock_unstarted_actions(conn, found.session_id)
            session = await _maybe(conn, _LOCK, found.session_id)
            if session is None or not session.active:
                return False
            row = await (await conn.execute(_STILL_ABANDONED, (idle, session.id))).fetchone()
            assert row is not None
            robot_since, idle_now = row
            if found.reason is EndReason.ROBOT_GONE:
                if robot_since is None or robot_since >= robot_before:
                    return False
            elif not idle_now:
                return False
            await _end(conn, session, found.reason, "", None, unstarted)
        return True

    async def end(
        self,
        tenant_id: UUID,
        session_id: str | UUID,
        end_reason: EndReason,
        *,
        message: str = "",
        actor: UUID | None,
    ) -> Session:
        """Ends the session (an ended one is returned as it is): its running turn is
        interrupted, its actions not yet started are cancelled, and `session_completed` is the
        last event, sent to the agent too."""
        session_uuid = resource_id(session_id, RESOURCE)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            unstarted = await lock_unstarted_actions(conn, session_uuid)
            session = await _one(conn, _LOCK, session_uuid)
            if session.active:
                await _end(conn, session, end_reason, message, actor, unstarted)
            return await _one(conn, _GET, session_uuid)

    # -- what the robot's agent does ------------------------------------------------------------

    async def record_agent_update(
        self, tenant_id: UUID, host_id: UUID, update: AgentUpdate, *, actor: UUID | None
    ) -> AgentAnswer:
        """Records an update of the robot's agent once, in its order. A repeat is answered
        again; an update out of order, of another host's session, of an ended session or out
        of turn is refused and changes nothing but the count of updates answered."""
        async with tenant_transaction(self._pool, tenant_id) as conn:
            if isinstance(update.event, (Proposal, AgentEnd)):
                # Before the session: these lock the host or the session's commands, which an
                # engage locks before it reaches the session (through its moves' triggers).
                await hold_host(conn, host_id)
            # The common case in one statement: the next update, locked and counted.
            async with conn.cursor(row_factory=kwargs_row(_session_and_turn)) as cursor:
                await cursor.execute(
                    _ADVANCE_AGENT,
                    {"sequence": update.sequence, "session": update.session_id, "host": host_id},
                )
                advanced = await cursor.fetchone()
            if advanced is None:
                return await _unrecorded(conn, update, host_id)
            session, correlation = advanced
            try:
                check_agent_event(session, update.event)
            except InvalidArgument as exc:
                return AgentAnswer(False, exc.explained())
            except DomainError as exc:
                return AgentAnswer(False, exc.message)
            events = await _apply(conn, tenant_id, session, update.event, actor, correlation)
        return AgentAnswer(True, events=events)

    # -- the sweep -------------------------------------------------------------------------------

    async def to_end(
        self, *, robot_before: datetime, idle: timedelta, limit: int
    ) -> Sequence[ToEnd]:
        """Across tenants: active sessions whose robot stayed away or that went idle."""
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_TO_END, (robot_before, idle, limit))).fetchall()
        return [ToEnd(row[0], row[1], EndReason(row[2])) for row in rows]


async def session_events_by_id(
    conn: AsyncConnection[TupleRow], event_ids: Sequence[UUID]
) -> dict[UUID, SessionEvent]:
    """In the caller's tenant transaction: the events with these ids, by id."""
    async with conn.cursor(row_factory=kwargs_row(_event)) as cursor:
        await cursor.execute(_EVENTS_BY_ID, (list(event_ids),))
        return {event.id: event for event in await cursor.fetchall()}


async def session_positions(
    conn: AsyncConnection[TupleRow], host_id: UUID
) -> list[tuple[UUID, int]]:
    """In the caller's tenant transaction: each active session of the host, with the last update
    of its agent recorded."""
    rows = await (await conn.execute(_POSITIONS, (host_id,))).fetchall()
    return [(row[0], int(row[1])) for row in rows]


async def _apply(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    session: Session,
    event: AgentEvent,
    actor: UUID | None,
    correlation: str,
) -> list[SessionEvent]:
    """Records the agent's event; returns the events appended (not those of its action's
    moves, which their trigger appends)."""
    turn = session.active_turn
    if isinstance(event, AgentEnd):
        unstarted = await lock_unstarted_actions(conn, session.id)
        return [await _end(conn, session, EndReason.AGENT_ENDED, event.message, actor, unstarted)]
    if isinstance(event, TextDelta):
        return [
            await _append(
                conn,
                session.id,
                EventKind.TEXT_DELTA,
                Origin.AGENT,
                turn=turn,
                correlation=correlation,
                payload={"text": event.text},
            )
        ]
    if isinstance(event, ToolCall):
        return [
            await _append(
                conn,
                session.id,
                EventKind.TOOL_CALL_REQUESTED,
                Origin.AGENT,
                turn=turn,
                correlation=event.call_id,
                payload={
                    "call_id": event.call_id,
                    "tool_name": event.tool_name,
                    "parameters": dict(event.parameters),
                },
            )
        ]
    if isinstance(event, Proposal):
        refused = await _propose(conn, tenant_id, session, event, actor)
        return [] if refused is None else [refused]
    assert isinstance(event, TurnFinish)
    await conn.execute(
        _END_TURN,
        {
            "state": (
                TurnState.CANCELLED if event.stop_reason == "cancelled" else TurnState.FINISHED
            ).value,
            "stop": event.stop_reason,
            "input": event.input_tokens,
            "output": event.output_tokens,
            "session": session.id,
            "turn": turn,
        },
    )
    return [
        await _append(
            conn,
            session.id,
            EventKind.TURN_FINISHED,
            Origin.AGENT,
            turn=turn,
            correlation=correlation,
            payload={
                "stop_reason": event.stop_reason,
                "input_tokens": str(event.input_tokens),
                "output_tokens": str(event.output_tokens),
            },
        )
    ]


async def _unrecorded(
    conn: AsyncConnection[TupleRow], update: AgentUpdate, host_id: UUID
) -> AgentAnswer:
    """The answer to an update that was not the session's next: a repeat, early, or not this
    host's session at all."""
    found = await _maybe(conn, _GET, update.session_id)
    if found is None or found.host_id != host_id:
        return AgentAnswer(False, "no such session on this host")
    if arrival(update.sequence, found.agent_sequence) is Arrival.REPEAT:
        return AgentAnswer(True, "recorded before")
    return AgentAnswer(False, f"out of order: expected sequence {found.agent_sequence + 1}")


async def _propose(
    conn: AsyncConnection[TupleRow],
    tenant_id: UUID,
    session: Session,
    proposal: Proposal,
    actor: UUID | None,
) -> SessionEvent | None:
    """The agent's action becomes a command through CreateCommand's path; a refusal becomes an
    `action_refused` event (returned), which the agent is sent."""
    draft = CommandDraft(
        host_id=session.host_id,
        type=proposal.type,
        params=proposal.params,
        timeout=proposal.timeout,
    )
    action = SessionAction(session.id, proposal.call_id, session.active_turn)
    refusal: DomainError
    await conn.execute("SAVEPOINT proposal")
    try:
        with database_errors("command", COMMAND_CONSTRAINTS):
            await insert_command(
                conn, tenant_id, draft.validate("action_proposed"), actor, action=action
            )
    except pg.UniqueViolation as exc:
        if exc.diag.constraint_name != CALL_CONSTRAINT:
            raise
        refusal = FailedPrecondition(
            "the call id was used before in this session", reason=CALL_ID_TAKEN
        )
    except DomainError as exc:
        refusal = exc
    else:
        await conn.execute("RELEASE SAVEPOINT proposal")
        return None
    await conn.execute("ROLLBACK TO SAVEPOINT proposal")
    return await _refuse(conn, session, proposal, refusal)


async def _refuse(
    conn: AsyncConnection[TupleRow], session: Session, proposal: Proposal, error: DomainError
) -> SessionEvent:
    return await _append(
        conn,
        session.id,
        EventKind.ACTION_REFUSED,
        Origin.SERVER,
        turn=session.active_turn,
        correlation=proposal.call_id,
        payload={
            "call_id": proposal.call_id,
            "code": _code(error),
            "message": error.message,
            "violations": _violations(error),
        },
    )


def _code(error: DomainError) -> str:
    """A refusal's code: its reason; for the safety check's (one cause per broken
    constraint) SAFETY_VIOLATION; else the error's kind (INVALID_ARGUMENT, NOT_FOUND, …)."""
    reason = getattr(error, "reason", "")
    if reason:
        return str(reason)
    if isinstance(error, FailedPrecondition) and error.causes:
        return SAFETY_VIOLATION
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).upper()


def _violations(error: DomainError) -> list[dict[str, Any]]:
    if isinstance(error, InvalidArgument):
        return [{"field": v.field, "description": v.description} for v in error.violations]
    causes = getattr(error, "causes", ())
    return [{"reason": c.reason, "metadata": dict(c.metadata)} for c in causes]


async def _end(
    conn: AsyncConnection[TupleRow],
    session: Session,
    reason: EndReason,
    message: str,
    actor: UUID | None,
    unstarted: list[tuple[UUID, UUID, CommandState]],
) -> SessionEvent:
    message = message or END_MESSAGES[reason]
    await cancel_actions(conn, unstarted, _why("the session ended", message), actor)
    if session.active_turn:
        await conn.execute(
            "UPDATE roz.session_turns SET state = 'interrupted', end_time = now()"
            " WHERE session_id = %s AND index = %s AND state = 'running'",
            (session.id, session.active_turn),
        )
    await conn.execute(_END, (reason.value, message[:1024], session.id))
    return await _append(
        conn,
        session.id,
        EventKind.SESSION_COMPLETED,
        Origin.SERVER,
        payload={
            "reason": reason.value,
            "message": message[:1024],
            "input_tokens": str(session.input_tokens),
            "output_tokens": str(session.output_tokens),
            "turn_count": session.turn_count,
        },
    )


async def _append(
    conn: AsyncConnection[TupleRow],
    session_id: UUID,
    kind: EventKind,
    origin: Origin,
    *,
    turn: int = 0,
    correlation: str = "",
    payload: Mapping[str, Any],
) -> SessionEvent:
    row = await (
        await conn.execute(
            _APPEND,
            (
                session_id,
                kind.value,
                origin.value,
                turn,
                correlation,
                Jsonb(dict(payload)),
                kind in AGENT_BOUND,
            ),
        )
    ).fetchone()
    assert row is not None
    return SessionEvent(
        id=row[0],
        session_id=session_id,
        sequence=int(row[1]),
        kind=kind,
        origin=origin,
        turn=turn,
        correlation_id=correlation,
        payload=payload,
        create_time=row[2],
    )


async def _turn_message(conn: AsyncConnection[TupleRow], session: Session) -> str:
    if not session.active_turn:
        return ""
    row = await (await conn.execute(_TURN_MESSAGE, (session.id, session.active_turn))).fetchone()
    return "" if row is None else str(row[0])


async def _maybe(conn: AsyncConnection[TupleRow], query: str, session_id: UUID) -> Session | None:
    async with conn.cursor(row_factory=kwargs_row(_session)) as cursor:
        await cursor.execute(query, (session_id,))
        return await cursor.fetchone()


async def _one(conn: AsyncConnection[TupleRow], query: str, session_id: UUID) -> Session:
    found = await _maybe(conn, query, session_id)
    if found is None:
        raise NotFound(RESOURCE, str(session_id))
    return found


def _why(what: str, reason: str) -> str:
    return f"{what}: {reason}" if reason else what
