"""Agent sessions: what operators do in them, what the robot's agent says, the streams that show
their events, and the end of sessions nobody is left in.

Every change goes through the session repository, which appends its events to the session's
log (and the agent's share to its robot's delivery log) in the change's transaction. Readers of
a session's events are woken by `NOTIFY roz_session_events` (payload: the session), which any
process may have sent, or at once when this process made the change; each reader then reads the
log after its place, so a lost wake-up costs at most RECHECK_SECONDS and nothing is missed or
repeated. An action the operator approves is a command: its approval is CommandRepository's
transition, with the same rules and the same record as TransitionCommand.

Time comes in: `clock` is the wall clock of the sweep's "robot gone" measure, the clock the robot
link stamps presence with; "idle" is measured on the database's clock, which stamps events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from server.domain.commands import CommandState
from server.domain.errors import PermissionDenied
from server.domain.scopes import grants
from server.domain.sessions import (
    AgentUpdate,
    Decision,
    EndReason,
    EventKind,
    Session,
    SessionEvent,
    ToolResult,
    UserMessage,
)
from server.storage.commands import CommandRepository
from server.storage.sessions import AgentAnswer, SessionRepository

log = logging.getLogger(__name__)

# Events read per round trip, and kept per session for its readers in this process.
PAGE = 200
FEED = 256
# How often a waiting reader looks for itself, in case a notification was lost.
RECHECK_SECONDS = 5.0
# A stream quiet this long sends a checkpoint, so that proxies keep it open.
CHECKPOINT_SECONDS = 15.0
# Sessions the sweep ends per round.
SWEEP_BATCH = 100
APPROVE_SCOPE = "commands:write"


class _Feed:
    """A session's latest events as this process knows them, for its readers here: the ring of
    the latest FEED events (recorded here, or read from the log by a reader), and the highest
    sequence a notification said the log holds."""

    def __init__(self) -> None:
        self.readers: set[asyncio.Event] = set()
        self.ring: dict[int, SessionEvent] = {}
        self.known = 0
        self.last = 0

    def keep(self, events: Sequence[SessionEvent]) -> None:
        for event in events:
            self.ring[event.sequence] = event
            self.known = max(self.known, event.sequence)
            self.last = max(self.last, event.sequence)
        while len(self.ring) > FEED:
            del self.ring[min(self.ring)]

    def after(self, sequence: int) -> list[SessionEvent]:
        """The events the ring holds right after `sequence`, without a gap."""
        found: list[SessionEvent] = []
        while (event := self.ring.get(sequence + 1)) is not None:
            found.append(event)
            sequence += 1
        return found

    def wake(self) -> None:
        for reader in self.readers:
            reader.set()


@dataclass(frozen=True)
class Checkpoint:
    """Nothing new: the reader is up to date through `sequence`."""

    session_id: UUID
    sequence: int


class Sessions:
    """The sessions service of one process."""

    def __init__(
        self,
        sessions: Callable[[], SessionRepository],
        commands: Callable[[], CommandRepository],
        *,
        clock: Callable[[], datetime],
        robot_grace: timedelta,
        idle_timeout: timedelta,
    ) -> None:
        self._sessions = sessions
        self._commands = commands
        self._clock = clock
        self._robot_grace = robot_grace
        self._idle_timeout = idle_timeout
        # The feed of each session someone here reads.
        self._feeds: dict[UUID, _Feed] = {}

    # -- wake-ups -----------------------------------------------------------------------------

    def on_event(self, payload: str) -> None:
        """NOTIFY roz_session_events, '<session>:<sequence>': the session's log holds that
        event (recorded here or in another process)."""
        session, _, sequence = payload.partition(":")
        try:
            feed = self._feeds.get(UUID(session))
            number = int(sequence)
        except ValueError:
            return
        if feed is not None:
            feed.known = max(feed.known, number)
            feed.wake()

    def on_reconnect(self) -> None:
        """The listener was away: every reader reads the log."""
        for feed in self._feeds.values():
            feed.known = max(feed.known, feed.last + 1)  # more than it holds, so it reads
            feed.wake()

    def _publish(self, session_id: UUID, events: Sequence[SessionEvent]) -> None:
        """Events this process just committed, to the session's readers here."""
        feed = self._feeds.get(session_id)
        if feed is not None:
            feed.keep(events)
            feed.wake()

    # -- what operators do ---------------------------------------------------------------------

    async def start(self, tenant_id: UUID, host_id: str, actor: UUID | None) -> Session:
        session = await self._sessions().start(tenant_id, host_id, actor=actor)
        log.info("session %s started on host %s", session.id, session.host_id)
        return session

    async def send_message(
        self, tenant_id: UUID, session_id: str | UUID, message: UserMessage
    ) -> SessionEvent:
        events = await self._sessions().send_message(tenant_id, session_id, message)
        self._publish(events[0].session_id, events)
        return events[0]

    async def send_tool_result(
        self, tenant_id: UUID, session_id: str | UUID, result: ToolResult, result_bytes: int
    ) -> SessionEvent:
        event = await self._sessions().send_tool_result(tenant_id, session_id, result, result_bytes)
        self._publish(event.session_id, [event])
        return event

    async def decide(
        self,
        tenant_id: UUID,
        session_id: str | UUID,
        decision: Decision,
        *,
        actor: UUID | None,
        scopes: frozenset[str],
    ) -> SessionEvent:
        """Approves or denies an action: its command moves as TransitionCommand would move it
        (PENDING or REJECTED), by the caller, who must be allowed to approve commands."""
        if not grants(scopes, APPROVE_SCOPE):
            raise PermissionDenied(
                f"approving an action needs the scope {APPROVE_SCOPE}", required_scope=APPROVE_SCOPE
            )
        repository = self._sessions()
        command_id = await repository.action_of(tenant_id, session_id, decision)
        target = CommandState.PENDING if decision.approved else CommandState.REJECTED
        await self._commands().transition(
            tenant_id, command_id, target, reason=decision.reason, actor=actor
        )
        return await repository.resolution(tenant_id, UUID(str(session_id)), command_id)

    async def cancel_turn(
        self, tenant_id: UUID, session_id: str | UUID, reason: str, actor: UUID | None
    ) -> Session:
        return await self._sessions().cancel_turn(tenant_id, session_id, reason=reason, actor=actor)

    async def end(
        self,
        tenant_id: UUID,
        session_id: str | UUID,
        reason: EndReason,
        message: str,
        actor: UUID | None,
    ) -> Session:
        session = await self._sessions().end(
            tenant_id, session_id, reason, message=message, actor=actor
        )
        log.info("session %s ended (%s)", session.id, session.end_reason)
        return session

    async def get(self, tenant_id: UUID, session_id: str | UUID) -> Session:
        return await self._sessions().get(tenant_id, session_id)

    # -- what the robot's agent says ------------------------------------------------------------

    async def record_agent_update(
        self, tenant_id: UUID, host_id: UUID, update: AgentUpdate, actor: UUID | None
    ) -> AgentAnswer:
        answer = await self._sessions().record_agent_update(tenant_id, host_id, update, actor=actor)
        self._publish(update.session_id, answer.events)
        return answer

    # -- reading ---------------------------------------------------------------------------------

    async def events(
        self, tenant_id: UUID, session_id: UUID, after: int
    ) -> AsyncIterator[SessionEvent | Checkpoint]:
        """The session's events after `after`, then each as it is recorded, until the
        `session_completed` event; a checkpoint after CHECKPOINT_SECONDS of quiet. NotFound
        (before anything is sent) for a session the tenant does not have.

        The first read is always the log's, under the tenant's row-level security; after it,
        events this process recorded come from the session's feed, and the log is read only
        when a notification names an event the feed does not hold (or at the recheck)."""
        repository = self._sessions()
        feed = self._feeds.get(session_id)
        if feed is None:
            feed = self._feeds[session_id] = _Feed()
        reader = asyncio.Event()
        feed.readers.add(reader)
        try:
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            read_log, first = True, True
            while True:
                reader.clear()
                if not read_log and feed.known > after and not feed.after(after):
                    # Woken by a notification of an event recorded here whose commit has not
                    # been handed over yet: let the committer go first, sparing a read.
                    await asyncio.sleep(0)
                if read_log or (feed.known > after and not feed.after(after)):
                    events = await repository.events_after(
                        tenant_id, session_id, after, PAGE, check_exists=first
                    )
                    first = False
                    feed.keep(events)
                    read_log = len(events) == PAGE
                else:
                    events = feed.after(after)
                for event in events:
                    yield event
                    after = event.sequence
                    if event.kind is EventKind.SESSION_COMPLETED:
                        return
                if read_log or feed.after(after) or feed.known > after:
                    continue
                now = loop.time()
                if events:
                    quiet_since = now
                elif now - quiet_since >= CHECKPOINT_SECONDS:
                    yield Checkpoint(session_id, after)
                    quiet_since = now
                wait = min(RECHECK_SECONDS, CHECKPOINT_SECONDS - (now - quiet_since))
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        await reader.wait()
                except TimeoutError:
                    read_log = True  # the recheck: a notification may have been lost
        finally:
            feed.readers.discard(reader)
            if not feed.readers and self._feeds.get(session_id) is feed:
                del self._feeds[session_id]

    # -- the sweep -------------------------------------------------------------------------------

    async def end_abandoned(self) -> int:
        """Ends the sessions whose robot stayed away past the grace period (ROBOT_GONE) or in
        which nothing happened for the idle timeout (IDLE); how many ended."""
        now = self._clock()
        repository = self._sessions()
        ended = 0
        robot_before = now - self._robot_grace
        for found in await repository.to_end(
            robot_before=robot_before, idle=self._idle_timeout, limit=SWEEP_BATCH
        ):
            if await repository.end_abandoned(
                found, robot_before=robot_before, idle=self._idle_timeout
            ):
                ended += 1
                log.info("session %s ended (%s)", found.session_id, found.reason.value)
        return ended
