"""WatchService: proto ⇄ the watch service, nothing else."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from roz.v1 import watch_pb2 as pb
from roz.v1 import watch_pb2_grpc

from server.api.audit import event_to_proto
from server.api.commands import command_to_proto
from server.api.convert import parse_id, struct_of, timestamp
from server.api.estop import host_estop_to_proto
from server.api.hosts import host_to_proto
from server.api.principal import current_principal
from server.api.tasks import task_to_proto
from server.domain.commands import Command
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.tasks import Task
from server.services.watches import Change, HostState, Sent, Telemetry, Watches

LAST_EVENT_ID = "last-event-id"


# Changes converted lately, shared by every watcher that is sent them (a change is the same
# message for all: its sequence and entry), so that 200 watchers cost one conversion.
CONVERTED = 4096


class WatchServicer(watch_pb2_grpc.WatchServiceServicer):  # type: ignore[misc]
    def __init__(self, watches: Watches) -> None:
        self._watches = watches
        self._converted: OrderedDict[tuple[UUID, int], pb.WatchEvent] = OrderedDict()

    async def WatchHost(
        self, request: pb.WatchHostRequest, context: Any
    ) -> AsyncIterator[pb.WatchEvent]:
        tenant = current_principal().tenant_id
        host_id = parse_id(request.host_id, "host_id")
        after = resume_after(request, context)
        async for sent in self._watches.host(tenant, host_id, after):
            yield self._event(sent)

    async def WatchCommand(
        self, request: pb.WatchCommandRequest, context: Any
    ) -> AsyncIterator[pb.WatchEvent]:
        tenant = current_principal().tenant_id
        command_id = parse_id(request.command_id, "command_id")
        after = resume_after(request, context)
        async for sent in self._watches.command(tenant, command_id, after):
            yield self._event(sent)

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Any
    ) -> AsyncIterator[pb.WatchEvent]:
        tenant = current_principal().tenant_id
        task_id = parse_id(request.task_id, "task_id")
        after = resume_after(request, context)
        async for sent in self._watches.task(tenant, task_id, after):
            yield self._event(sent)

    async def WatchFleet(
        self, request: pb.WatchFleetRequest, context: Any
    ) -> AsyncIterator[pb.WatchEvent]:
        tenant = current_principal().tenant_id
        after = resume_after(request, context)
        async for sent in self._watches.fleet(tenant, after):
            yield self._event(sent)

    def _event(self, sent: Sent) -> pb.WatchEvent:
        """The message for `sent`; a change's is converted once and shared (never mutated)."""
        if not isinstance(sent.item, Change):
            return _event(sent)
        entry = sent.item.event
        key = (entry.tenant_id, entry.sequence)
        message = self._converted.get(key)
        if message is None:
            message = self._converted[key] = _event(sent)
            if len(self._converted) > CONVERTED:
                self._converted.popitem(last=False)
        return message


def resume_after(request: Any, context: Any) -> int | None:
    """Where the watch resumes: the request's after_sequence, else SSE's Last-Event-ID; None
    (neither): from a snapshot."""
    value: int | str
    if request.HasField("after_sequence"):
        value, field = request.after_sequence, "after_sequence"
    else:
        named = [text for key, text in context.invocation_metadata() or () if key == LAST_EVENT_ID]
        if not named:
            return None
        value, field = named[-1], "Last-Event-ID"
    try:
        after = int(value)
    except ValueError:
        after = -1
    if after < 0:
        raise InvalidArgument(
            "a watch resumes after a sequence it was sent",
            [FieldViolation(field, "must be a sequence (a whole number, not negative)")],
        )
    return after


def _event(sent: Sent) -> pb.WatchEvent:
    item = sent.item
    event = pb.WatchEvent(sequence=sent.sequence)
    if isinstance(item, Change):
        event.change.CopyFrom(event_to_proto(item.event))
    elif isinstance(item, HostState):
        event.host.CopyFrom(
            pb.HostState(host=host_to_proto(item.host), estop=host_estop_to_proto(item.stop))
        )
    elif isinstance(item, Command):
        event.command.CopyFrom(command_to_proto(item))
    elif isinstance(item, Task):
        event.task.CopyFrom(task_to_proto(item))
    elif isinstance(item, Telemetry):
        event.telemetry.CopyFrom(_telemetry(item.host_id, item))
    return event


def _telemetry(host_id: UUID, item: Telemetry) -> pb.RobotTelemetry:
    snapshot = item.snapshot
    return pb.RobotTelemetry(
        host_id=str(host_id),
        state=struct_of(snapshot.state),
        sample_time=timestamp(snapshot.sample_time),
        receive_time=timestamp(snapshot.receive_time),
    )
