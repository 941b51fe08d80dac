"""The robot's agent in sessions: what an agent plugs into the client (`Agent`), the session it
speaks through (`AgentSession`), and the sessions' side of the link (`AgentSessions`): events
handed to the agent in order, updates numbered, kept until answered and sent again after a
reconnect.

Each session's events go to the agent one at a time, in order, on a task of the session's own,
so that an agent that takes its time (waiting for an action's outcome) holds up neither the
link's reader nor other sessions. The outcome of an action reaches whoever waits for it as soon
as it is delivered, not when the session's queue gets to it: an agent waiting for an outcome in
its handler would otherwise wait for itself.

Nothing here outlives the process: a robot that restarts knows its sessions only from the
events delivered after it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from roz.v1 import robot_link_pb2, sessions_pb2

from roz_robot import messages
from roz_robot.outbox import Outbox

log = logging.getLogger(__name__)

# Updates of one session sent and not yet answered; an agent that says more waits for answers
# (while the robot is offline, until it is back).
UNANSWERED_LIMIT = 1000
# Sessions that ended here lately: their events, delivered again, do not open them again.
RECENT_ENDED = 1000
# How the server refuses an update that came out of order: it names the sequence it expects
# next ("out of order: expected sequence 4").
OUT_OF_ORDER = re.compile(r"out of order\b.*?\bexpected(?: sequence)? (\d+)", re.I | re.S)
# The events that settle a proposed action.
OUTCOMES = frozenset({"action_refused", "action_finished"})
CLIENT_STOPPED = "the robot client stopped"


class SessionEnded(Exception):
    """The session is over (or this robot's client stopped): nothing more can be said in it and
    no outcome will come."""


class UpdateRefused(Exception):
    """The server refused a proposed action's update and recorded nothing (the reason says
    why): no outcome will come."""


class Agent(Protocol):
    """What runs on the robot and talks to operators. Called once per event of each session,
    one call at a time per session, in the session's order; a call may take as long as it
    needs, and may wait for the outcome of an action it proposed."""

    async def on_session_event(self, session: AgentSession, event: Any) -> None:
        """`event` is a roz.v1.SessionEvent of `session`."""


class AgentSession:
    """One session as its agent sees it: what the agent can say in it, and what it has heard.

    The sends return once the update is queued for the link, not when the server has it: it is
    kept until the server answers and sent again after a reconnect. They raise SessionEnded once
    the session is over.
    """

    def __init__(self, session_id: str, host_id: str, sessions: AgentSessions) -> None:
        self.id = session_id
        self.host_id = host_id
        # The latest turn an event of the session named (0: none yet).
        self.turn = 0
        self._sessions = sessions
        self._ended = ""  # why, once the session is over
        self._cancel = asyncio.Event()
        self._outcomes: dict[str, asyncio.Future[Any]] = {}
        # Outgoing: numbered from 1, kept until answered, oldest first.
        self._next_sequence = 1
        self._unanswered: dict[int, Any] = {}
        self._room = asyncio.Event()
        self._room.set()
        # Incoming, for the agent. Not bounded: the link's reader never waits for an agent,
        # and a session's events come at an operator's pace.
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._last_event = 0

    @property
    def ended(self) -> bool:
        return bool(self._ended)

    @property
    def cancel_requested(self) -> bool:
        """Whether the operator asked to stop the running turn (until a later turn begins)."""
        return self._cancel.is_set()

    async def wait_cancel_requested(self) -> None:
        """Returns once the operator asks to stop the running turn."""
        await self._cancel.wait()

    async def say(self, text: str) -> None:
        """Streams text to the operator."""
        await self._sessions.send(self, text_delta=sessions_pb2.TextDelta(text=text))

    async def request_tool(
        self, tool_name: str, parameters: Mapping[str, Any], call_id: str | None = None
    ) -> str:
        """Asks the operator's side to run a tool; its `tool_result` event carries the call id
        returned here."""
        call_id = call_id or _new_call_id()
        request = sessions_pb2.ToolCallRequested(
            call_id=call_id, tool_name=tool_name, parameters=messages.to_struct(parameters)
        )
        await self._sessions.send(self, tool_call_requested=request)
        return call_id

    async def propose(
        self,
        type: str,
        params: Mapping[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109  (the action's, sent with it)
        call_id: str | None = None,
    ) -> str:
        """Proposes a physical action (a command `type` with `params`, `timeout` seconds to
        run); returns its call id, for `wait_outcome`."""
        call_id = call_id or _new_call_id()
        action = sessions_pb2.ProposedAction(
            call_id=call_id, type=type, params=messages.to_struct(params)
        )
        if timeout is not None:
            action.timeout.CopyFrom(messages.duration(timeout))
        # Expected from now on: the outcome may come before anyone waits for it.
        self._outcome(call_id)
        await self._sessions.send(self, action_proposed=action)
        return call_id

    async def wait_outcome(
        self,
        call_id: str,
        # As asyncio.timeout would: giving up leaves the outcome for a later wait.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """The event that settles the action `call_id`: `action_refused` or `action_finished`.

        TimeoutError after `timeout` seconds (the action goes on; wait again to hear how it
        ends), SessionEnded when the session ends first, UpdateRefused when the server refused
        the proposal itself.
        """
        outcome = self._outcome(call_id)
        done, _ = await asyncio.wait({outcome}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no outcome of action {call_id} within {timeout} s")
        return outcome.result()

    async def finish_turn(
        self, stop_reason: str = "end_turn", input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """Ends the running turn, with what it cost."""
        finished = sessions_pb2.TurnFinished(
            stop_reason=stop_reason, input_tokens=input_tokens, output_tokens=output_tokens
        )
        await self._sessions.send(self, turn_finished=finished)

    async def end(self, message: str = "") -> None:
        """Ends the session (AGENT_ENDED); its `session_completed` event follows."""
        await self._sessions.send(self, session_ended=robot_link_pb2.AgentEnd(message=message))

    # -- for AgentSessions --------------------------------------------------------------------

    def _outcome(self, call_id: str) -> asyncio.Future[Any]:
        outcome = self._outcomes.get(call_id)
        if outcome is None:
            outcome = self._outcomes[call_id] = asyncio.get_running_loop().create_future()
            if self._ended:
                _fail(outcome, SessionEnded(self._ended))
        return outcome

    def _heard(self, event: Any) -> None:
        """What an event changes at once, before the agent's queue gets to it."""
        if event.turn > self.turn:
            self.turn = event.turn
            self._cancel.clear()  # a request to cancel is about the turn it named
        which = event.WhichOneof("event")
        if which == "turn_cancel_requested":
            self._cancel.set()
        elif which in OUTCOMES:
            outcome = self._outcome(getattr(event, which).call_id)
            if not outcome.done():
                outcome.set_result(event)

    def _end(self, reason: str) -> None:
        self._ended = reason
        self._unanswered.clear()
        self._room.set()
        for outcome in self._outcomes.values():
            if not outcome.done():
                _fail(outcome, SessionEnded(reason))


class AgentSessions:
    """The sessions of a robot's agent, as the client holds them: it hands over delivered
    events, answers acks with it, and gives it each new link's outbox."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._sessions: dict[str, AgentSession] = {}
        self._recently_ended: deque[str] = deque(maxlen=RECENT_ENDED)
        self._workers: set[asyncio.Task[None]] = set()
        # The current link's outbox; a closed one (the link is gone) drops what is put in it.
        self._outbox: Outbox | None = None
        # Held while numbering and sending, so that every session's updates go out in order,
        # and a new link's resends go before anything new.
        self._sending = asyncio.Lock()
        # Per session, where this link last resent from after an out-of-order refusal: updates
        # sent before that resend are refused again on the way, and need no second one.
        self._resent_from: dict[str, int] = {}

    def receive(self, event: Any, host_id: str) -> None:
        """Hands a delivered event to its session (opened at its first event); never waits."""
        session_id = event.session_id
        if session_id in self._recently_ended:
            log.debug("session %s: event %d after its end; ignored", session_id, event.sequence)
            return
        session = self._sessions.get(session_id)
        if session is None:
            if event.HasField("session_started"):
                host_id = event.session_started.host_id or host_id
            session = self._open(session_id, host_id)
        if event.sequence:
            if event.sequence <= session._last_event:
                log.debug("session %s: event %d again; ignored", session_id, event.sequence)
                return
            session._last_event = event.sequence
        session._heard(event)
        session._events.put_nowait(event)
        if event.HasField("session_completed"):
            completed = event.session_completed
            log.info(
                "session %s: completed (%s)%s",
                session_id,
                completed.reason,
                f": {completed.message}" if completed.message else "",
            )
            del self._sessions[session_id]
            self._recently_ended.append(session_id)
            self._resent_from.pop(session_id, None)
            session._end(f"session {session_id} ended ({completed.reason or 'no reason given'})")

    def _open(self, session_id: str, host_id: str) -> AgentSession:
        session = self._sessions[session_id] = AgentSession(session_id, host_id, self)
        worker = asyncio.create_task(self._serve(session))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)
        return session

    async def send(self, session: AgentSession, **event: Any) -> None:
        """Numbers an update of `session`, keeps it until answered, and sends it if linked."""
        while len(session._unanswered) >= UNANSWERED_LIMIT and not session.ended:
            session._room.clear()
            await session._room.wait()
        async with self._sending:
            if session.ended:
                raise SessionEnded(session._ended)
            sequence = session._next_sequence
            session._next_sequence += 1
            update = messages.session_update(session.id, sequence, **event)
            session._unanswered[sequence] = update
            if self._outbox is not None:
                await self._outbox.put(update)

    async def relink(self, outbox: Outbox, positions: Any = (), host_id: str = "") -> None:
        """A new link: every unanswered update goes out again, in order, before anything new.

        `positions` (the welcome's) say, for each active session of the host, the last update
        the server has recorded: those are answered, and a session this client does not know
        (it restarted) is opened to number its next update after it."""
        async with self._sending:
            self._outbox = outbox
            self._resent_from.clear()
            for position in positions:
                session = self._sessions.get(position.session_id)
                if session is None:
                    if position.session_id in self._recently_ended:
                        continue
                    session = self._open(position.session_id, host_id)
                _answered(session, through=position.recorded_through)
                session._next_sequence = max(session._next_sequence, position.recorded_through + 1)
            for session in list(self._sessions.values()):
                for update in list(session._unanswered.values()):
                    await outbox.put(update)

    async def on_ack(self, ack: Any) -> None:
        """The server's answer to the updates of a session up to `ack.sequence`."""
        session = self._sessions.get(ack.session_id)
        if session is None:
            log.debug(
                "session %s: an answer to update %d; no such session", ack.session_id, ack.sequence
            )
            return
        out_of_order = None if ack.accepted else OUT_OF_ORDER.search(ack.reason)
        if out_of_order is not None:
            await self._resend_from(session, int(out_of_order.group(1)), ack)
            return
        refused = session._unanswered.get(ack.sequence)
        if not ack.accepted:
            log.warning(
                "session %s: update %d refused: %s",
                session.id,
                ack.sequence,
                ack.reason or "no reason given",
            )
            if refused is not None and refused.session_update.HasField("action_proposed"):
                outcome = session._outcome(refused.session_update.action_proposed.call_id)
                if not outcome.done():
                    _fail(outcome, UpdateRefused(ack.reason or "the server refused it"))
        _answered(session, through=ack.sequence)

    async def _resend_from(self, session: AgentSession, expected: int, ack: Any) -> None:
        log.warning(
            "session %s: update %d refused: %s; sending again from %d",
            session.id,
            ack.sequence,
            ack.reason,
            expected,
        )
        # The server has every update before the one it expects.
        _answered(session, through=expected - 1)
        async with self._sending:
            if expected <= self._resent_from.get(session.id, 0) or self._outbox is None:
                return
            self._resent_from[session.id] = expected
            for update in list(session._unanswered.values()):
                await self._outbox.put(update)

    async def close(self) -> None:
        """The client stops: the agent's handlers are cancelled and its waits fail."""
        for session in self._sessions.values():
            session._end(CLIENT_STOPPED)
        self._sessions.clear()
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _serve(self, session: AgentSession) -> None:
        """Hands the session's events to the agent, one at a time, until its last."""
        while True:
            event = await session._events.get()
            which = event.WhichOneof("event")
            try:
                await self._agent.on_session_event(session, event)
            except SessionEnded as exc:
                log.info("session %s: the agent stopped: %s", session.id, exc)
            except Exception:
                log.exception("session %s: the agent failed on a %s event", session.id, which)
            if which == "session_completed":
                return


def _answered(session: AgentSession, *, through: int) -> None:
    for sequence in [s for s in session._unanswered if s <= through]:
        del session._unanswered[sequence]
    if len(session._unanswered) < UNANSWERED_LIMIT:
        session._room.set()


def _fail(outcome: asyncio.Future[Any], error: Exception) -> None:
    outcome.set_exception(error)
    # Marked as seen: nobody may be waiting for this outcome, and that is no error.
    outcome.exception()


def _new_call_id() -> str:
    return str(uuid.uuid4())
