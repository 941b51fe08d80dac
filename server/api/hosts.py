"""HostService: proto ⇄ domain for hosts and their status history, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import empty_pb2
from roz.v1 import hosts_pb2 as pb
from roz.v1 import hosts_pb2_grpc

from server.api.convert import parse_id, timestamp
from server.api.principal import current_principal
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.hosts import (
    Host,
    HostDraft,
    HostKind,
    HostStatus,
    HostStatusChange,
    StatusChange,
)
from server.domain.hosts import parse_update_mask as parse_mask
from server.storage.hosts import HostRepository

_KIND_TO_PROTO = {HostKind.EDGE: pb.Host.KIND_EDGE, HostKind.CLOUD: pb.Host.KIND_CLOUD}
_KIND_FROM_PROTO = {value: kind for kind, value in _KIND_TO_PROTO.items()}
# An unspecified kind is the documented default: most hosts are robots registering themselves.
_KIND_FROM_PROTO[pb.Host.KIND_UNSPECIFIED] = HostKind.EDGE

_STATUS_TO_PROTO = {
    HostStatus.ONLINE: pb.Host.STATUS_ONLINE,
    HostStatus.OFFLINE: pb.Host.STATUS_OFFLINE,
    HostStatus.DEGRADED: pb.Host.STATUS_DEGRADED,
    HostStatus.MAINTENANCE: pb.Host.STATUS_MAINTENANCE,
}
_STATUS_FROM_PROTO = {value: status for status, value in _STATUS_TO_PROTO.items()}


def host_to_proto(host: Host) -> pb.Host:
    return pb.Host(
        id=str(host.id),
        name=host.name,
        kind=_KIND_TO_PROTO[host.kind],
        environment_id="" if host.environment_id is None else str(host.environment_id),
        capabilities=host.capabilities,
        labels=host.labels,
        status=_STATUS_TO_PROTO[host.status],
        last_seen_time=timestamp(host.last_seen_time),
        create_time=timestamp(host.create_time),
        update_time=timestamp(host.update_time),
    )


def status_change_to_proto(change: HostStatusChange) -> pb.HostStatusChange:
    return pb.HostStatusChange(
        id=str(change.id),
        host_id=str(change.host_id),
        from_status=(
            pb.Host.STATUS_UNSPECIFIED
            if change.from_status is None
            else _STATUS_TO_PROTO[change.from_status]
        ),
        to_status=_STATUS_TO_PROTO[change.to_status],
        reason=change.reason,
        changed_by_key_id="" if change.changed_by_key_id is None else str(change.changed_by_key_id),
        create_time=timestamp(change.create_time),
    )


def draft_from_proto(message: pb.Host, field: str = "host") -> HostDraft:
    """The settable fields; status and the times are output-only and ignored here."""
    kind = _KIND_FROM_PROTO.get(message.kind)
    if kind is None:
        raise InvalidArgument(
            "the host is not valid",
            [FieldViolation(f"{field}.kind", f"unknown kind {message.kind}")],
        )
    return HostDraft(
        name=message.name,
        kind=kind,
        environment_id=message.environment_id or None,
        capabilities=tuple(message.capabilities),
        labels=dict(message.labels),
    )


class HostServicer(hosts_pb2_grpc.HostServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], HostRepository]) -> None:
        self._repository = repository

    async def CreateHost(self, request: pb.CreateHostRequest, context: Any) -> pb.Host:
        principal = current_principal()
        created = await self._repository().create(
            principal.tenant_id, draft_from_proto(request.host), principal.key_id
        )
        return host_to_proto(created)

    async def ListHosts(self, request: pb.ListHostsRequest, context: Any) -> pb.ListHostsResponse:
        tenant = current_principal().tenant_id
        status = None
        if request.status != pb.Host.STATUS_UNSPECIFIED:
            status = _STATUS_FROM_PROTO.get(request.status)
            if status is None:
                raise InvalidArgument(
                    "status is not a host status",
                    [FieldViolation("status", f"unknown status {request.status}")],
                )
        environment_id = (
            parse_id(request.environment_id, "environment_id") if request.environment_id else None
        )
        page = await self._repository().list(
            tenant,
            page_size=request.page_size,
            page_token=request.page_token,
            status=status,
            environment_id=environment_id,
        )
        return pb.ListHostsResponse(
            hosts=[host_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetHost(self, request: pb.GetHostRequest, context: Any) -> pb.Host:
        tenant = current_principal().tenant_id
        return host_to_proto(await self._repository().get(tenant, parse_id(request.id)))

    async def UpdateHostStatus(self, request: pb.UpdateHostStatusRequest, context: Any) -> pb.Host:
        principal = current_principal()
        host_id = parse_id(request.id)
        change = StatusChange.of(_STATUS_FROM_PROTO.get(request.status), request.reason)
        updated = await self._repository().update_status(
            principal.tenant_id, host_id, change, principal.key_id
        )
        return host_to_proto(updated)

    async def ListHostStatusChanges(
        self, request: pb.ListHostStatusChangesRequest, context: Any
    ) -> pb.ListHostStatusChangesResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list_status_changes(
            tenant,
            parse_id(request.host_id, "host_id"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListHostStatusChangesResponse(
            status_changes=[status_change_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateHost(self, request: pb.UpdateHostRequest, context: Any) -> pb.Host:
        tenant = current_principal().tenant_id
        host_id = parse_id(request.id)
        if request.host.id and request.host.id != request.id:
            raise InvalidArgument(
                "the host's id differs from the id in the request",
                [FieldViolation("host.id", "must be empty or equal to id")],
            )
        mask = parse_mask(request.update_mask.paths) if request.HasField("update_mask") else None
        updated = await self._repository().update(
            tenant, host_id, draft_from_proto(request.host), mask
        )
        return host_to_proto(updated)

    async def DeleteHost(self, request: pb.DeleteHostRequest, context: Any) -> empty_pb2.Empty:
        tenant = current_principal().tenant_id
        await self._repository().delete(tenant, parse_id(request.id))
        return empty_pb2.Empty()
