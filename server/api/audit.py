"""AuditService: proto ⇄ domain for the audit trail, nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

from roz.v1 import audit_pb2 as pb
from roz.v1 import audit_pb2_grpc

from server.api.convert import datetime_of, parse_id, struct_of, timestamp
from server.api.principal import current_principal
from server.domain.audit import AuditEvent, AuditQuery, Break, Protocol, Verdict
from server.domain.errors import FieldViolation, InvalidArgument
from server.storage.audit import AuditRepository

PROTOCOL_TO_PROTO = {
    Protocol.SERVER: pb.Actor.PROTOCOL_UNSPECIFIED,
    Protocol.GRPC: pb.Actor.PROTOCOL_GRPC,
    Protocol.GRPC_WEB: pb.Actor.PROTOCOL_GRPC_WEB,
    Protocol.REST: pb.Actor.PROTOCOL_REST,
    Protocol.CONNECT: pb.Actor.PROTOCOL_CONNECT,
}
BREAK_TO_PROTO = {
    None: pb.VerifyAuditEventsResponse.BREAK_UNSPECIFIED,
    Break.ALTERED: pb.VerifyAuditEventsResponse.BREAK_ALTERED,
    Break.MISSING: pb.VerifyAuditEventsResponse.BREAK_MISSING,
    Break.UNLINKED: pb.VerifyAuditEventsResponse.BREAK_UNLINKED,
    Break.TRUNCATED: pb.VerifyAuditEventsResponse.BREAK_TRUNCATED,
}
_ORDERS = {"": False, "sequence desc": False, "sequence": True, "sequence asc": True}


def _id(value: UUID | None) -> str:
    return "" if value is None else str(value)


def event_to_proto(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        sequence=event.sequence,
        kind=event.kind,
        event_time=timestamp(event.event_time),
        actor=pb.Actor(
            api_key_id=_id(event.actor_key_id),
            host_id=_id(event.actor_host_id),
            protocol=PROTOCOL_TO_PROTO[event.protocol],
            request_id=event.request_id,
        ),
        host_id=_id(event.host_id),
        environment_id=_id(event.environment_id),
        subject_id=_id(event.subject_id),
        detail=struct_of(json.loads(event.detail_json)),
        hash=event.hash.hex(),
        previous_hash="" if event.previous_hash is None else event.previous_hash.hex(),
    )


def verdict_to_proto(verdict: Verdict) -> pb.VerifyAuditEventsResponse:
    return pb.VerifyAuditEventsResponse(
        intact=verdict.intact,
        verified_entries=verdict.entries,
        head_sequence=verdict.head.last_sequence,
        head_hash="" if verdict.head.last_hash is None else verdict.head.last_hash.hex(),
        broken=BREAK_TO_PROTO[verdict.broken],
        broken_sequence=verdict.broken_sequence,
        description=verdict.description,
    )


def _optional_id(value: str, field: str) -> UUID | None:
    return parse_id(value, field) if value else None


def query_from_proto(request: pb.ListAuditEventsRequest) -> AuditQuery:
    order = " ".join(request.order_by.lower().split())
    if order not in _ORDERS:
        raise InvalidArgument(
            "order_by is not an order this list offers",
            [FieldViolation("order_by", "order_by is 'sequence desc' (the default) or 'sequence'")],
        )
    return AuditQuery(
        host_id=_optional_id(request.host_id, "host_id"),
        environment_id=_optional_id(request.environment_id, "environment_id"),
        subject_id=_optional_id(request.subject_id, "subject_id"),
        kind=request.kind or None,
        after_sequence=request.after_sequence or None,
        start_time=datetime_of(request.start_time, "start_time")
        if request.HasField("start_time")
        else None,
        end_time=datetime_of(request.end_time, "end_time")
        if request.HasField("end_time")
        else None,
        ascending=_ORDERS[order],
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], AuditRepository]) -> None:
        self._repository = repository

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant,
            query_from_proto(request),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListAuditEventsResponse(
            audit_events=[event_to_proto(event) for event in page.items],
            next_page_token=page.next_page_token,
        )

    async def VerifyAuditEvents(
        self, request: pb.VerifyAuditEventsRequest, context: Any
    ) -> pb.VerifyAuditEventsResponse:
        tenant = current_principal().tenant_id
        return verdict_to_proto(await self._repository().verify(tenant))
