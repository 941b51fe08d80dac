"""TaskService: proto ⇄ domain for tasks, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roz.v1 import tasks_pb2 as pb
from roz.v1 import tasks_pb2_grpc

from server.api.convert import duration, parse_id, struct_of, timedelta_of, timestamp
from server.api.principal import current_principal
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.tasks import (
    Task,
    TaskDraft,
    TaskState,
    TaskTransition,
    check_idempotency_key,
    parse_optional_id,
)
from server.storage.tasks import TaskRepository

# The REST gateway forwards the Idempotency-Key header as this metadata.
IDEMPOTENCY_METADATA = "idempotency-key"

STATE_TO_PROTO: dict[TaskState, pb.Task.State] = {
    TaskState.PENDING: pb.Task.STATE_PENDING,
    TaskState.QUEUED: pb.Task.STATE_QUEUED,
    TaskState.RUNNING: pb.Task.STATE_RUNNING,
    TaskState.SUCCEEDED: pb.Task.STATE_SUCCEEDED,
    TaskState.FAILED: pb.Task.STATE_FAILED,
    TaskState.CANCELLED: pb.Task.STATE_CANCELLED,
    TaskState.TIMED_OUT: pb.Task.STATE_TIMED_OUT,
    TaskState.SAFETY_STOPPED: pb.Task.STATE_SAFETY_STOPPED,
}
_STATE_FROM_PROTO: dict[int, TaskState] = {
    int(number): state for state, number in STATE_TO_PROTO.items()
}


def state_from_proto(number: int, field: str = "state") -> TaskState | None:
    """None for STATE_UNSPECIFIED; an unknown number is the client's mistake."""
    if number == pb.Task.STATE_UNSPECIFIED:
        return None
    state = _STATE_FROM_PROTO.get(number)
    if state is None:
        raise InvalidArgument(
            f"unknown {field}", [FieldViolation(field, f"{number} is not a task state")]
        )
    return state


def transition_to_proto(transition: TaskTransition) -> pb.TaskTransition:
    return pb.TaskTransition(
        from_state=(
            pb.Task.STATE_UNSPECIFIED
            if transition.from_state is None
            else STATE_TO_PROTO[transition.from_state]
        ),
        to_state=STATE_TO_PROTO[transition.to_state],
        reason=transition.reason,
        actor=str(transition.actor or ""),
        transition_time=timestamp(transition.transition_time),
    )


def task_to_proto(task: Task) -> pb.Task:
    return pb.Task(
        id=str(task.id),
        prompt=task.prompt,
        environment_id=str(task.environment_id),
        host_id=str(task.host_id or ""),
        timeout=duration(task.timeout),
        allowed_tools=task.allowed_tools,
        parent_task_id=str(task.parent_task_id or ""),
        labels=dict(task.labels),
        state=STATE_TO_PROTO[task.state],
        result=task.result,
        transitions=[transition_to_proto(t) for t in task.transitions],
        create_time=timestamp(task.create_time),
        update_time=timestamp(task.update_time),
        start_time=timestamp(task.start_time),
        end_time=timestamp(task.end_time),
        deliver_time=timestamp(task.deliver_time),
        acknowledge_time=timestamp(task.acknowledge_time),
        output=struct_of(dict(task.output)) if task.output is not None else None,
        trigger_id=str(task.trigger_id or ""),
        trigger_fire_id=str(task.trigger_fire_id or ""),
    )


def draft_from_proto(message: pb.Task) -> TaskDraft:
    return TaskDraft(
        prompt=message.prompt,
        environment_id=message.environment_id,
        host_id=message.host_id,
        timeout=timedelta_of(message.timeout, "timeout") if message.HasField("timeout") else None,
        allowed_tools=tuple(message.allowed_tools),
        parent_task_id=message.parent_task_id,
        labels=dict(message.labels),
    )


def _metadata_value(context: Any, name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == name:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""


class TaskServicer(tasks_pb2_grpc.TaskServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], TaskRepository]) -> None:
        self._repository = repository

    async def CreateTask(self, request: pb.CreateTaskRequest, context: Any) -> pb.Task:
        caller = current_principal()
        key = check_idempotency_key(
            request.idempotency_key, _metadata_value(context, IDEMPOTENCY_METADATA)
        )
        created = await self._repository().create(
            caller.tenant_id,
            draft_from_proto(request.task),
            actor=caller.key_id,
            idempotency_key=key,
        )
        return task_to_proto(created)

    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant,
            page_size=request.page_size,
            page_token=request.page_token,
            state=state_from_proto(request.state),
            environment_id=parse_optional_id(request.environment_id, "environment_id"),
            host_id=parse_optional_id(request.host_id, "host_id"),
        )
        return pb.ListTasksResponse(
            tasks=[task_to_proto(task) for task in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetTask(self, request: pb.GetTaskRequest, context: Any) -> pb.Task:
        tenant = current_principal().tenant_id
        return task_to_proto(await self._repository().get(tenant, parse_id(request.id)))

    async def TransitionTask(self, request: pb.TransitionTaskRequest, context: Any) -> pb.Task:
        caller = current_principal()
        task_id = parse_id(request.id)
        moved = await self._repository().transition(
            caller.tenant_id,
            task_id,
            state_from_proto(request.state),
            reason=request.reason,
            actor=caller.key_id,
        )
        return task_to_proto(moved)
