"""EstopService: proto ⇄ domain for e-stops of hosts and environments, nothing else."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from uuid import UUID

from roz.v1 import estop_pb2 as pb
from roz.v1 import estop_pb2_grpc

from server.api.convert import parse_id, timestamp
from server.api.principal import current_principal
from server.domain.estop import (
    EnvironmentStop,
    HostStop,
    Latch,
    Source,
    Target,
    TargetKind,
)
from server.storage.estops import EstopRepository

SOURCE_TO_PROTO = {
    Source.OPERATOR: pb.EstopLatch.SOURCE_OPERATOR,
    Source.ROBOT_BUTTON: pb.EstopLatch.SOURCE_ROBOT_BUTTON,
    Source.ROBOT_DEADMAN: pb.EstopLatch.SOURCE_ROBOT_DEADMAN,
    Source.ROBOT_GUARD: pb.EstopLatch.SOURCE_ROBOT_GUARD,
}
SOURCE_FROM_PROTO = {value: source for source, value in SOURCE_TO_PROTO.items()}

# Told the latch after each change commits, so this process's robots hear it without waiting
# for the notification to come back from the database.
Announce = Callable[[UUID, Target, Latch], None]


@functools.lru_cache(maxsize=1024)
def latch_to_proto(latch: Latch) -> pb.EstopLatch:
    """A latch's message, built once per latch state: an environment's engage sends the same
    latch to every robot in it. Shared: never mutate the result."""
    return pb.EstopLatch(
        engaged=latch.engaged,
        epoch=latch.epoch,
        reason=latch.reason,
        source=SOURCE_TO_PROTO[latch.source] if latch.epoch else pb.EstopLatch.SOURCE_UNSPECIFIED,
        actor="" if latch.actor is None else str(latch.actor),
        change_time=timestamp(latch.change_time),
    )


def host_estop_to_proto(stop: HostStop, *, with_acknowledgement: bool = True) -> pb.HostEstop:
    message = pb.HostEstop(
        host_id=str(stop.host_id),
        stopped=stop.stopped,
        host=latch_to_proto(stop.host),
        environment_id="" if stop.environment_id is None else str(stop.environment_id),
        environment=latch_to_proto(stop.environment),
    )
    ack = stop.acknowledgement
    if with_acknowledgement and ack is not None:
        message.acknowledgement.CopyFrom(
            pb.EstopAcknowledgement(
                connected=ack.connected,
                acknowledged=stop.acknowledged,
                host_epoch=ack.host_epoch,
                environment_epoch=ack.environment_epoch,
                acknowledge_time=timestamp(ack.acknowledge_time),
            )
        )
    return message


def environment_estop_to_proto(stop: EnvironmentStop) -> pb.EnvironmentEstop:
    return pb.EnvironmentEstop(
        environment_id=str(stop.environment_id),
        latch=latch_to_proto(stop.latch),
        hosts=[host_estop_to_proto(host) for host in stop.hosts],
    )


class EstopServicer(estop_pb2_grpc.EstopServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], EstopRepository], announce: Announce) -> None:
        self._repository = repository
        self._announce = announce

    async def EngageHostEstop(
        self, request: pb.EngageHostEstopRequest, context: Any
    ) -> pb.HostEstop:
        target = Target(TargetKind.HOST, parse_id(request.host_id, "host_id"))
        return host_estop_to_proto(_host(await self._engage(target, request.reason)))

    async def ClearHostEstop(self, request: pb.ClearHostEstopRequest, context: Any) -> pb.HostEstop:
        target = Target(TargetKind.HOST, parse_id(request.host_id, "host_id"))
        return host_estop_to_proto(_host(await self._clear(target, request.reason)))

    async def GetHostEstop(self, request: pb.GetHostEstopRequest, context: Any) -> pb.HostEstop:
        target = Target(TargetKind.HOST, parse_id(request.host_id, "host_id"))
        found = await self._repository().get(current_principal().tenant_id, target)
        return host_estop_to_proto(_host(found))

    async def EngageEnvironmentEstop(
        self, request: pb.EngageEnvironmentEstopRequest, context: Any
    ) -> pb.EnvironmentEstop:
        target = Target(TargetKind.ENVIRONMENT, parse_id(request.environment_id, "environment_id"))
        return environment_estop_to_proto(_environment(await self._engage(target, request.reason)))

    async def ClearEnvironmentEstop(
        self, request: pb.ClearEnvironmentEstopRequest, context: Any
    ) -> pb.EnvironmentEstop:
        target = Target(TargetKind.ENVIRONMENT, parse_id(request.environment_id, "environment_id"))
        return environment_estop_to_proto(_environment(await self._clear(target, request.reason)))

    async def GetEnvironmentEstop(
        self, request: pb.GetEnvironmentEstopRequest, context: Any
    ) -> pb.EnvironmentEstop:
        target = Target(TargetKind.ENVIRONMENT, parse_id(request.environment_id, "environment_id"))
        found = await self._repository().get(current_principal().tenant_id, target)
        return environment_estop_to_proto(_environment(found))

    async def _engage(self, target: Target, reason: str) -> HostStop | EnvironmentStop:
        """Engages, tells this process's robots, then reads the e-stop for the answer (after
        the commit: the robots hear of it first)."""
        principal = current_principal()
        repository = self._repository()
        latch = await repository.engage(
            principal.tenant_id,
            target,
            reason=reason,
            source=Source.OPERATOR,
            actor=principal.key_id,
        )
        self._announce(principal.tenant_id, target, latch)
        return await repository.get(principal.tenant_id, target)

    async def _clear(self, target: Target, reason: str) -> HostStop | EnvironmentStop:
        principal = current_principal()
        repository = self._repository()
        latch = await repository.clear(
            principal.tenant_id, target, reason=reason, actor=principal.key_id
        )
        if latch is not None:
            self._announce(principal.tenant_id, target, latch)
        return await repository.get(principal.tenant_id, target)


def _host(stop: HostStop | EnvironmentStop) -> HostStop:
    assert isinstance(stop, HostStop)
    return stop


def _environment(stop: HostStop | EnvironmentStop) -> EnvironmentStop:
    assert isinstance(stop, EnvironmentStop)
    return stop
