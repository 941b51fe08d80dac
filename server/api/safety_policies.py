"""SafetyPolicyService: proto ⇄ domain for safety policies and their versions, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from google.protobuf import empty_pb2
from roz.v1 import safety_policies_pb2 as pb
from roz.v1 import safety_policies_pb2_grpc

from server.api.convert import duration, parse_id, timedelta_of, timestamp
from server.api.principal import current_principal
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.safety_policies import (
    LIMIT_UNITS,
    Box,
    Limits,
    Point,
    Prism,
    SafetyPolicy,
    SafetyPolicyDraft,
    Workspace,
)
from server.storage.safety_policies import SafetyPolicyRepository


def _point_to_proto(point: Point) -> pb.Point:
    return pb.Point(x=point.x, y=point.y, z=point.z)


def _point_of(message: pb.Point) -> Point:
    return Point(x=message.x, y=message.y, z=message.z)


def safety_policy_to_proto(policy: SafetyPolicy) -> pb.SafetyPolicy:
    limits = pb.Limits()
    for name in LIMIT_UNITS:
        value = getattr(policy.limits, name)
        if value is not None:
            setattr(limits, name, value)
    return pb.SafetyPolicy(
        id=str(policy.id),
        name=policy.name,
        description=policy.description,
        version=policy.version,
        limits=limits,
        workspace=pb.Workspace(
            boxes=[
                pb.Box(min=_point_to_proto(box.min), max=_point_to_proto(box.max))
                for box in policy.workspace.boxes
            ],
            prisms=[
                pb.Prism(
                    vertices=[_point_to_proto(vertex) for vertex in prism.vertices],
                    min_z=prism.min_z,
                    max_z=prism.max_z,
                )
                for prism in policy.workspace.prisms
            ],
        ),
        allowed_command_types=sorted(policy.allowed_command_types),
        denied_command_types=sorted(policy.denied_command_types),
        approval_command_types=sorted(policy.approval_command_types),
        create_time=timestamp(policy.create_time),
        update_time=timestamp(policy.update_time),
        approval_ttl=duration(policy.approval_ttl),
        heartbeat_window=duration(policy.heartbeat_window),
    )


def draft_from_proto(message: pb.SafetyPolicy) -> SafetyPolicyDraft:
    """The settable fields; id, version and the times are output-only and ignored here."""
    limits = Limits(
        **{
            name: getattr(message.limits, name) if message.limits.HasField(name) else None
            for name in LIMIT_UNITS
        }
    )
    workspace = Workspace(
        boxes=tuple(
            Box(min=_point_of(box.min), max=_point_of(box.max)) for box in message.workspace.boxes
        ),
        prisms=tuple(
            Prism(
                vertices=tuple(_point_of(vertex) for vertex in prism.vertices),
                min_z=prism.min_z,
                max_z=prism.max_z,
            )
            for prism in message.workspace.prisms
        ),
    )
    return SafetyPolicyDraft(
        name=message.name,
        description=message.description,
        limits=limits,
        workspace=workspace,
        allowed_command_types=tuple(message.allowed_command_types),
        denied_command_types=tuple(message.denied_command_types),
        approval_command_types=tuple(message.approval_command_types),
        approval_ttl=_timedelta_of(message, "approval_ttl"),
        heartbeat_window=_timedelta_of(message, "heartbeat_window"),
    )


def _timedelta_of(message: pb.SafetyPolicy, name: str) -> timedelta | None:
    if not message.HasField(name):
        return None
    return timedelta_of(getattr(message, name), f"safety_policy.{name}")


class SafetyPolicyServicer(safety_policies_pb2_grpc.SafetyPolicyServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], SafetyPolicyRepository]) -> None:
        self._repository = repository

    async def CreateSafetyPolicy(
        self, request: pb.CreateSafetyPolicyRequest, context: Any
    ) -> pb.SafetyPolicy:
        tenant = current_principal().tenant_id
        created = await self._repository().create(tenant, draft_from_proto(request.safety_policy))
        return safety_policy_to_proto(created)

    async def ListSafetyPolicies(
        self, request: pb.ListSafetyPoliciesRequest, context: Any
    ) -> pb.ListSafetyPoliciesResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListSafetyPoliciesResponse(
            safety_policies=[safety_policy_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetSafetyPolicy(
        self, request: pb.GetSafetyPolicyRequest, context: Any
    ) -> pb.SafetyPolicy:
        tenant = current_principal().tenant_id
        policy_id = parse_id(request.id)
        if request.version < 0:
            raise InvalidArgument(
                "version must not be negative",
                [FieldViolation("version", "version is 0 (the latest) or a version number")],
            )
        found = await self._repository().get(tenant, policy_id, request.version or None)
        return safety_policy_to_proto(found)

    async def UpdateSafetyPolicy(
        self, request: pb.UpdateSafetyPolicyRequest, context: Any
    ) -> pb.SafetyPolicy:
        tenant = current_principal().tenant_id
        policy_id = parse_id(request.id)
        if request.safety_policy.id and request.safety_policy.id != request.id:
            raise InvalidArgument(
                "the safety policy's id differs from the id in the request",
                [FieldViolation("safety_policy.id", "must be empty or equal to id")],
            )
        updated = await self._repository().update(
            tenant, policy_id, draft_from_proto(request.safety_policy)
        )
        return safety_policy_to_proto(updated)

    async def DeleteSafetyPolicy(
        self, request: pb.DeleteSafetyPolicyRequest, context: Any
    ) -> empty_pb2.Empty:
        tenant = current_principal().tenant_id
        await self._repository().delete(tenant, parse_id(request.id))
        return empty_pb2.Empty()
