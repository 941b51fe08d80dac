"""What a robot's own code plugs into the client: handlers for commands and tasks, the outcome
they return, the progress they publish, and the hook that stops motion."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from roz_robot.record import ItemKind


@dataclass(frozen=True)
class Outcome:
    """How a command or task ended: `ok` (COMPLETED / SUCCEEDED) or not (FAILED, `reason`).

    `result` is any JSON object; the server keeps it with the item (a command's `result`, a
    task's `output`).
    """

    ok: bool
    reason: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)


Publish = Callable[[Mapping[str, Any]], Awaitable[None]]


class Progress:
    """Lets a running handler publish telemetry about its item (e.g. a fraction, a position).

    Each sample is the robot's telemetry (latest wins, like `RobotClient.publish`) with the
    item's id added as `command_id` or `task_id`.
    """

    def __init__(self, kind: ItemKind, item_id: str, publish: Publish) -> None:
        self.kind = kind
        self.item_id = item_id
        self._publish = publish

    async def publish(self, state: Mapping[str, Any]) -> None:
        await self._publish({**state, f"{self.kind.value}_id": self.item_id})


# The generated messages are typed Any here (mypy does not read gen/), so these say it in words:
# a CommandHandler gets a roz.v1.Command, a TaskHandler a roz.v1.Task.
CommandHandler = Callable[[Any, Progress], Awaitable[Outcome]]
TaskHandler = Callable[[Any, Progress], Awaitable[Outcome]]
# Called with a reason whenever motion must stop: a cancellation of the running item, the link
# lost (the deadman), the client stopping. Plain functions and coroutine functions both work.
StopHook = Callable[[str], Awaitable[None] | None]


async def call_stop_hook(hook: StopHook, reason: str) -> None:
    outcome = hook(reason)
    if inspect.isawaitable(outcome):
        await outcome
