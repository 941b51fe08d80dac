"""The robot link: one live stream per host, in whichever process the robot reached.

`RobotLinks` is the process's registry of live links. A hello claims the host in the database
(taking it over from any older stream, here or in another process), and the stream then sends
everything numbered for the host after the robot's last received sequence, reading the
delivery log only when woken:
- by `NOTIFY roz_robot_deliveries` (an item was numbered for the host, by any process);
- by the pulse, every few seconds, which finds any link behind its host's last sequence (a lost
  notification, a dropped listener) and any link another stream has taken over;
- after the listener connects again, when every link looks.
What the robot sends is applied as it arrives: cumulative acks, reports through the items'
transition tables, heartbeats, telemetry (kept in memory only), e-stop acknowledgements, and
e-stops the robot raised itself (latched like an operator's).

E-stops overtake the delivery log. Each link knows its host's e-stop (both latches); a change,
learnt from `NOTIFY roz_estops` (or at once, when this process made it), from the pulse (which
compares epochs), or after the listener reconnects, is sent before anything else, unnumbered.
While the host is stopped nothing numbered is sent: the stream holds its place in the log, and
resumes from there when the e-stop is cleared. Silence past the presence window
ends the stream; its end marks the host OFFLINE unless another stream holds it by then.
Shutdown sends every robot a drain message first, and leaves presence to the robot's next
stream (elsewhere) or to the presence sweep.

Time comes in: `clock` (wall, for what is stored) and `monotonic` (for silence and keepalives),
so tests move both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from server import background
from server.domain.commands import Command
from server.domain.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from server.domain.estop import ROBOT_SOURCES, HostStop, Latch, Target, TargetKind
from server.domain.robot_deliveries import Delivery, DeliveryKind
from server.domain.robot_link import (
    CONNECTED,
    DISCONNECTED,
    SILENT,
    Ack,
    EstopAck,
    EstopRaise,
    Heartbeat,
    Hello,
    ItemKind,
    Judgement,
    LinkTerms,
    Report,
    RobotMessage,
    Telemetry,
    Verdict,
    check_estop_ack,
    check_own_host,
    held_to,
    raised_reason,
)
from server.domain.sessions import AgentUpdate, SessionEvent
from server.domain.tasks import Task
from server.storage.availability import DATABASE_AWAY
from server.storage.commands import CommandRepository
from server.storage.estops import Acknowledged, EstopRepository, parse_payload
from server.storage.robot_deliveries import RobotDeliveryRepository
from server.storage.robot_links import RobotLinkRepository
from server.storage.tasks import TaskRepository

log = logging.getLogger(__name__)

# Deliveries read per round trip; a robot far behind is caught up in several.
BATCH = 100
# How long e-stop acknowledgements are gathered before they are written together.
ACK_DELAY = 0.05
# How long a stream's end waits for its last delivery acks to be written.
ACK_WRITE_SECONDS = 2.0
# Report answers waiting for the robot to read them; a robot that reports faster than it reads
# is held back here (its stream's flow control does the rest).
OUTBOX = 64
TAKEOVER = "LINK_TAKEN_OVER"


# -- what the service sends, before it is encoded ----------------------------------------------


@dataclass(frozen=True)
class Welcome:
    host_id: UUID
    terms: LinkTerms
    resume_after: int
    link_id: UUID
    stop: HostStop
    # (session, last agent update recorded) of the host's active sessions.
    sessions: Sequence[tuple[UUID, int]] = ()


@dataclass(frozen=True)
class Cancel:
    kind: ItemKind
    item_id: UUID
    reason: str


@dataclass(frozen=True)
class Sent:
    sequence: int
    # None: an item that no longer exists and needs no cancellation (acknowledge and go on).
    item: Command | Task | Cancel | SessionEvent | None


@dataclass(frozen=True)
class ReportOutcome:
    report_id: str
    judgement: Judgement
    item: Command | Task | None


@dataclass(frozen=True)
class SessionAnswer:
    """The answer to one of the agent's session updates."""

    session_id: UUID
    sequence: int
    accepted: bool
    reason: str


@dataclass(frozen=True)
class Keepalive:
    pass


@dataclass(frozen=True)
class Drain:
    reason: str
    reconnect_after: timedelta


@dataclass(frozen=True)
class EstopNotice:
    """The host's e-stop, changed since the robot last heard it."""

    stop: HostStop


ServerMessage = Welcome | Sent | ReportOutcome | SessionAnswer | Keepalive | Drain | EstopNotice


@dataclass(frozen=True)
class TelemetrySnapshot:
    state: dict[str, Any]
    sample_time: datetime | None
    receive_time: datetime


@dataclass(eq=False)
class LiveLink:
    """One stream, from its hello to its end."""

    tenant_id: UUID
    host_id: UUID
    link_id: UUID
    # The claim's number: of two streams for one host, the higher holds it.
    epoch: int
    actor: UUID | None
    client: str
    sent_through: int
    last_heard: float
    last_sent: float
    # The process's terms, or shorter ones a safety policy's heartbeat window sets.
    terms: LinkTerms
    behind: bool = True
    stirred: asyncio.Event = field(default_factory=asyncio.Event)
    outbox: asyncio.Queue[ReportOutcome | SessionAnswer] = field(
        default_factory=lambda: asyncio.Queue(maxsize=OUTBOX)
    )
    # Set once: how the stream is to end (an error to raise, or a drain to send).
    ending: DomainError | Drain | None = None
    # Why presence goes OFFLINE when it ends (None: leave presence alone).
    release_reason: str | None = DISCONNECTED
    # The host's e-stop as last learnt, whether the robot has yet to hear it, and the epochs
    # last sent (what the robot may acknowledge).
    stop: HostStop | None = None
    stop_news: bool = False
    stop_sent: tuple[int, int] = (0, 0)
    # The robot's latest cumulative ack, and the task writing it.
    ack_to: int = 0
    ack_writer: asyncio.Task[None] | None = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.stopped

    def learn(self, stop: HostStop) -> None:
        """A read of the host's e-stop; kept if it is news (older reads are ignored). A clear
        lets the stream go on from where the e-stop held it."""
        known = self.stop
        if known is not None and not _newer(stop, known):
            return
        was_stopped = self.stopped
        self.stop = stop
        self.stop_news = True
        if was_stopped and not stop.stopped:
            self.behind = True
        self.stirred.set()

    def wake(self) -> None:
        self.behind = True
        self.stirred.set()

    def end(self, how: DomainError | Drain, release_reason: str | None) -> None:
        if self.ending is None:
            self.ending = how
            self.release_reason = release_reason
        self.stirred.set()


@dataclass(frozen=True)
class Repositories:
    deliveries: Callable[[], RobotDeliveryRepository]
    links: Callable[[], RobotLinkRepository]
    commands: Callable[[], CommandRepository]
    tasks: Callable[[], TaskRepository]
    estops: Callable[[], EstopRepository]
    # Across tenants: the latches' epochs over each host (the pulse's check).
    estop_epochs: Callable[[Sequence[UUID]], Awaitable[dict[UUID, tuple[int, int]]]]
    # Records an update of a robot's agent in a session of its host (tenant, host, update,
    # the robot's key): the sessions service.
    agent_update: Callable[[UUID, UUID, AgentUpdate, UUID | None], Awaitable[Any]]


class RobotLinks:
    """This process's live links, by host."""

    def __init__(
        self,
        repositories: Repositories,
        terms: LinkTerms,
        *,
        pulse_seconds: float,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
    ) -> None:
        self._repos = repositories
        self.terms = terms
        self._pulse_seconds = pulse_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._live: dict[UUID, LiveLink] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pulse_task: asyncio.Task[None] | None = None
        self._draining: Drain | None = None
        # The latest telemetry of each connected robot, for watchers; never stored.
        self.telemetry: dict[UUID, TelemetrySnapshot] = {}
        # Told the tenant whenever one of its robots sends telemetry (the watches' wake-up).
        self.on_telemetry: Callable[[UUID], None] | None = None
        # E-stop acknowledgements waiting to be written, by tenant and host, and their writer.
        self._acks: dict[UUID, dict[UUID, Acknowledged]] = {}
        self._ack_flush: asyncio.Task[None] | None = None

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        self._pulse_task = asyncio.create_task(self._pulse_loop(), name="roz-robot-pulse")

    async def stop(self) -> None:
        task, self._pulse_task = self._pulse_task, None
        await background.stop(task)
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        flush, self._ack_flush = self._ack_flush, None
        if flush is not None:
            flush.cancel()
            with contextlib.suppress(BaseException):
                await flush
        if self._acks:  # the last ones, at once
            with contextlib.suppress(Exception):
                await self._write_acks(0)
            if self._ack_flush is not None:
                self._ack_flush.cancel()

    def drain(self, reason: str, reconnect_after: timedelta) -> int:
        """Tells every live robot to go elsewhere, and every robot that says hello from now
        on; their streams end after the message. Returns how many were told."""
        self._draining = Drain(reason, reconnect_after)
        for link in self._live.values():
            link.end(self._draining, release_reason=None)
        return len(self._live)

    def live(self, host_id: UUID) -> LiveLink | None:
        return self._live.get(host_id)

    def count(self) -> int:
        return len(self._live)

    # -- wake-ups -----------------------------------------------------------------------------

    def on_delivery(self, payload: str) -> None:
        """NOTIFY roz_robot_deliveries: something was numbered for the host."""
        link = self._live.get(_uuid(payload))
        if link is not None:
            link.wake()

    def on_link(self, payload: str) -> None:
        """NOTIFY roz_robot_links: a stream claimed the host; if ours is older, it must go."""
        link = self._live.get(_uuid(payload))
        if link is not None:
            self._spawn(self._check_holder(link))

    def on_reconnect(self) -> None:
        """The listener was away: anything may have been missed."""
        for link in list(self._live.values()):
            link.wake()
            self._spawn(self._check_holder(link))
        self._spawn(self._refresh_stops(list(self._live.values())))

    def on_estop(self, payload: str) -> None:
        """NOTIFY roz_estops: a latch changed; the links it covers learn it from the payload."""
        parsed = parse_payload(payload)
        if parsed is not None:
            self.announce(*parsed)

    def announce(self, tenant_id: UUID, target: Target, latch: Latch) -> None:
        """A latch of `tenant_id` changed to `latch` (here, or as a notification said): each
        link it covers takes it into its host's e-stop, in memory. A link still opening (its
        stop not read yet) reads it again; a link whose host moved environment since its stop
        was read is found by the pulse's epochs."""
        opening: list[LiveLink] = []
        for link in self._covered(tenant_id, target):
            stop = link.stop
            if stop is None:
                opening.append(link)
            elif target.kind is TargetKind.HOST and latch.epoch > stop.host.epoch:
                link.learn(replace(stop, host=latch))
            elif target.kind is TargetKind.ENVIRONMENT and latch.epoch > stop.environment.epoch:
                link.learn(replace(stop, environment=latch))
        if opening:
            self._spawn(self._refresh_stops(opening))

    def _covered(self, tenant_id: UUID, target: Target) -> list[LiveLink]:
        """The tenant's links a latch may cover: its host's, or those in its environment (and
        any whose stop is not read yet)."""
        if target.kind is TargetKind.HOST:
            link = self._live.get(target.id)
            return [link] if link is not None and link.tenant_id == tenant_id else []
        return [
            link
            for link in self._live.values()
            if link.tenant_id == tenant_id
            and (link.stop is None or link.stop.environment_id == target.id)
        ]

    async def _refresh_stops(self, links: list[LiveLink]) -> None:
        """Reads the e-stops of these links' hosts, one query per tenant."""
        by_tenant: dict[UUID, list[LiveLink]] = {}
        for link in links:
            by_tenant.setdefault(link.tenant_id, []).append(link)
        for tenant_id, tenant_links in by_tenant.items():
            stops = await self._repos.estops().of_hosts(
                tenant_id, [link.host_id for link in tenant_links]
            )
            for link in tenant_links:
                stop = stops.get(link.host_id)
                if stop is not None:
                    link.learn(stop)

    async def _check_holder(self, link: LiveLink) -> None:
        holder = await self._repos.links().holder(link.tenant_id, link.host_id)
        if holder != link.link_id:
            _taken_over(link, holder)

    # -- one stream ---------------------------------------------------------------------------

    async def open(
        self, tenant_id: UUID, bound_host: UUID, actor: UUID | None, hello: Hello
    ) -> tuple[LiveLink, Welcome]:
        """A robot's hello: claims its host and returns the live link and its welcome."""
        if self._draining is not None:
            raise Unavailable(
                "this server is shutting down; connect to another",
                retry_after_seconds=self._draining.reconnect_after.total_seconds(),
            )
        host_id = UUID(check_own_host(hello.host_id, str(bound_host)))
        link_id = uuid.uuid4()
        claim = await self._repos.links().claim(
            tenant_id,
            host_id,
            link_id,
            last_received=hello.last_received_sequence,
            reason=CONNECTED,
            now=self._clock(),
        )
        now = self._monotonic()
        link = LiveLink(
            tenant_id=tenant_id,
            host_id=host_id,
            link_id=link_id,
            epoch=claim.epoch,
            actor=actor,
            client=hello.client,
            sent_through=claim.resume_after,
            last_heard=now,
            last_sent=now,
            terms=self.terms,  # until the host's safety policies are read, below
        )
        previous = self._live.get(host_id)
        if previous is not None and previous.epoch > claim.epoch:
            # Two hellos at once here, and the other claimed last: it holds the host.
            raise _takeover(link, previous.link_id)
        if previous is not None:
            _taken_over(previous, link_id)
        # Registered before its e-stop is read, so a change committed meanwhile is not missed:
        # its notification finds the link, and of two reads the newer wins.
        self._live[host_id] = link
        try:
            known = await self._repos.links().hello_terms(tenant_id, host_id)
        except BaseException:
            if self._live.get(host_id) is link:
                del self._live[host_id]
            raise
        link.terms = held_to(self.terms, known.heartbeat_window)
        if known.stop is not None:
            link.learn(known.stop)
        stop = link.stop
        if stop is None:  # the host was deleted since the claim
            if self._live.get(host_id) is link:
                del self._live[host_id]
            raise NotFound("host", str(host_id))
        link.stop_news = False  # the welcome carries it
        link.stop_sent = stop.epochs
        log.info(
            "robot link %s for host %s opened (%s), resuming after %d",
            link_id,
            host_id,
            hello.client or "unnamed client",
            claim.resume_after,
        )
        return link, Welcome(host_id, link.terms, claim.resume_after, link_id, stop, known.sessions)

    async def serve(
        self, link: LiveLink, messages: AsyncIterator[RobotMessage]
    ) -> AsyncIterator[ServerMessage]:
        """What the server sends on `link` after the welcome, while it applies what the robot
        sends; ends (or raises the reason) when the link ends."""
        reader = asyncio.create_task(self._read(link, messages), name=f"robot-link-{link.host_id}")
        reader.add_done_callback(lambda _: link.stirred.set())
        try:
            async for message in self._outgoing(link, reader):
                link.last_sent = self._monotonic()
                yield message
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if link.ack_writer is not None:  # the last acks are kept, if the database lets them
                await asyncio.wait({link.ack_writer}, timeout=ACK_WRITE_SECONDS)
            if self._live.get(link.host_id) is link:
                del self._live[link.host_id]
                self.telemetry.pop(link.host_id, None)
            if link.release_reason is not None:
                self._spawn(self._release(link, link.release_reason))
            log.info("robot link %s for host %s ended", link.link_id, link.host_id)

    async def _outgoing(
        self, link: LiveLink, reader: asyncio.Task[None]
    ) -> AsyncIterator[ServerMessage]:
        while True:
            link.stirred.clear()
            if link.ending is not None:
                if isinstance(link.ending, Drain):
                    yield link.ending
                    return
                raise link.ending
            if reader.done():
                reader.result()  # the robot's mistake, raised as its status
                return  # the robot closed its side
            if link.stop_news and link.stop is not None:  # ahead of everything else
                link.stop_news = False
                link.stop_sent = link.stop.epochs
                yield EstopNotice(link.stop)
                continue
            if not link.outbox.empty():
                yield link.outbox.get_nowait()
                continue
            if link.behind and not link.stopped:  # while stopped, the log waits
                link.behind = False
                async for sent in self._catch_up(link):
                    yield sent
                continue
            idle = self._monotonic() - link.last_sent
            wait = link.terms.keepalive_interval.total_seconds() - idle
            if wait <= 0:
                yield Keepalive()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await link.stirred.wait()

    async def _catch_up(self, link: LiveLink) -> AsyncIterator[Sent]:
        """Everything numbered after what was sent, in batches (each read with its items, and
        marked sent, in one transaction; none while the host is stopped)."""
        batch = await self._repos.links().outgoing(
            link.tenant_id, link.host_id, link.sent_through, BATCH, now=self._clock()
        )
        for delivery, item in batch:
            if link.stop_news:  # an e-stop overtakes the rest of the batch
                link.behind = True
                return
            yield Sent(delivery.sequence, _sendable(delivery, item))
            link.sent_through = delivery.sequence
        if len(batch) == BATCH:
            link.behind = True  # more to read

    async def _read(self, link: LiveLink, messages: AsyncIterator[RobotMessage]) -> None:
        async for message in messages:
            link.last_heard = self._monotonic()
            if isinstance(message, Ack):
                # Written beside the stream, the latest at once and those that come meanwhile
                # together, so that what the robot sends next is not held up behind it.
                link.ack_to = max(link.ack_to, message.sequence)
                if link.ack_writer is None or link.ack_writer.done():
                    link.ack_writer = asyncio.ensure_future(self._write_acks_of(link))
            elif isinstance(message, Report):
                # What the robot acked before it reported is recorded before the report, so
                # that a command's trail reads acknowledged, then running, as the robot said it.
                if link.ack_writer is not None and not link.ack_writer.done():
                    await asyncio.wait({link.ack_writer})
                await link.outbox.put(await self._report(link, message))
                link.stirred.set()
            elif isinstance(message, AgentUpdate):
                answer = await self._repos.agent_update(
                    link.tenant_id, link.host_id, message, link.actor
                )
                await link.outbox.put(
                    SessionAnswer(
                        message.session_id, message.sequence, answer.accepted, answer.reason
                    )
                )
                link.stirred.set()
            elif isinstance(message, Telemetry):
                self.telemetry[link.host_id] = TelemetrySnapshot(
                    dict(message.state), message.sample_time, self._clock()
                )
                if self.on_telemetry is not None:
                    self.on_telemetry(link.tenant_id)
            elif isinstance(message, EstopAck):
                await self._acknowledge_stop(link, message)
            elif isinstance(message, EstopRaise):
                await self._raise_stop(link, message)
            elif isinstance(message, Heartbeat):
                pass
            if link.ending is not None:
                return

    async def _write_acks_of(self, link: LiveLink) -> None:
        """Records the robot's cumulative ack until the latest is written; an ack of something
        never sent ends the stream, as the robot's mistake."""
        written = -1
        while link.ack_to != written:
            written = link.ack_to
            try:
                await self._repos.deliveries().acknowledge(
                    link.tenant_id, link.host_id, written, now=self._clock()
                )
            except InvalidArgument as exc:
                link.end(exc, DISCONNECTED)
                return
            except Exception as exc:  # the database is away: the stream ends, the robot resends
                if not isinstance(exc, DATABASE_AWAY):
                    log.warning("could not record an ack of host %s", link.host_id, exc_info=True)
                link.end(
                    Unavailable("could not record the acknowledgement; reconnect"), DISCONNECTED
                )
                return

    async def _acknowledge_stop(self, link: LiveLink, ack: EstopAck) -> None:
        """Kept to be written with the others that come within ACK_DELAY: an engage brings an
        acknowledgement from every robot it covers at once, and one statement for them all
        leaves the event loop to the robots still waiting for it."""
        check_estop_ack(ack, link.stop_sent)
        stop = link.stop
        self._acks.setdefault(link.tenant_id, {})[link.host_id] = Acknowledged(
            link.host_id,
            ack.host_epoch,
            None if stop is None else stop.environment_id,
            ack.environment_epoch,
        )
        if self._ack_flush is None or self._ack_flush.done():
            self._ack_flush = asyncio.ensure_future(self._write_acks(ACK_DELAY))

    async def _write_acks(self, delay: float) -> None:
        await asyncio.sleep(delay)
        pending, self._acks = self._acks, {}
        failed = False
        for tenant_id, by_host in pending.items():
            try:
                await self._repos.estops().acknowledge(
                    tenant_id, list(by_host.values()), now=self._clock()
                )
            except Exception as exc:  # kept, and tried again shortly; newer ones win
                if not isinstance(exc, DATABASE_AWAY):
                    log.warning("could not record e-stop acknowledgements", exc_info=True)
                kept = self._acks.setdefault(tenant_id, {})
                for host_id, ack in by_host.items():
                    kept.setdefault(host_id, ack)
                failed = True
        if failed or self._acks:
            self._ack_flush = asyncio.ensure_future(self._write_acks(1.0 if failed else delay))

    async def _raise_stop(self, link: LiveLink, raised: EstopRaise) -> None:
        """The robot stopped itself: its host's latch is engaged like an operator's, and the
        robot (like every watcher) hears the new state."""
        if raised.source not in ROBOT_SOURCES:
            raise InvalidArgument(
                "a robot raises an e-stop from its button, its deadman or a guard",
                [FieldViolation("estop_raise.source", "must be a robot source")],
            )
        target = Target(TargetKind.HOST, link.host_id)
        latch = await self._repos.estops().engage(
            link.tenant_id,
            target,
            reason=raised_reason(raised.source, raised.reason),
            source=raised.source,
            actor=link.actor,
        )
        log.warning("robot of host %s raised its e-stop (%s)", link.host_id, raised.source.value)
        self.announce(link.tenant_id, target, latch)

    async def _report(self, link: LiveLink, report: Report) -> ReportOutcome:
        """Applies a report through its item's transition table; a refusal is an answer to
        the robot, never the end of its stream."""
        try:
            if report.kind is ItemKind.COMMAND:
                judgement, item = await self._repos.commands().report(
                    link.tenant_id,
                    link.host_id,
                    report.item_id,
                    report.state,  # type: ignore[arg-type]
                    reason=report.reason,
                    result=report.result,
                    actor=link.actor,
                )
                return ReportOutcome(report.report_id, judgement, item)
            judgement, task = await self._repos.tasks().report(
                link.tenant_id,
                link.host_id,
                report.item_id,
                report.state,  # type: ignore[arg-type]
                reason=report.reason,
                output=report.result,
                actor=link.actor,
            )
            return ReportOutcome(report.report_id, judgement, task)
        except (InvalidArgument, NotFound, FailedPrecondition) as exc:  # e.g. stopped by an e-stop
            what = (
                f"no such {report.kind.value} on this host"
                if isinstance(exc, NotFound)
                else exc.message
            )
            return ReportOutcome(report.report_id, Judgement(Verdict.REFUSED, what), None)

    async def _release(self, link: LiveLink, reason: str) -> None:
        try:
            await self._repos.links().release(
                link.tenant_id, link.host_id, link.link_id, reason=reason, now=self._clock()
            )
        except DATABASE_AWAY:  # logged once, by availability; the presence sweep will do it
            pass
        except Exception:  # the presence sweep will do it
            log.warning("could not record the end of robot link %s", link.link_id, exc_info=True)

    # -- the pulse ----------------------------------------------------------------------------

    async def pulse(self) -> None:
        """Vouches for every live link, ends those silent past the window and those taken
        over, and wakes those behind."""
        now = self._clock()
        mono = self._monotonic()
        links = list(self._live.values())
        for link in links:
            silence = mono - link.last_heard
            if silence > link.terms.presence_window.total_seconds():
                link.end(
                    Unavailable(f"no word from the robot for {silence:.0f} s; reconnect"), SILENT
                )
        held = [link for link in links if link.ending is None]
        heard = [
            (link.host_id, link.link_id, now - timedelta(seconds=mono - link.last_heard))
            for link in held
        ]
        by_host = {link.host_id: link for link in held}
        for pulse in await self._repos.links().pulse(heard):
            link = by_host[pulse.host_id]
            if not pulse.held:
                _taken_over(link, None)
            elif pulse.last_sequence > link.sent_through:
                link.wake()
        # A lost notification of an e-stop is found here: the latches' epochs moved.
        epochs = await self._repos.estop_epochs(list(by_host))
        stale = [
            link
            for host_id, link in by_host.items()
            if link.stop is not None and epochs.get(host_id, link.stop.epochs) != link.stop.epochs
        ]
        if stale:
            await self._refresh_stops(stale)

    async def _pulse_loop(self) -> None:
        while True:
            await asyncio.sleep(self._pulse_seconds)
            try:
                await self.pulse()
            except Exception:  # the database is away; the next pulse tries again
                log.debug("robot link pulse failed", exc_info=True)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _sendable(
    delivery: Delivery, item: Command | Task | SessionEvent | None
) -> Command | Task | Cancel | SessionEvent | None:
    """The delivery's item as it is now (a resent command may have moved on since), or the
    cancellation, which says why: the state the item was stopped in and its reason."""
    kind = delivery.kind
    if kind is DeliveryKind.SESSION_EVENT:
        return item  # an event never changes (gone only with its tenant)
    assert not isinstance(item, SessionEvent)
    item_kind = (
        ItemKind.COMMAND
        if kind in (DeliveryKind.COMMAND, DeliveryKind.CANCEL_COMMAND)
        else ItemKind.TASK
    )
    if item is None:  # removed since (only a finished item can be): nothing to run
        return Cancel(item_kind, delivery.item_id, "it no longer exists")
    if kind in (DeliveryKind.COMMAND, DeliveryKind.TASK):
        return item
    return Cancel(item_kind, delivery.item_id, _why_stopped(item))


def _why_stopped(item: Command | Task) -> str:
    """Why an item was stopped, for its cancellation: its state and its last reason."""
    reason = item.transitions[-1].reason if item.transitions else ""
    if isinstance(item, Task):
        reason = item.result
    return f"{item.state.name}: {reason}" if reason else item.state.name


def _newer(read: HostStop, known: HostStop) -> bool:
    """Whether `read` is a later state than `known`: a latch moved on, or the host moved to
    another environment (whose latch has its own epochs)."""
    if read.environment_id != known.environment_id:
        return True
    host, environment = read.host.epoch, read.environment.epoch
    old_host, old_environment = known.host.epoch, known.environment.epoch
    return (
        host >= old_host
        and environment >= old_environment
        and (host > old_host or environment > old_environment)
    )


def _taken_over(link: LiveLink, by: UUID | None) -> None:
    link.end(_takeover(link, by), release_reason=None)


def _takeover(link: LiveLink, by: UUID | None) -> Aborted:
    return Aborted(
        "another stream for this host took over the robot link",
        reason=TAKEOVER,
        metadata={"link_id": str(link.link_id), "taken_over_by": str(by or "")},
    )


def _uuid(payload: str) -> UUID:
    try:
        return UUID(payload)
    except ValueError:
        return UUID(int=0)
