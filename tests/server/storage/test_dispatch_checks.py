"""The check at dispatch in the database: the stream's read fails what the environment's current
policies refuse (a recorded move by the server, with the violations), sends it FAILED in its
place in the log, and leaves the rest PENDING; approvals expire at dispatch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.domain.commands import CommandDraft, CommandState
from server.domain.dispatch_checks import APPROVAL_EXPIRED, APPROVAL_REQUIRED, Refusal
from server.domain.environments import EnvironmentDraft
from server.domain.errors import ErrorReason
from server.domain.robot_deliveries import DeliveryKind
from server.domain.safety import COMMAND_TYPE_DENIED, SAFETY_LIMIT_EXCEEDED
from server.domain.safety_policies import (
    Limits,
    SafetyPolicy,
    SafetyPolicyDraft,
    describe_duration,
)
from server.storage.commands import CommandRepository
from server.storage.database import Database
from server.storage.dispatch_checks import fail_at_dispatch
from server.storage.environments import EnvironmentRepository
from server.storage.robot_deliveries import RobotDeliveryRepository
from server.storage.robot_links import RobotLinkRepository
from server.storage.safety_policies import SafetyPolicyRepository
from server.storage.tenancy import tenant_transaction
from tests.server.conftest import TenantWithKey, new_host

S = CommandState
K = DeliveryKind
TTL = timedelta(minutes=5)
SENT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ACTOR = uuid.uuid4()


@pytest.fixture
def commands(database: Database) -> CommandRepository:
    return CommandRepository(database.pool)


@pytest.fixture
def policies(database: Database) -> SafetyPolicyRepository:
    return SafetyPolicyRepository(database.pool)


@pytest.fixture
def links(database: Database) -> RobotLinkRepository:
    return RobotLinkRepository(database.pool)


class Cell:
    """A host in an environment bound by one policy that a test tightens."""

    def __init__(
        self,
        database: Database,
        tenant: TenantWithKey,
        policies: SafetyPolicyRepository,
        environments: EnvironmentRepository,
    ) -> None:
        self.database = database
        self.tenant = tenant
        self.policies = policies
        self.environments = environments
        self.policy: SafetyPolicy | None = None
        self.host = uuid.UUID(int=0)

    async def open(self, draft: SafetyPolicyDraft) -> Cell:
        self.policy = await self.policies.create(self.tenant.id, draft)
        environment = await self.environments.create(
            self.tenant.id,
            EnvironmentDraft(name=f"cell-{uuid.uuid4().hex[:8]}", safety_policy_ids=[self.id]),
        )
        self.host = await new_host(self.database, self.tenant, environment.id)
        return self

    @property
    def id(self) -> uuid.UUID:
        assert self.policy is not None
        return self.policy.id

    async def tighten(self, draft: SafetyPolicyDraft) -> SafetyPolicy:
        self.policy = await self.policies.update(self.tenant.id, self.id, draft)
        return self.policy


@pytest.fixture
def cell(
    database: Database,
    tenant_a: TenantWithKey,
    policies: SafetyPolicyRepository,
    environments: EnvironmentRepository,
) -> Cell:
    return Cell(database, tenant_a, policies, environments)


def move(host: uuid.UUID, type_: str = "move_to", **params: float) -> CommandDraft:
    return CommandDraft(host_id=host, type=type_, params=params)


def named(**fields: object) -> SafetyPolicyDraft:
    return SafetyPolicyDraft(name="cell", **fields)  # type: ignore[arg-type]


async def test_a_command_a_tightened_policy_forbids_is_failed_and_sent_failed(
    cell: Cell,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    links: RobotLinkRepository,
) -> None:
    await cell.open(named(limits=Limits(max_linear_velocity=2.0)))
    fast = await commands.create(tenant_a.id, move(cell.host, velocity=1.5), actor=ACTOR)
    slow = await commands.create(tenant_a.id, move(cell.host, velocity=0.2), actor=ACTOR)
    welds = await commands.create(tenant_a.id, move(cell.host, "weld"), actor=ACTOR)
    assert (fast.state, slow.state, welds.state) == (S.PENDING, S.PENDING, S.PENDING)
    tightened = await cell.tighten(
        named(limits=Limits(max_linear_velocity=0.5), denied_command_types=("weld",))
    )

    batch = await links.outgoing(tenant_a.id, cell.host, 0, 100)

    # Every number is sent, in order: the refused ones in their FAILED state.
    assert [(d.sequence, d.kind, d.item_id) for d, _ in batch] == [
        (1, K.COMMAND, fast.id),
        (2, K.COMMAND, slow.id),
        (3, K.COMMAND, welds.id),
    ]
    sent = {item.id: item for _, item in batch if item is not None}
    assert (sent[fast.id].state, sent[slow.id].state, sent[welds.id].state) == (
        S.FAILED,
        S.PENDING,
        S.FAILED,
    )
    stored = await commands.get(tenant_a.id, fast.id)
    assert (stored.state, stored.transitions) == (sent[fast.id].state, sent[fast.id].transitions)
    last = stored.transitions[-1]
    assert (last.from_state, last.to_state, last.actor) == (S.PENDING, S.FAILED, None)
    assert last.reason == (
        "refused at dispatch: the command violates 1 safety constraint: velocity 1.5 m/s "
        "exceeds max_linear_velocity 0.5 m/s (policy 'cell' v2)"
    )
    assert stored.result == {
        "refused_at": "dispatch",
        "message": last.reason.removeprefix("refused at dispatch: "),
        "violations": [
            {
                "reason": SAFETY_LIMIT_EXCEEDED,
                "metadata": {
                    "policy_id": str(cell.id),
                    "policy_version": str(tightened.version),
                    "policy_name": "cell",
                    "constraint": "max_linear_velocity",
                    "limit": "0.5",
                    "value": "1.5",
                },
            }
        ],
    }
    refused_weld = await commands.get(tenant_a.id, welds.id)
    assert refused_weld.result is not None
    assert [v["reason"] for v in refused_weld.result["violations"]] == [COMMAND_TYPE_DENIED]
    assert (await commands.get(tenant_a.id, slow.id)).transitions == slow.transitions
    # A second read (a resend) finds them as they are, and fails nothing twice.
    again = await links.outgoing(tenant_a.id, cell.host, 0, 100)
    assert [item.state for _, item in again if item is not None] == [S.FAILED, S.PENDING, S.FAILED]
    assert len((await commands.get(tenant_a.id, fast.id)).transitions) == 2


async def test_a_type_that_now_needs_approval_it_never_got_is_refused(
    cell: Cell,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    links: RobotLinkRepository,
) -> None:
    await cell.open(named())
    made = await commands.create(tenant_a.id, move(cell.host), actor=ACTOR)
    await cell.tighten(named(approval_command_types=("move_to",)))

    ((_, sent),) = await links.outgoing(tenant_a.id, cell.host, 0, 100)

    assert sent is not None
    assert sent.state is S.FAILED
    assert sent.transitions[-1].reason.startswith(
        "refused at dispatch: type 'move_to' now needs a person's approval (policy 'cell' v2)"
    )
    assert sent.result is not None
    assert [v["reason"] for v in sent.result["violations"]] == [APPROVAL_REQUIRED]
    assert sent.id == made.id


async def approved_at(
    commands: CommandRepository, tenant: TenantWithKey, host: uuid.UUID
) -> tuple[uuid.UUID, datetime]:
    made = await commands.create(tenant.id, move(host), actor=ACTOR)
    assert made.state is S.AWAITING_APPROVAL
    approved = await commands.transition(tenant.id, made.id, S.PENDING, actor=ACTOR)
    return made.id, approved.transitions[-1].transition_time


async def test_an_approval_older_than_the_ttl_fails_at_dispatch_and_a_fresh_one_is_sent(
    cell: Cell,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    links: RobotLinkRepository,
) -> None:
    await cell.open(named(approval_command_types=("move_to",), approval_ttl=TTL))
    first, first_approved = await approved_at(commands, tenant_a, cell.host)
    second, second_approved = await approved_at(commands, tenant_a, cell.host)
    assert first_approved < second_approved

    # At the TTL exactly an approval is still good.
    batch = await links.outgoing(tenant_a.id, cell.host, 0, 100, now=first_approved + TTL)
    assert [item.state for _, item in batch if item is not None] == [S.PENDING, S.PENDING]

    # Past the first's TTL, at the second's: the first has expired, the second is sent.
    now = second_approved + TTL
    batch = await links.outgoing(tenant_a.id, cell.host, 0, 100, now=now)
    assert [(d.sequence, item.id, item.state) for d, item in batch if item is not None] == [
        (1, first, S.FAILED),
        (2, second, S.PENDING),
    ]
    expired = await commands.get(tenant_a.id, first)
    age = describe_duration(now - first_approved)
    assert expired.transitions[-1].reason == (
        "refused at dispatch: approval expired after 300s (policy 'cell' v1): approved at "
        f"{first_approved.isoformat()}, {age} before dispatch"
    )
    assert expired.result is not None
    (violation,) = expired.result["violations"]
    assert violation["reason"] == APPROVAL_EXPIRED
    assert (violation["metadata"]["limit"], violation["metadata"]["value"]) == ("300s", age)
    assert (await commands.get(tenant_a.id, second)).state is S.PENDING


async def test_a_refused_command_that_was_sent_before_is_also_cancelled_on_its_robot(
    cell: Cell,
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    links: RobotLinkRepository,
) -> None:
    await cell.open(named())
    made = await commands.create(tenant_a.id, move(cell.host, velocity=1.0), actor=ACTOR)
    ((_, first),) = await links.outgoing(tenant_a.id, cell.host, 0, 100)
    assert first is not None
    assert (first.id, first.state) == (made.id, S.PENDING)
    deliveries = RobotDeliveryRepository(database.pool)
    await deliveries.mark_delivered(tenant_a.id, cell.host, 0, 1, now=SENT)
    await cell.tighten(named(limits=Limits(max_linear_velocity=0.5)))

    # The robot reconnects having received nothing it remembers: the resend is refused, and a
    # cancellation follows it in case the robot holds the first send.
    resent = await links.outgoing(tenant_a.id, cell.host, 0, 100)
    assert [(d.sequence, d.kind, item.state) for d, item in resent if item] == [
        (1, K.COMMAND, S.FAILED)
    ]
    after = await links.outgoing(tenant_a.id, cell.host, 1, 100)
    assert [(d.sequence, d.kind, d.item_id) for d, _ in after] == [(2, K.CANCEL_COMMAND, made.id)]


async def test_a_command_that_left_pending_meanwhile_is_not_failed(
    cell: Cell,
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
) -> None:
    await cell.open(named())
    made = await commands.create(tenant_a.id, move(cell.host), actor=ACTOR)
    await commands.transition(tenant_a.id, made.id, S.CANCELLED, reason="no", actor=ACTOR)
    refusal = Refusal("refused", (ErrorReason(APPROVAL_REQUIRED, {}),))

    async with tenant_transaction(database.pool, tenant_a.id) as conn:
        assert not await fail_at_dispatch(conn, made.id, refusal)
        assert not await fail_at_dispatch(conn, uuid.uuid4(), refusal)

    cancelled = await commands.get(tenant_a.id, made.id)
    assert cancelled.state is S.CANCELLED
    assert cancelled.result is None
    assert len(cancelled.transitions) == 2


async def test_a_host_without_policies_is_sent_its_commands_as_before(
    database: Database,
    tenant_a: TenantWithKey,
    commands: CommandRepository,
    links: RobotLinkRepository,
) -> None:
    host = await new_host(database, tenant_a)
    made = await commands.create(tenant_a.id, move(host, velocity=100.0), actor=ACTOR)
    ((_, sent),) = await links.outgoing(tenant_a.id, host, 0, 100)
    assert sent is not None
    assert (sent.id, sent.state, sent.transitions, sent.result) == (
        made.id,
        S.PENDING,
        made.transitions,
        None,
    )
