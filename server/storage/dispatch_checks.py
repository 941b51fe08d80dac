"""The check at dispatch, in the transaction that reads what a robot's stream sends next.

Every PENDING command of the batch is checked against its host's environment's policies as they
are now (one query for the batch: a batch is one host's); a refused one fails right there, with
its refusal as reason and result, and is sent FAILED (server/domain/dispatch_checks.py says
what is refused and why). The failure is conditional on the command still being PENDING under
its row lock, so an operator's cancel or a robot's report that commits first wins, and the one
that waits for us finds the command FAILED.

A command that was sent before (the delivery has a send time: this is a resend after a
reconnect) may be held by its robot, which could start it: its failure also numbers a
cancellation for it, as a cancel by an operator would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from server.domain.commands import Command, CommandState, check_transition
from server.domain.dispatch_checks import Refusal, refusal_at_dispatch
from server.domain.robot_deliveries import Delivery, DeliveryKind
from server.storage.commands import commands_by_id
from server.storage.robot_deliveries import enqueue_cancellation
from server.storage.safety_policies import latest_policies_for_host

# The server's move (actor NULL), written with its history row; the row lock the UPDATE takes
# re-reads the state, so a command that left PENDING meanwhile is left alone.
_FAIL = (
    "WITH failed AS ("
    " UPDATE roz.commands SET state = 'failed', result = %(result)s,"
    " update_time = greatest(now(), update_time)"
    " WHERE id = %(id)s AND state = 'pending' RETURNING tenant_id, id)"
    " INSERT INTO roz.command_transitions"
    " (tenant_id, command_id, from_state, to_state, reason, actor_key_id)"
    " SELECT tenant_id, id, 'pending', 'failed', %(reason)s, NULL FROM failed"
    " RETURNING command_id"
)


async def check_at_dispatch(
    conn: AsyncConnection[Any],
    host_id: UUID,
    deliveries: Sequence[Delivery],
    commands: Mapping[UUID, Command],
    now: datetime,
) -> dict[UUID, Command]:
    """In the caller's tenant transaction: checks the PENDING commands that `deliveries` (the
    host's next batch) carry, fails the refused ones, and returns `commands` with those as they
    are now."""
    due = [
        (delivery, command)
        for delivery in deliveries
        if delivery.kind is DeliveryKind.COMMAND
        and (command := commands.get(delivery.item_id)) is not None
        and command.state is CommandState.PENDING
    ]
    if not due:
        return dict(commands)
    policies = await latest_policies_for_host(conn, host_id)
    refused: list[UUID] = []
    for delivery, command in due:
        refusal = refusal_at_dispatch(command, policies, now)
        if refusal is None:
            continue
        refused.append(command.id)
        failed = await fail_at_dispatch(conn, command.id, refusal)
        if failed and delivery.deliver_time is not None:
            await enqueue_cancellation(conn, host_id, DeliveryKind.COMMAND, command.id)
    if not refused:
        return dict(commands)
    # As they are now: FAILED, or whatever they became meanwhile (another stream of the host's
    # may have failed them first), never the PENDING read above.
    return {**commands, **await commands_by_id(conn, refused)}


async def fail_at_dispatch(conn: AsyncConnection[Any], command_id: UUID, refusal: Refusal) -> bool:
    """The server fails a PENDING command it may not send; False (nothing written) when the
    command is no longer PENDING."""
    check_transition(CommandState.PENDING, CommandState.FAILED, by_server=True)
    row = await (
        await conn.execute(
            _FAIL,
            {"id": command_id, "result": Jsonb(refusal.result()), "reason": refusal.reason},
        )
    ).fetchone()
    return row is not None
