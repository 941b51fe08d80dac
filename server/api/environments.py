"""EnvironmentService: proto ⇄ domain for environments, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import empty_pb2
from roz.v1 import environments_pb2 as pb
from roz.v1 import environments_pb2_grpc

from server.api.convert import dict_of, parse_id, struct_of, timestamp
from server.api.principal import current_principal
from server.domain.environments import Environment, EnvironmentDraft, EnvironmentKind
from server.domain.environments import parse_update_mask as parse_mask
from server.domain.errors import FieldViolation, InvalidArgument
from server.storage.environments import EnvironmentRepository

_KIND_TO_PROTO = {
    EnvironmentKind.SIMULATION: pb.Environment.KIND_SIMULATION,
    EnvironmentKind.HARDWARE: pb.Environment.KIND_HARDWARE,
    EnvironmentKind.HYBRID: pb.Environment.KIND_HYBRID,
}
_KIND_FROM_PROTO = {value: kind for kind, value in _KIND_TO_PROTO.items()}
# An unspecified kind is the documented default.
_KIND_FROM_PROTO[pb.Environment.KIND_UNSPECIFIED] = EnvironmentKind.SIMULATION


def environment_to_proto(environment: Environment) -> pb.Environment:
    return pb.Environment(
        id=str(environment.id),
        name=environment.name,
        description=environment.description,
        kind=_KIND_TO_PROTO[environment.kind],
        allowed_tools=environment.allowed_tools,
        safety_policy_ids=[str(value) for value in environment.safety_policy_ids],
        host_ids=[str(value) for value in environment.host_ids],
        config=struct_of(environment.config),
        create_time=timestamp(environment.create_time),
        update_time=timestamp(environment.update_time),
    )


def draft_from_proto(message: pb.Environment, field: str = "environment") -> EnvironmentDraft:
    kind = _KIND_FROM_PROTO.get(message.kind)
    if kind is None:
        raise InvalidArgument(
            "the environment is not valid",
            [FieldViolation(f"{field}.kind", f"unknown kind {message.kind}")],
        )
    return EnvironmentDraft(
        name=message.name,
        description=message.description,
        kind=kind,
        allowed_tools=tuple(message.allowed_tools),
        safety_policy_ids=tuple(message.safety_policy_ids),
        # host_ids is output-only (derived from the hosts' environment_id): ignored, as AIP-203
        # asks, so a client may send back what it read.
        config=dict_of(message.config, f"{field}.config"),
    )


class EnvironmentServicer(environments_pb2_grpc.EnvironmentServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], EnvironmentRepository]) -> None:
        self._repository = repository

    async def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, context: Any
    ) -> pb.Environment:
        tenant = current_principal().tenant_id
        created = await self._repository().create(tenant, draft_from_proto(request.environment))
        return environment_to_proto(created)

    async def GetEnvironment(
        self, request: pb.GetEnvironmentRequest, context: Any
    ) -> pb.Environment:
        tenant = current_principal().tenant_id
        found = await self._repository().get(tenant, parse_id(request.id))
        return environment_to_proto(found)

    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: Any
    ) -> pb.ListEnvironmentsResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListEnvironmentsResponse(
            environments=[environment_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateEnvironment(
        self, request: pb.UpdateEnvironmentRequest, context: Any
    ) -> pb.Environment:
        tenant = current_principal().tenant_id
        environment_id = parse_id(request.id)
        if request.environment.id and request.environment.id != request.id:
            raise InvalidArgument(
                "the environment's id differs from the id in the request",
                [FieldViolation("environment.id", "must be empty or equal to id")],
            )
        mask = parse_mask(request.update_mask.paths) if request.HasField("update_mask") else None
        updated = await self._repository().update(
            tenant, environment_id, draft_from_proto(request.environment), mask
        )
        return environment_to_proto(updated)

    async def DeleteEnvironment(
        self, request: pb.DeleteEnvironmentRequest, context: Any
    ) -> empty_pb2.Empty:
        tenant = current_principal().tenant_id
        await self._repository().delete(tenant, parse_id(request.id))
        return empty_pb2.Empty()
