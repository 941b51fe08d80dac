"""Environments in the database: CRUD, uniqueness per tenant, isolation, pages, error mapping,
and their links: ordered safety policies that must exist, hosts derived from the hosts table."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from psycopg import AsyncConnection

from server.domain.api_keys import validate_new_key
from server.domain.environments import EnvironmentDraft, EnvironmentKind
from server.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from server.domain.hosts import HostDraft
from server.domain.pagination import PagePosition, encode_page_token
from server.domain.safety_policies import SafetyPolicyDraft
from server.storage.api_keys import ApiKeyRepository
from server.storage.database import Database
from server.storage.environments import EnvironmentRepository
from server.storage.hosts import HostRepository
from server.storage.safety_policies import SafetyPolicyRepository
from tests.server.conftest import TenantWithKey

FULL = EnvironmentDraft(
    name="warehouse-arm",
    description="UR5 on the pick line",
    kind=EnvironmentKind.HARDWARE,
    allowed_tools=("move_to", "gripper.open", "camera:snapshot"),
    config={"speed_limit": 0.5, "zones": [{"name": "cell-1", "x": [0, 1.5]}], "dry_run": False},
)


@pytest.fixture
def policies(database: Database) -> SafetyPolicyRepository:
    return SafetyPolicyRepository(database.pool)


@pytest.fixture
def hosts(database: Database) -> HostRepository:
    return HostRepository(database.pool)


async def _policy_ids(
    policies: SafetyPolicyRepository, tenant: TenantWithKey, count: int
) -> tuple[uuid.UUID, ...]:
    created = [
        await policies.create(tenant.id, SafetyPolicyDraft(name=f"p-{uuid.uuid4().hex[:8]}"))
        for _ in range(count)
    ]
    return tuple(policy.id for policy in created)


async def test_create_get_update_delete_round_trip(
    environments: EnvironmentRepository,
    policies: SafetyPolicyRepository,
    tenant_a: TenantWithKey,
) -> None:
    policy_ids = await _policy_ids(policies, tenant_a, 2)
    draft = EnvironmentDraft(**{**FULL.__dict__, "safety_policy_ids": policy_ids[::-1]})
    created = await environments.create(tenant_a.id, draft)
    assert created.tenant_id == tenant_a.id
    assert (created.name, created.description, created.kind) == (
        FULL.name,
        FULL.description,
        EnvironmentKind.HARDWARE,
    )
    assert created.allowed_tools == tuple(FULL.allowed_tools)
    assert created.safety_policy_ids == policy_ids[::-1]  # in the order given
    assert created.host_ids == ()
    assert created.config == FULL.config
    assert created.create_time == created.update_time
    assert await environments.get(tenant_a.id, str(created.id)) == created

    replaced = await environments.update(
        tenant_a.id, created.id, EnvironmentDraft(name="renamed", kind=EnvironmentKind.HYBRID)
    )
    # No mask: PUT replaces every mutable field, so the ones not sent return to their defaults.
    assert (replaced.name, replaced.kind, replaced.description) == (
        "renamed",
        EnvironmentKind.HYBRID,
        "",
    )
    assert (replaced.allowed_tools, replaced.safety_policy_ids, replaced.config) == ((), (), {})
    assert replaced.create_time == created.create_time
    assert replaced.update_time > created.update_time
    assert await environments.get(tenant_a.id, created.id) == replaced

    await environments.delete(tenant_a.id, created.id)
    with pytest.raises(NotFound):
        await environments.get(tenant_a.id, created.id)
    with pytest.raises(NotFound):
        await environments.delete(tenant_a.id, created.id)


async def test_an_update_mask_changes_only_the_named_fields(
    environments: EnvironmentRepository,
    policies: SafetyPolicyRepository,
    tenant_a: TenantWithKey,
) -> None:
    policy_ids = await _policy_ids(policies, tenant_a, 1)
    created = await environments.create(
        tenant_a.id, EnvironmentDraft(**{**FULL.__dict__, "safety_policy_ids": policy_ids})
    )
    updated = await environments.update(
        tenant_a.id,
        created.id,
        EnvironmentDraft(description="moved to cell 2", config={"speed_limit": 0.2}),
        mask={"description", "config"},
    )
    assert (updated.description, updated.config) == ("moved to cell 2", {"speed_limit": 0.2})
    assert (updated.name, updated.kind, updated.allowed_tools, updated.safety_policy_ids) == (
        created.name,
        created.kind,
        created.allowed_tools,
        policy_ids,
    )


async def test_a_masked_update_is_validated_whole(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    created = await environments.create(tenant_a.id, FULL)
    with pytest.raises(InvalidArgument) as raised:
        await environments.update(tenant_a.id, created.id, EnvironmentDraft(name=""), mask={"name"})
    assert [v.field for v in raised.value.violations] == ["environment.name"]
    assert await environments.get(tenant_a.id, created.id) == created


async def test_names_are_unique_per_tenant_only(
    environments: EnvironmentRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    first = await environments.create(tenant_a.id, EnvironmentDraft(name="lab"))
    with pytest.raises(AlreadyExists, match="'lab'") as raised:
        await environments.create(tenant_a.id, EnvironmentDraft(name="lab"))
    assert "environments_tenant_id_name_key" not in str(raised.value)
    other = await environments.create(tenant_b.id, EnvironmentDraft(name="lab"))
    assert other.id != first.id

    second = await environments.create(tenant_a.id, EnvironmentDraft(name="lab-2"))
    with pytest.raises(AlreadyExists):
        await environments.update(tenant_a.id, second.id, EnvironmentDraft(name="lab"))
    with pytest.raises(AlreadyExists):
        await environments.update(
            tenant_a.id, second.id, EnvironmentDraft(name="lab"), mask={"name"}
        )
    assert (await environments.get(tenant_a.id, second.id)).name == "lab-2"


async def test_concurrent_creates_of_one_name_give_one_row(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    results = await asyncio.gather(
        *(environments.create(tenant_a.id, EnvironmentDraft(name="race")) for _ in range(5)),
        return_exceptions=True,
    )
    assert len([r for r in results if not isinstance(r, BaseException)]) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if isinstance(r, BaseException))


async def test_another_tenants_environment_is_not_found_and_untouched(
    environments: EnvironmentRepository, tenant_a: TenantWithKey, tenant_b: TenantWithKey
) -> None:
    theirs = await environments.create(tenant_a.id, FULL)
    with pytest.raises(NotFound) as raised:
        await environments.get(tenant_b.id, theirs.id)
    assert raised.value.resource == "environment"
    with pytest.raises(NotFound):
        await environments.update(tenant_b.id, theirs.id, EnvironmentDraft(name="hijacked"))
    with pytest.raises(NotFound):
        await environments.update(
            tenant_b.id, theirs.id, EnvironmentDraft(name="hijacked"), mask={"name"}
        )
    with pytest.raises(NotFound):
        await environments.delete(tenant_b.id, theirs.id)
    assert theirs.id not in {e.id for e in (await environments.list(tenant_b.id)).items}
    assert await environments.get(tenant_a.id, theirs.id) == theirs


@pytest.mark.parametrize("bad_id", ["nope", "", "123", str(uuid.uuid4()) + "0"])
async def test_a_malformed_or_unknown_id_is_not_found(
    environments: EnvironmentRepository, tenant_a: TenantWithKey, bad_id: str
) -> None:
    for missing in (bad_id, str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await environments.get(tenant_a.id, missing)
        with pytest.raises(NotFound):
            await environments.update(tenant_a.id, missing, EnvironmentDraft(name="x"))
        with pytest.raises(NotFound):
            await environments.delete(tenant_a.id, missing)


async def test_invalid_drafts_never_reach_the_database(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await environments.create(
            tenant_a.id,
            EnvironmentDraft(name="", safety_policy_ids=("x",), config={"nul": "a\x00b"}),
        )
    assert [v.field for v in raised.value.violations] == [
        "environment.name",
        "environment.safety_policy_ids[0]",
        "environment.config",
    ]
    assert (await environments.list(tenant_a.id)).items == ()


async def test_pages_stay_stable_while_rows_are_inserted(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    originals = [
        await environments.create(tenant_a.id, EnvironmentDraft(name=f"env-{i:02d}"))
        for i in range(23)
    ]
    seen: list[uuid.UUID] = []
    token = ""
    counter = 0
    while True:
        # Other clients keep inserting while this one pages.
        inserts = [
            environments.create(tenant_a.id, EnvironmentDraft(name=f"new-{counter}-{j}"))
            for j in range(3)
        ]
        counter += 1
        page, *_ = await asyncio.gather(
            environments.list(tenant_a.id, page_size=5, page_token=token), *inserts
        )
        seen.extend(e.id for e in page.items)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "an environment appeared on two pages"
    originals_seen = [i for i in seen if i in {e.id for e in originals}]
    # Every environment that existed before the first page was listed, newest first.
    assert originals_seen == [e.id for e in reversed(originals)]


async def test_deleting_between_pages_skips_nothing_else(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    created = [
        await environments.create(tenant_a.id, EnvironmentDraft(name=f"d-{i}")) for i in range(6)
    ]
    first = await environments.list(tenant_a.id, page_size=3)
    await environments.delete(tenant_a.id, first.items[-1].id)  # the row the token points at
    second = await environments.list(tenant_a.id, page_size=3, page_token=first.next_page_token)
    assert [e.id for e in first.items + second.items] == [e.id for e in reversed(created)]
    assert second.next_page_token == ""


async def test_a_page_exactly_full_has_no_next_token(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    for i in range(4):
        await environments.create(tenant_a.id, EnvironmentDraft(name=f"f-{i}"))
    page = await environments.list(tenant_a.id, page_size=4)
    assert len(page.items) == 4
    assert page.next_page_token == ""


async def test_bad_page_tokens_and_sizes_are_invalid_arguments(
    environments: EnvironmentRepository, api_keys: ApiKeyRepository, tenant_a: TenantWithKey
) -> None:
    for i in range(3):
        await environments.create(tenant_a.id, EnvironmentDraft(name=f"t-{i}"))
    for _ in range(2):
        await api_keys.create(tenant_a.id, validate_new_key("k", [], None, now=datetime.now(UTC)))
    good = (await environments.list(tenant_a.id, page_size=1)).next_page_token
    other_query = (await api_keys.list(tenant_a.id, page_size=1)).next_page_token
    forged = encode_page_token(
        PagePosition(datetime.now(UTC), uuid.uuid4()),
        "not-this-query",
    )
    for token in ("garbage", good[:-3], good + "AA", other_query, forged, "💥"):
        with pytest.raises(InvalidArgument) as raised:
            await environments.list(tenant_a.id, page_token=token)
        assert [v.field for v in raised.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgument) as raised:
        await environments.list(tenant_a.id, page_size=-1)
    assert [v.field for v in raised.value.violations] == ["page_size"]


async def test_unknown_and_other_tenants_policies_are_violations_by_index(
    environments: EnvironmentRepository,
    policies: SafetyPolicyRepository,
    tenant_a: TenantWithKey,
    tenant_b: TenantWithKey,
) -> None:
    (mine,) = await _policy_ids(policies, tenant_a, 1)
    (theirs,) = await _policy_ids(policies, tenant_b, 1)
    missing = uuid.uuid4()
    with pytest.raises(InvalidArgument) as raised:
        await environments.create(
            tenant_a.id, EnvironmentDraft(name="linked", safety_policy_ids=(mine, theirs, missing))
        )
    violations = raised.value.violations
    assert [v.field for v in violations] == [
        "environment.safety_policy_ids[1]",
        "environment.safety_policy_ids[2]",
    ]
    # Another tenant's policy reads exactly like one that does not exist.
    assert violations[0].description == f"safety policy {theirs} not found"
    assert violations[1].description == f"safety policy {missing} not found"
    assert (await environments.list(tenant_a.id)).items == ()

    created = await environments.create(
        tenant_a.id, EnvironmentDraft(name="linked", safety_policy_ids=(mine,))
    )
    with pytest.raises(InvalidArgument) as raised:
        await environments.update(
            tenant_a.id,
            created.id,
            EnvironmentDraft(safety_policy_ids=(theirs,)),
            mask={"safety_policy_ids"},
        )
    assert [v.field for v in raised.value.violations] == ["environment.safety_policy_ids[0]"]
    assert (await environments.get(tenant_a.id, created.id)).safety_policy_ids == (mine,)


async def test_updating_the_policies_reorders_and_detaches(
    environments: EnvironmentRepository,
    policies: SafetyPolicyRepository,
    tenant_a: TenantWithKey,
) -> None:
    first, second, third = await _policy_ids(policies, tenant_a, 3)
    created = await environments.create(
        tenant_a.id, EnvironmentDraft(name="ordered", safety_policy_ids=(first, second))
    )
    reordered = await environments.update(
        tenant_a.id,
        created.id,
        EnvironmentDraft(safety_policy_ids=(third, second, first)),
        mask={"safety_policy_ids"},
    )
    assert reordered.safety_policy_ids == (third, second, first)
    listed = await environments.list(tenant_a.id)
    assert [e.safety_policy_ids for e in listed.items] == [(third, second, first)]
    detached = await environments.update(tenant_a.id, created.id, EnvironmentDraft(name="ordered"))
    assert detached.safety_policy_ids == ()
    await policies.delete(tenant_a.id, first)  # nothing uses it any more


async def test_host_ids_are_the_hosts_that_name_the_environment(
    environments: EnvironmentRepository, hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    environment = await environments.create(tenant_a.id, EnvironmentDraft(name="cell"))
    other = await environments.create(tenant_a.id, EnvironmentDraft(name="other-cell"))
    arm = await hosts.create(tenant_a.id, HostDraft(name="arm", environment_id=environment.id))
    cam = await hosts.create(tenant_a.id, HostDraft(name="cam", environment_id=environment.id))
    await hosts.create(tenant_a.id, HostDraft(name="elsewhere", environment_id=other.id))
    await hosts.create(tenant_a.id, HostDraft(name="nowhere"))
    assert (await environments.get(tenant_a.id, environment.id)).host_ids == (arm.id, cam.id)
    listed = {e.id: e.host_ids for e in (await environments.list(tenant_a.id)).items}
    assert listed[environment.id] == (arm.id, cam.id)

    await hosts.update(tenant_a.id, arm.id, HostDraft(environment_id=other.id), {"environment_id"})
    assert (await environments.get(tenant_a.id, environment.id)).host_ids == (cam.id,)
    # Updating the environment leaves its hosts where they are.
    updated = await environments.update(tenant_a.id, environment.id, EnvironmentDraft(name="c2"))
    assert updated.host_ids == (cam.id,)


async def test_an_environment_with_hosts_cannot_be_deleted(
    environments: EnvironmentRepository, hosts: HostRepository, tenant_a: TenantWithKey
) -> None:
    environment = await environments.create(tenant_a.id, EnvironmentDraft(name="busy"))
    host = await hosts.create(tenant_a.id, HostDraft(name="robot", environment_id=environment.id))
    with pytest.raises(FailedPrecondition) as raised:
        await environments.delete(tenant_a.id, environment.id)
    assert raised.value.reason == "ENVIRONMENT_IN_USE"
    assert raised.value.metadata == {
        "environment_id": str(environment.id),
        "host_id": str(host.id),
    }
    assert "hosts_environment_fkey" not in raised.value.message
    assert (await environments.get(tenant_a.id, environment.id)).host_ids == (host.id,)

    await hosts.update(tenant_a.id, host.id, HostDraft(environment_id=None), {"environment_id"})
    await environments.delete(tenant_a.id, environment.id)
    with pytest.raises(NotFound):
        await environments.get(tenant_a.id, environment.id)


async def test_deleting_an_environment_detaches_its_policies(
    database: Database,
    environments: EnvironmentRepository,
    policies: SafetyPolicyRepository,
    tenant_a: TenantWithKey,
) -> None:
    (policy_id,) = await _policy_ids(policies, tenant_a, 1)
    environment = await environments.create(
        tenant_a.id, EnvironmentDraft(name="temporary", safety_policy_ids=(policy_id,))
    )
    await environments.delete(tenant_a.id, environment.id)
    async with await AsyncConnection.connect(database.owner_dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT count(*) FROM roz.environment_safety_policies WHERE environment_id = %s",
                (environment.id,),
            )
        ).fetchone()
    assert rows == (0,)
    await policies.delete(tenant_a.id, policy_id)
