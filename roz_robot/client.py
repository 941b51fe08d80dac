"""The robot's end of the robot link: one stream to the control plane held open for as long as
the robot runs, every delivery recorded and acknowledged, each command and task run once in
effect, and every report kept until the server has answered it.

E-stops come first. The welcome carries the host's e-stop, and the server sends every change of
it ahead of anything else; while it is engaged the client runs nothing: what ran is stopped at
once (the hook, then each item recorded as the server ended it: commands FAILED, tasks
SAFETY_STOPPED), and each state is acknowledged. `raise_estop()` is the robot's own button.

A robot may run an agent (`roz_robot.agent`): the events of its host's sessions come as
deliveries like any other, and what the agent says goes out as numbered session updates, kept
until the server answers them and sent again on the next link.

A link goes through hello → welcome → deliveries, reports, heartbeats and telemetry → an end
(the stream closes, the server drains, the link goes quiet, the connection breaks), then the
client waits (backoff with full jitter, or what a drain asks) and opens the next one. What must
outlive a link lives on the client: the reports not yet answered, the latest telemetry, the
handlers running. What must outlive the process lives in the record (`roz_robot.record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from roz.v1 import robot_link_pb2_grpc

from roz_robot import __version__, messages
from roz_robot.agent import Agent, AgentSessions
from roz_robot.backoff import Backoff
from roz_robot.endpoint import auth_metadata, parse_server
from roz_robot.messages import EOF, SUCCESS_STATE, TERMINAL_STATES, seconds, state_name
from roz_robot.outbox import Outbox
from roz_robot.record import KEEP_SECONDS, ItemKind, ItemRecord, Record
from roz_robot.work import (
    CommandHandler,
    Outcome,
    Progress,
    StopHook,
    TaskHandler,
    call_stop_hook,
)

log = logging.getLogger(__name__)

DEFAULT_CLIENT_NAME = f"roz-robot/{__version__}"
# How many of the latest executed ids the stats keep.
RECENT_IDS = 1000
# How long the server may take to answer a hello before the attempt counts as failed.
WELCOME_TIMEOUT_SECONDS = 30.0
# Used only when a welcome leaves a term unset (a zero duration).
DEFAULT_HEARTBEAT_SECONDS = 10.0
DEFAULT_PRESENCE_SECONDS = 30.0
# On stop(), how long the last reports (the interrupted items) may take to be answered.
STOP_FLUSH_SECONDS = 2.0
# Refusals that no retry can fix: a wrong or revoked key, a key of another host, a bad hello.
REFUSED_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)
INTERRUPTED_BY_RESTART = "interrupted: the robot stopped before it finished"
INTERRUPTED_BY_STOP = "interrupted: the robot client stopped"


class LinkRefused(Exception):
    """The server refused the link in a way that retrying cannot fix (a wrong or revoked key, a
    key bound to another host); `RobotClient.run()` raises it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class EstopState:
    """The host's e-stop as the server last said it."""

    stopped: bool
    host_epoch: int
    environment_epoch: int
    reason: str


@dataclass(frozen=True)
class LinkTerms:
    """What the server's welcome said about the current link."""

    host_id: str
    link_id: str
    heartbeat_interval: float
    presence_window: float
    resume_after_sequence: int


@dataclass
class LinkStats:
    """What the client has done so far, for tests, benchmarks and the simulator's summary."""

    # Welcomes received: links that came up.
    links: int = 0
    deliveries: int = 0
    # Commands and tasks whose handler this client started, and the ids of the latest of them.
    executed: int = 0
    executed_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    # Delivered again while running here: ignored.
    duplicates_ignored: int = 0
    # Delivered again after finishing: answered from the record, not run.
    resent_from_record: int = 0
    # Running items stopped by a cancellation (or by the server ending them).
    cancelled: int = 0
    # Calls of the stop hook (cancellations, the deadman, stopping).
    stops: int = 0


# Signals in an outbox, each queued at most once: "send the latest telemetry / ack now".
_TELEMETRY = object()
_ACK = object()


@dataclass(frozen=True)
class _Report:
    kind: ItemKind
    item_id: str
    state: str
    terminal: bool
    message: Any  # the ConnectRequest that carries it


class _Ending(enum.Enum):
    STREAM_ENDED = "the server ended the stream"
    FAILED = "the stream failed"
    TAKEN_OVER = "another stream took over this host's link"
    DRAINED = "the server is draining"
    QUIET = "nothing arrived from the server within the presence window"
    HOST_LEARNED = "the welcome named another host than the hello assumed"
    NO_WELCOME = "the server did not answer the hello with a welcome"


@dataclass(frozen=True)
class _LinkEnd:
    ending: _Ending
    detail: str = ""
    # Seconds to wait before the next link; None: the backoff decides.
    delay: float | None = None


class RobotClient:
    """One robot's link to a roz server.

    `run()` connects and reconnects until `stop()` (or a refusal it cannot fix: `LinkRefused`).
    Commands go to `on_command`, tasks to `on_task`; each returns an `Outcome`. `on_stop` is
    called with a reason whenever motion must stop: the running item was cancelled, the link was
    lost (the deadman), the client is stopping. `agent` hears the events of the host's sessions
    and speaks in them (`roz_robot.agent`); without one, they are acknowledged and ignored.

    `state_dir` holds the record that makes deliveries exactly once in effect; give each robot
    its own. `host_id` empty means the host the key is bound to (the usual case).
    """

    def __init__(
        self,
        server: str,
        key: str,
        *,
        state_dir: Path,
        host_id: str = "",
        on_command: CommandHandler | None = None,
        on_task: TaskHandler | None = None,
        on_stop: StopHook | None = None,
        agent: Agent | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        backoff: Backoff | None = None,
    ) -> None:
        self.endpoint = parse_server(server)
        self.state_dir = state_dir
        self.stats = LinkStats()
        self._metadata = auth_metadata(key)
        # The record remembers which host the server named for a key, under a digest of it.
        self._key_digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        self._configured_host = host_id
        self._handlers: dict[ItemKind, CommandHandler | TaskHandler | None] = {
            ItemKind.COMMAND: on_command,
            ItemKind.TASK: on_task,
        }
        self._on_stop = on_stop
        self._sessions = AgentSessions(agent) if agent is not None else None
        self._client_name = client_name
        self._backoff = backoff or Backoff()
        # Takeovers (ABORTED) back off on their own, not reset by the welcome that preceded
        # them, so that two robots using one key do not take the link from each other forever.
        self._takeover_backoff = Backoff(rng=self._backoff.rng)

        self._record: Record | None = None
        self._terms: LinkTerms | None = None
        self._host_id = host_id
        self._outbox: Outbox | None = None
        self._running: dict[tuple[ItemKind, str], asyncio.Task[None]] = {}
        # Reports sent (or to send) and not yet answered, by report id, oldest first.
        self._unanswered: dict[str, _Report] = {}
        # Items this process has reported RUNNING and whose outcome is not answered yet: an
        # interruption reports only FAILED for them (the server has or will have the RUNNING).
        self._reported_running: set[tuple[ItemKind, str]] = set()
        self._report_lock = asyncio.Lock()
        self._telemetry: Any = None
        self._telemetry_queued = False
        # Acknowledgements are coalesced: the writer sends the latest when it gets to it.
        self._ack_through = 0
        self._ack_queued = False
        self._last_receive = 0.0
        # True from a welcome until the link is lost: the deadman fires once per loss.
        self._alive = False
        self._started = False
        self._stopping = asyncio.Event()
        self._force_reconnect = asyncio.Event()
        self._finished = asyncio.Event()
        # Notified when a link comes or goes and when a report is answered.
        self._changed = asyncio.Condition()
        # The e-stop as the server last said it, and e-stops raised here not yet sent.
        self._estop: EstopState | None = None
        self._raised: list[Any] = []
        # Raised here and not yet cleared by the server: nothing starts meanwhile.
        self._stopped_here = False

    # -- public ------------------------------------------------------------------------------

    @property
    def host_id(self) -> str:
        """The host this robot is: as configured, else as the last welcome named it."""
        return self._host_id

    @property
    def terms(self) -> LinkTerms | None:
        """The current link's welcome; None before the first."""
        return self._terms

    @property
    def link_id(self) -> str:
        return self._terms.link_id if self._terms else ""

    @property
    def connected(self) -> bool:
        """Whether a welcomed link is up right now."""
        return self._outbox is not None

    @property
    def estop(self) -> EstopState | None:
        """The host's e-stop as the server last said it; None before the first welcome."""
        return self._estop

    async def wait_estop(self, stopped: bool) -> EstopState:
        """Waits until the server says the host is stopped (or not); returns that state."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._finished.is_set()
                    or (self._estop is not None and self._estop.stopped == stopped)
                )
            )
            if self._estop is None or self._estop.stopped != stopped:
                raise RuntimeError("the robot client finished first")
            return self._estop

    async def raise_estop(self, reason: str, source: str = "button") -> None:
        """The robot's own e-stop (`source`: "button", "deadman" or "guard"): everything stops
        here at once, and the server latches the host's e-stop (now, or on the next link)."""
        message = messages.estop_raise(source, reason)
        log.warning("%s: e-stop raised here (%s): %s", self._label, source, reason)
        self._stopped_here = True
        await self._halt(f"e-stop ({source}): {reason}")
        async with self._report_lock:
            if self._outbox is not None:
                await self._outbox.put(message)
            else:
                self._raised.append(message)

    async def wait_linked(self, *, after: int = 0) -> LinkTerms:
        """Waits until more than `after` links have been welcomed; returns the current terms.

        `await client.wait_linked()` waits for the first welcome; pass `stats.links` as read
        before forcing a reconnect to wait for the next one. Raises RuntimeError if the client
        finishes first.
        """
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._finished.is_set() or (self.stats.links > after and self.connected)
            )
            if self._terms is None or not self.connected:
                raise RuntimeError("the robot client finished before it was linked")
            return self._terms

    async def run(self) -> None:
        """Holds the link until `stop()`; raises `LinkRefused` when the server refuses it."""
        if self._started:
            raise RuntimeError("a RobotClient runs once")
        self._started = True
        channel: aio.Channel | None = None
        try:
            self._record = await asyncio.to_thread(Record.open, self.state_dir)
            await self._recover()
            channel = self.endpoint.open_channel()
            await self._keep_linked(robot_link_pb2_grpc.RobotLinkServiceStub(channel))
        finally:
            try:
                await self._wind_down()
            finally:
                if channel is not None:
                    await channel.close(grace=None)
                if self._record is not None:
                    await asyncio.to_thread(self._record.close)
                self._finished.set()
                async with self._changed:
                    self._changed.notify_all()

    async def stop(self) -> None:
        """Stops the client: running items are interrupted (reported FAILED), motion is
        stopped, the link closes; returns once `run()` has finished."""
        self._stopping.set()
        if self._started:
            await self._finished.wait()

    def reconnect(self) -> None:
        """Ends the current link as if the connection broke; the client opens a new one.

        For tests and tools: it is how a resend after a reconnect is provoked on purpose.
        """
        self._force_reconnect.set()

    async def publish(self, state: Mapping[str, Any]) -> None:
        """Sends the robot's state as telemetry. Latest wins: a sample not yet sent is replaced,
        and while there is no link only the latest is kept, sent when one comes up."""
        self._telemetry = messages.telemetry(state)
        if self._outbox is not None and not self._telemetry_queued:
            self._telemetry_queued = True
            self._outbox.signal(_TELEMETRY)

    # -- links, one after another ------------------------------------------------------------

    async def _keep_linked(self, stub: Any) -> None:
        while not self._stopping.is_set():
            self._force_reconnect.clear()
            link = asyncio.create_task(self._hold_link(stub))
            stopping = asyncio.create_task(self._stopping.wait())
            forced = asyncio.create_task(self._force_reconnect.wait())
            try:
                await asyncio.wait({link, stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                forced.cancel()
            if not link.done():
                if self._stopping.is_set():
                    await self._finish_running(INTERRUPTED_BY_STOP)
                    await self._flush_reports(STOP_FLUSH_SECONDS)
                link.cancel()
                await asyncio.gather(link, return_exceptions=True)
                await self._lose_link("the client ended the link")
                if self._stopping.is_set():
                    return
                log.info("%s: reconnecting on request", self._label)
                continue
            end = await self._link_ended(link)
            if self._stopping.is_set():
                return
            delay = end.delay if end.delay is not None else self._backoff.next_delay()
            log.info(
                "%s: link ended (%s%s); reconnecting in %.1f s",
                self._label,
                end.ending.value,
                f": {end.detail}" if end.detail else "",
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _link_ended(self, link: asyncio.Task[_LinkEnd]) -> _LinkEnd:
        """How a finished link ended; raises LinkRefused for a refusal before any welcome."""
        welcomed = self._alive
        try:
            end = link.result()
        except aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
            await self._lose_link(f"{code.name}: {details}")
            if code in REFUSED_CODES and not welcomed:
                raise LinkRefused(code, details) from None
            if code == grpc.StatusCode.ABORTED:
                log.warning(
                    "%s: another stream took over this host's link (%s); is a second robot "
                    "using this key?",
                    self._label,
                    details,
                )
                return _LinkEnd(_Ending.TAKEN_OVER, details, self._takeover_backoff.next_delay())
            self._takeover_backoff.reset()
            return _LinkEnd(_Ending.FAILED, f"{code.name}: {details}")
        await self._lose_link(end.ending.value)
        self._takeover_backoff.reset()
        return end

    async def _hold_link(self, stub: Any) -> _LinkEnd:
        """One stream from hello to its end. Errors of the stream propagate as AioRpcError."""
        record = self._require_record()
        call = stub.Connect(metadata=self._metadata)
        outbox = Outbox()
        tasks: list[asyncio.Task[Any]] = []
        try:
            host = self._configured_host or await asyncio.to_thread(
                record.bound_host, self._key_digest
            )
            last = await asyncio.to_thread(record.last_sequence, host) if host else 0
            # A call that failed at once (nothing listening) refuses the write; read() then
            # raises how it failed.
            with contextlib.suppress(asyncio.InvalidStateError):
                await call.write(messages.hello(self._configured_host, last, self._client_name))
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
                # arrives as the read completes, and stop() would wait for a link forever.
                async with asyncio.timeout(WELCOME_TIMEOUT_SECONDS):
                    first = await call.read()
            except TimeoutError:
                return _LinkEnd(_Ending.NO_WELCOME, f"no answer in {WELCOME_TIMEOUT_SECONDS:.0f} s")
            if first is EOF:
                return _LinkEnd(_Ending.NO_WELCOME, "the stream ended")
            if first.WhichOneof("message") != "welcome":
                return _LinkEnd(_Ending.NO_WELCOME, f"it sent {first.WhichOneof('message')}")
            welcome = first.welcome
            if not self._configured_host and welcome.host_id != host:
                # The hello named the sequence of the host we thought the key was bound to.
                # If the key's host is another one with another sequence, say that one.
                await asyncio.to_thread(record.bind_host, self._key_digest, welcome.host_id)
                actual = await asyncio.to_thread(record.last_sequence, welcome.host_id)
                if actual != last:
                    return _LinkEnd(_Ending.HOST_LEARNED, welcome.host_id, delay=0.0)
            if welcome.resume_after_sequence < last:
                log.warning(
                    "%s: the server resumes after sequence %d, below the %d received here; "
                    "deliveries after it count as new",
                    welcome.host_id,
                    welcome.resume_after_sequence,
                    last,
                )
                await asyncio.to_thread(
                    record.rewind, welcome.host_id, welcome.resume_after_sequence
                )
            # The writer first: the welcome queues every unanswered report, maybe more than
            # the outbox holds.
            tasks = [asyncio.create_task(self._write(call, outbox))]
            await self._welcomed(welcome, outbox)
            tasks += [
                asyncio.create_task(self._read(call)),
                asyncio.create_task(self._watch_for_quiet()),
                asyncio.create_task(self._beat(outbox)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            result: _LinkEnd = done.pop().result()
            return result
        finally:
            outbox.close()
            if self._outbox is outbox:
                self._outbox = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()
            async with self._changed:
                self._changed.notify_all()

    async def _welcomed(self, welcome: Any, outbox: Outbox) -> None:
        self._terms = LinkTerms(
            host_id=welcome.host_id,
            link_id=welcome.link_id,
            heartbeat_interval=seconds(welcome.heartbeat_interval) or DEFAULT_HEARTBEAT_SECONDS,
            presence_window=seconds(welcome.presence_window) or DEFAULT_PRESENCE_SECONDS,
            resume_after_sequence=welcome.resume_after_sequence,
        )
        self._host_id = welcome.host_id
        self._backoff.reset()
        self._alive = True
        self._last_receive = asyncio.get_running_loop().time()
        log.info(
            "%s: linked (link %s, resuming after sequence %d)",
            self._label,
            welcome.link_id,
            welcome.resume_after_sequence,
        )
        self._ack_through, self._ack_queued = 0, False
        # Under the report lock, so that a report made meanwhile goes out after the older ones.
        async with self._report_lock:
            self._outbox = outbox
            for raised in self._raised:  # before anything else
                await outbox.put(raised)
            self._raised.clear()
            for report in list(self._unanswered.values()):
                await outbox.put(report.message)
            self._telemetry_queued = self._telemetry is not None
            if self._telemetry_queued:
                outbox.signal(_TELEMETRY)
        if welcome.HasField("estop"):
            await self._on_estop(welcome.estop, outbox)
        if self._sessions is not None:
            await self._sessions.relink(outbox, welcome.sessions, self._host_id)
        self.stats.links += 1
        async with self._changed:
            self._changed.notify_all()

    async def _on_estop(self, estop: Any, outbox: Outbox | None) -> None:
        """The server's e-stop state: halts everything if it stops the host, then says so."""
        state = EstopState(
            stopped=estop.stopped,
            host_epoch=estop.host.epoch,
            environment_epoch=estop.environment.epoch,
            reason=estop.host.reason if estop.host.engaged else estop.environment.reason,
        )
        was = self._estop
        if state.stopped:
            if was is None or not was.stopped:
                log.warning("%s: e-stop engaged: %s", self._label, state.reason)
            await self._halt(f"e-stop: {state.reason}")
        elif was is not None and was.stopped:
            log.warning("%s: e-stop cleared; nothing resumes by itself", self._label)
            self._stopped_here = False
        # Known only once acted on: whoever waits for it finds everything stopped already.
        self._estop = state
        if outbox is not None:
            await outbox.put(messages.estop_ack(state.host_epoch, state.environment_epoch))
        async with self._changed:
            self._changed.notify_all()

    async def _halt(self, reason: str) -> None:
        """Motion stops and every running item ends here as the server ends it on an e-stop
        (commands FAILED, tasks SAFETY_STOPPED), with nothing reported: the server has it."""
        record = self._require_record()
        running = list(self._running.items())
        self._running.clear()
        for (kind, item_id), task in running:
            self._reported_running.discard((kind, item_id))
            task.cancel()
            state = "FAILED" if kind is ItemKind.COMMAND else "SAFETY_STOPPED"
            await asyncio.to_thread(
                record.end_by_server, self._host_id, kind, item_id, state, reason
            )
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        self.stats.cancelled += len(running)
        await self._stop_motion(reason)

    async def _lose_link(self, reason: str) -> None:
        """The deadman: motion stops once per lost link (not when the client is stopping,
        which stops motion itself)."""
        self._outbox = None
        if self._alive:
            self._alive = False
            if not self._stopping.is_set():
                log.warning("%s: link lost (%s); stopping motion", self._label, reason)
                await self._stop_motion(f"link lost: {reason}")

    async def _read(self, call: Any) -> _LinkEnd:
        loop = asyncio.get_running_loop()
        while True:
            response = await call.read()
            if response is EOF:
                return _LinkEnd(_Ending.STREAM_ENDED)
            self._last_receive = loop.time()
            which = response.WhichOneof("message")
            if which == "delivery":
                await self._on_delivery(response.delivery)
            elif which == "estop":
                await self._on_estop(response.estop, self._outbox)
            elif which == "report_result":
                await self._on_report_result(response.report_result)
            elif which == "session_ack" and self._sessions is not None:
                await self._sessions.on_ack(response.session_ack)
            elif which == "drain":
                wait = self._backoff.after_drain(seconds(response.drain.reconnect_after))
                return _LinkEnd(_Ending.DRAINED, response.drain.reason, delay=wait)
            elif which != "keepalive":
                # A second welcome, or a message of a newer server: nothing to do with it.
                log.debug("%s: ignoring a %s message", self._label, which)

    async def _write(self, call: Any, outbox: Outbox) -> _LinkEnd:
        # The one writer of the stream: grpc.aio allows a single write in flight.
        while True:
            message = await outbox.get()
            if message is _TELEMETRY:
                self._telemetry_queued = False
                message, self._telemetry = self._telemetry, None
                if message is None:
                    continue
            elif message is _ACK:
                self._ack_queued = False
                message = messages.ack(self._ack_through)
            try:
                await call.write(message)
            except (aio.AioRpcError, asyncio.InvalidStateError) as exc:
                # The stream is over; its reader sees how it ended and says so. Nobody waits
                # for room in the outbox any more.
                log.debug("%s: write failed: %s", self._label, exc)
                outbox.close()
                await asyncio.Event().wait()

    async def _watch_for_quiet(self) -> _LinkEnd:
        loop = asyncio.get_running_loop()
        window = self._terms.presence_window if self._terms else DEFAULT_PRESENCE_SECONDS
        while True:
            quiet = loop.time() - self._last_receive
            if quiet > window:
                return _LinkEnd(_Ending.QUIET, f"{quiet:.1f} s")
            await asyncio.sleep(window - quiet + 0.05)

    async def _beat(self, outbox: Outbox) -> _LinkEnd:
        interval = self._terms.heartbeat_interval if self._terms else DEFAULT_HEARTBEAT_SECONDS
        while True:
            await asyncio.sleep(interval)
            await outbox.put(messages.heartbeat())

    # -- deliveries --------------------------------------------------------------------------

    async def _on_delivery(self, delivery: Any) -> None:
        record = self._require_record()
        sequence = delivery.sequence
        self.stats.deliveries += 1
        which = delivery.WhichOneof("item")
        if which == "command":
            await self._receive_item(ItemKind.COMMAND, delivery.command, sequence)
        elif which == "task":
            await self._receive_item(ItemKind.TASK, delivery.task, sequence)
        elif which == "cancellation":
            await self._receive_cancellation(delivery.cancellation, sequence)
        elif which == "session_event":
            await self._receive_session_event(delivery.session_event, sequence)
        else:
            log.warning("%s: delivery %d carries nothing this robot reads", self._label, sequence)
            await asyncio.to_thread(record.acknowledge, self._host_id, sequence)
        # Recorded above before acknowledged here: an acknowledged delivery is never resent.
        self._ack_through = max(self._ack_through, sequence)
        if self._outbox is not None and not self._ack_queued:
            self._ack_queued = True
            self._outbox.signal(_ACK)

    async def _receive_item(self, kind: ItemKind, item: Any, sequence: int) -> None:
        record = self._require_record()
        item_id = item.id
        known = await asyncio.to_thread(record.receive, self._host_id, sequence, kind, item_id)
        what = _describe(kind, item)
        if (kind, item_id) in self._running:
            self.stats.duplicates_ignored += 1
            log.info("%s: delivery %d: %s again, still running", self._label, sequence, what)
        elif known is not None and known.finished and not known.ended_by_robot:
            log.info(
                "%s: delivery %d: %s again, already %s; not run",
                self._label,
                sequence,
                what,
                known.state,
            )
        elif known is not None and known.finished:
            self.stats.resent_from_record += 1
            log.info(
                "%s: delivery %d: %s again, already %s; answering from the record",
                self._label,
                sequence,
                what,
                known.state,
            )
            await self._report_from_record(known)
        elif self._stopped_here or (self._estop is not None and self._estop.stopped):
            # A server holds deliveries while the host is stopped; one that comes anyway (a
            # server that does not) is recorded, never run.
            log.warning("%s: delivery %d: %s while stopped; not run", self._label, sequence, what)
        elif (state := state_name(kind, item.state)) in TERMINAL_STATES[kind]:
            # Deliveries carry the item as it is now: one that ended before it arrived (it was
            # cancelled, or timed out, while this robot was away) is remembered, not run.
            log.info("%s: delivery %d: %s, already %s", self._label, sequence, what, state)
            await asyncio.to_thread(
                record.end_by_server, self._host_id, kind, item_id, state, "ended before delivery"
            )
        else:
            log.info("%s: delivery %d: %s, running it", self._label, sequence, what)
            self.stats.executed += 1
            self.stats.executed_ids.append(item_id)
            self._running[(kind, item_id)] = asyncio.create_task(self._execute(kind, item))

    async def _receive_cancellation(self, cancellation: Any, sequence: int) -> None:
        record = self._require_record()
        target = cancellation.WhichOneof("target")
        if target is None:
            log.warning("%s: delivery %d cancels nothing", self._label, sequence)
            await asyncio.to_thread(record.acknowledge, self._host_id, sequence)
            return
        kind = ItemKind.COMMAND if target == "command_id" else ItemKind.TASK
        item_id: str = getattr(cancellation, target)
        reason = cancellation.reason
        known = await asyncio.to_thread(
            record.cancel, self._host_id, sequence, kind, item_id, reason
        )
        log.info(
            "%s: delivery %d: cancel %s %s%s",
            self._label,
            sequence,
            kind.value,
            item_id,
            f" ({reason})" if reason else "",
        )
        if known is None or not known.finished:
            await self._interrupt(kind, item_id, f"{kind.value} {item_id} cancelled: {reason}")

    async def _receive_session_event(self, event: Any, sequence: int) -> None:
        record = self._require_record()
        if self._sessions is None:
            log.debug(
                "%s: delivery %d: a %s event of session %s; this robot runs no agent",
                self._label,
                sequence,
                event.WhichOneof("event"),
                event.session_id,
            )
        else:
            # Handed over before it is recorded: a robot that stops in between is sent the
            # event again rather than never.
            self._sessions.receive(event, self._host_id)
        await asyncio.to_thread(record.acknowledge, self._host_id, sequence)

    async def _interrupt(self, kind: ItemKind, item_id: str, reason: str) -> None:
        """Stops a running item that the server has ended: no terminal report from here."""
        self._reported_running.discard((kind, item_id))
        task = self._running.pop((kind, item_id), None)
        if task is None or task.done():
            return
        task.cancel()
        self.stats.cancelled += 1
        await self._stop_motion(reason)

    # -- running items -----------------------------------------------------------------------

    async def _execute(self, kind: ItemKind, item: Any) -> None:
        record = self._require_record()
        item_id = item.id
        try:
            await self._report(kind, item_id, "RUNNING")
            self._reported_running.add((kind, item_id))
            outcome = await self._outcome(kind, item)
            result = outcome.result
            try:
                messages.to_struct(result)
            except (TypeError, ValueError) as exc:
                outcome = Outcome(ok=False, reason=f"the handler's result is not JSON: {exc}")
                result = {}
            state = SUCCESS_STATE[kind] if outcome.ok else "FAILED"
            report_id = str(uuid.uuid4())
            # Recorded before it is sent: a resend after a crash is answered from the record.
            finished = await asyncio.to_thread(
                record.finish,
                kind,
                item_id,
                state,
                reason=outcome.reason,
                result=result,
                report_id=report_id,
            )
            if not finished:
                return  # ended by the server meanwhile; nothing to report
            log.info(
                "%s: %s %s %s%s",
                self._label,
                kind.value,
                item_id,
                state.lower(),
                f": {outcome.reason}" if outcome.reason else "",
            )
            await self._report(
                kind, item_id, state, reason=outcome.reason, result=result, report_id=report_id
            )
        finally:
            if self._running.get((kind, item_id)) is asyncio.current_task():
                del self._running[(kind, item_id)]

    async def _outcome(self, kind: ItemKind, item: Any) -> Outcome:
        handler = self._handlers[kind]
        if handler is None:
            return Outcome(ok=False, reason=f"this robot runs no {kind.value}s")
        try:
            return await handler(item, Progress(kind, item.id, self.publish))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: the %s handler raised", self._label, kind.value, exc_info=True)
            return Outcome(ok=False, reason=str(exc) or type(exc).__name__)

    async def _finish_running(self, reason: str) -> None:
        """Interrupts what runs: motion stops, and each item is recorded and reported FAILED."""
        record = self._require_record()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if running or self._alive:
            await self._stop_motion(reason)
        self._alive = False
        for item in await asyncio.to_thread(record.fail_interrupted, reason):
            await self._report_from_record(item)

    async def _wind_down(self) -> None:
        """The end of run(), however it ends: nothing may keep running behind the caller."""
        if self._sessions is not None:
            await self._sessions.close()
        if self._record is not None:
            await self._finish_running(INTERRUPTED_BY_STOP)
        self._outbox = None

    # -- reports -----------------------------------------------------------------------------

    async def _recover(self) -> None:
        """At start: items interrupted by the last process end FAILED, and outcomes the server
        never answered are queued to be reported again on the first link."""
        record = self._require_record()
        interrupted = await asyncio.to_thread(record.fail_interrupted, INTERRUPTED_BY_RESTART)
        for item in interrupted:
            log.warning("%s: %s %s was interrupted", self._label, item.kind.value, item.item_id)
        for item in await asyncio.to_thread(record.unanswered):
            await self._report_from_record(item)
        await asyncio.to_thread(record.forget_before, time.time() - KEEP_SECONDS)

    async def _report_from_record(self, item: ItemRecord) -> None:
        """Reports a recorded outcome again (a resent delivery, a restart, an interruption)."""
        key = (item.kind, item.item_id)
        pending = [r for r in self._unanswered.values() if (r.kind, r.item_id) == key]
        if any(r.terminal for r in pending):
            return  # its outcome is on its way already
        if not pending and not item.answered and key not in self._reported_running:
            # The item may never have been reported RUNNING (an earlier process ran it); a
            # replayed RUNNING changes nothing, a missing one makes the outcome illegal.
            await self._report(item.kind, item.item_id, "RUNNING")
        await self._report(
            item.kind, item.item_id, item.state, reason=item.reason, result=item.result
        )

    async def _report(
        self,
        kind: ItemKind,
        item_id: str,
        state: str,
        *,
        reason: str = "",
        result: Mapping[str, Any] | None = None,
        report_id: str = "",
    ) -> None:
        report_id = report_id or str(uuid.uuid4())
        message = messages.report(
            kind, item_id, state, reason=reason, result=result or {}, report_id=report_id
        )
        terminal = state in TERMINAL_STATES[kind]
        async with self._report_lock:
            self._unanswered[report_id] = _Report(kind, item_id, state, terminal, message)
            if self._outbox is not None:
                await self._outbox.put(message)

    async def _on_report_result(self, answer: Any) -> None:
        report = self._unanswered.pop(answer.report_id, None)
        if report is None:
            return  # answers a report of an earlier link, already answered there
        async with self._changed:
            self._changed.notify_all()
        record = self._require_record()
        if report.terminal:
            self._reported_running.discard((report.kind, report.item_id))
            await asyncio.to_thread(record.mark_answered, report.kind, report.item_id)
        which = answer.WhichOneof("current")
        current = state_name(report.kind, getattr(answer, which).state) if which else ""
        if not answer.applied:
            log.info(
                "%s: %s %s: report %s not applied (%s); it is %s",
                self._label,
                report.kind.value,
                report.item_id,
                report.state,
                answer.reason or "no reason given",
                current or "unknown",
            )
        key = (report.kind, report.item_id)
        if current in TERMINAL_STATES[report.kind] and key in self._running:
            # The server ended the item meanwhile (cancelled, timed out): stop working on it.
            await asyncio.to_thread(
                record.end_by_server,
                self._host_id,
                report.kind,
                report.item_id,
                current,
                answer.reason,
            )
            await self._interrupt(
                report.kind, report.item_id, f"{report.kind.value} {report.item_id} is {current}"
            )

    async def _flush_reports(self, seconds: float) -> None:
        """Waits (up to `seconds`) for the reports in flight to be answered, while linked."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: not self._unanswered or not self.connected)

    # -- small things ------------------------------------------------------------------------

    async def _stop_motion(self, reason: str) -> None:
        self.stats.stops += 1
        if self._on_stop is None:
            return
        try:
            await call_stop_hook(self._on_stop, reason)
        except Exception:
            log.exception("%s: the stop hook raised", self._label)

    def _require_record(self) -> Record:
        if self._record is None:
            raise RuntimeError("the record is opened by run()")
        return self._record

    @property
    def _label(self) -> str:
        return self._host_id or "robot"


def _describe(kind: ItemKind, item: Any) -> str:
    if kind is ItemKind.COMMAND:
        return f"command {item.id} ({item.type})"
    return f"task {item.id}"
