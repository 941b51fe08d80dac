"""CommandService: proto ⇄ domain for commands, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import empty_pb2
from roz.v1 import commands_pb2 as pb
from roz.v1 import commands_pb2_grpc

from server.api.convert import parse_id, plain_value, struct_of, timedelta_of, timestamp
from server.api.principal import current_principal
from server.domain.commands import (
    Command,
    CommandDraft,
    CommandState,
    CommandTransition,
    with_idempotency_key,
)
from server.domain.errors import FieldViolation, InvalidArgument
from server.storage.commands import CommandRepository

# The metadata the REST gateway forwards the Idempotency-Key header as (gRPC clients send it too).
IDEMPOTENCY_METADATA = "idempotency-key"
# google.protobuf.Duration's own range: ±10,000 years.

_STATE_TO_PROTO = {
    CommandState.AWAITING_APPROVAL: pb.Command.STATE_AWAITING_APPROVAL,
    CommandState.PENDING: pb.Command.STATE_PENDING,
    CommandState.RUNNING: pb.Command.STATE_RUNNING,
    CommandState.COMPLETED: pb.Command.STATE_COMPLETED,
    CommandState.FAILED: pb.Command.STATE_FAILED,
    CommandState.CANCELLED: pb.Command.STATE_CANCELLED,
    CommandState.TIMED_OUT: pb.Command.STATE_TIMED_OUT,
    CommandState.REJECTED: pb.Command.STATE_REJECTED,
}
_STATE_FROM_PROTO: dict[int, CommandState] = {
    value: state for state, value in _STATE_TO_PROTO.items()
}


def command_to_proto(command: Command) -> pb.Command:
    message = pb.Command(
        id=str(command.id) if command.stored else "",
        host_id=str(command.host_id),
        type=command.type,
        params=struct_of(command.params),
        idempotency_key=command.idempotency_key,
        state=_STATE_TO_PROTO[command.state],
        applied_policies=[
            pb.PolicyVersion(policy_id=str(applied.policy_id), version=applied.version)
            for applied in command.applied_policies
        ],
        transitions=[_transition_to_proto(item) for item in command.transitions],
        create_time=timestamp(command.create_time),
        update_time=timestamp(command.update_time),
        deliver_time=timestamp(command.deliver_time),
        acknowledge_time=timestamp(command.acknowledge_time),
        session_id="" if command.session_id is None else str(command.session_id),
        session_call_id=command.session_call_id or "",
    )
    if command.result is not None:
        message.result.CopyFrom(struct_of(dict(command.result)))
    if command.timeout is not None:
        message.timeout.FromTimedelta(command.timeout)
    return message


def _transition_to_proto(transition: CommandTransition) -> pb.CommandTransition:
    return pb.CommandTransition(
        from_state=(
            _STATE_TO_PROTO[transition.from_state]
            if transition.from_state is not None
            else pb.Command.STATE_UNSPECIFIED
        ),
        to_state=_STATE_TO_PROTO[transition.to_state],
        reason=transition.reason,
        actor=str(transition.actor) if transition.actor is not None else "",
        transition_time=timestamp(transition.transition_time),
    )


def draft_from_proto(message: pb.Command, field: str = "command") -> CommandDraft:
    return CommandDraft(
        host_id=message.host_id,
        type=message.type,
        params={
            key: plain_value(value, f"{field}.params.{key}")
            for key, value in message.params.fields.items()
        },
        idempotency_key=message.idempotency_key,
        timeout=timedelta_of(message.timeout, f"{field}.timeout")
        if message.HasField("timeout")
        else None,
    )


def state_from_proto(value: int, field: str = "state") -> CommandState:
    state: CommandState | None = _STATE_FROM_PROTO.get(value)
    if state is None:
        described = "state is required" if value == 0 else f"unknown state {value}"
        raise InvalidArgument(
            described,
            [FieldViolation(field, f"{described}; one of {', '.join(_names(_STATE_FROM_PROTO))}")],
        )
    return state


def _names(states: dict[Any, CommandState]) -> list[str]:
    return [pb.Command.State.Name(value) for value in states]


def _idempotency_header(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == IDEMPOTENCY_METADATA and isinstance(value, str):
            return value
    return None


class CommandServicer(commands_pb2_grpc.CommandServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], CommandRepository]) -> None:
        self._repository = repository

    async def CreateCommand(self, request: pb.CreateCommandRequest, context: Any) -> pb.Command:
        principal = current_principal()
        draft = with_idempotency_key(
            draft_from_proto(request.command), _idempotency_header(context)
        )
        created = await self._repository().create(
            principal.tenant_id,
            draft,
            actor=principal.key_id,
            validate_only=request.validate_only,
        )
        return command_to_proto(created)

    async def GetCommand(self, request: pb.GetCommandRequest, context: Any) -> pb.Command:
        tenant = current_principal().tenant_id
        found = await self._repository().get(tenant, parse_id(request.id))
        return command_to_proto(found)

    async def ListCommands(
        self, request: pb.ListCommandsRequest, context: Any
    ) -> pb.ListCommandsResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant,
            page_size=request.page_size,
            page_token=request.page_token,
            host_id=parse_id(request.host_id, "host_id") if request.host_id else None,
            state=state_from_proto(request.state) if request.state else None,
        )
        return pb.ListCommandsResponse(
            commands=[command_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def TransitionCommand(
        self, request: pb.TransitionCommandRequest, context: Any
    ) -> pb.Command:
        principal = current_principal()
        changed = await self._repository().transition(
            principal.tenant_id,
            parse_id(request.id),
            state_from_proto(request.state),
            reason=request.reason,
            actor=principal.key_id,
        )
        return command_to_proto(changed)

    async def DeleteCommand(
        self, request: pb.DeleteCommandRequest, context: Any
    ) -> empty_pb2.Empty:
        principal = current_principal()
        await self._repository().delete(
            principal.tenant_id, parse_id(request.id), actor=principal.key_id
        )
        return empty_pb2.Empty()
