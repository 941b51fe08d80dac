"""Environments in the database: CRUD, uniqueness per tenant, isolation, pages, error mapping."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from server.domain.api_keys import validate_new_key
from server.domain.environments import EnvironmentDraft, EnvironmentKind
from server.domain.errors import AlreadyExists, InvalidArgument, NotFound
from server.domain.pagination import PagePosition, encode_page_token
from server.storage.api_keys import ApiKeyRepository
from server.storage.environments import EnvironmentRepository
from tests.server.conftest import TenantWithKey

FULL = EnvironmentDraft(
    name="warehouse-arm",
    description="UR5 on the pick line",
    kind=EnvironmentKind.HARDWARE,
    allowed_tools=("move_to", "gripper.open", "camera:snapshot"),
    safety_policy_ids=(str(uuid.uuid4()),),
    host_ids=(str(uuid.uuid4()), str(uuid.uuid4())),
    config={"speed_limit": 0.5, "zones": [{"name": "cell-1", "x": [0, 1.5]}], "dry_run": False},
)


async def test_create_get_update_delete_round_trip(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    created = await environments.create(tenant_a.id, FULL)
    assert created.tenant_id == tenant_a.id
    assert (created.name, created.description, created.kind) == (
        FULL.name,
        FULL.description,
        EnvironmentKind.HARDWARE,
    )
    assert created.allowed_tools == tuple(FULL.allowed_tools)
    assert created.safety_policy_ids == tuple(uuid.UUID(v) for v in FULL.safety_policy_ids)
    assert created.host_ids == tuple(uuid.UUID(str(v)) for v in FULL.host_ids)
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
    assert (replaced.allowed_tools, replaced.host_ids, replaced.config) == ((), (), {})
    assert replaced.create_time == created.create_time
    assert replaced.update_time > created.update_time
    assert await environments.get(tenant_a.id, created.id) == replaced

    await environments.delete(tenant_a.id, created.id)
    with pytest.raises(NotFound):
        await environments.get(tenant_a.id, created.id)
    with pytest.raises(NotFound):
        await environments.delete(tenant_a.id, created.id)


async def test_an_update_mask_changes_only_the_named_fields(
    environments: EnvironmentRepository, tenant_a: TenantWithKey
) -> None:
    created = await environments.create(tenant_a.id, FULL)
    updated = await environments.update(
        tenant_a.id,
        created.id,
        EnvironmentDraft(description="moved to cell 2", config={"speed_limit": 0.2}),
        mask={"description", "config"},
    )
    assert (updated.description, updated.config) == ("moved to cell 2", {"speed_limit": 0.2})
    assert (updated.name, updated.kind, updated.allowed_tools, updated.host_ids) == (
        created.name,
        created.kind,
        created.allowed_tools,
        created.host_ids,
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
            EnvironmentDraft(name="", host_ids=("x",), config={"nul": "a\x00b"}),
        )
    assert [v.field for v in raised.value.violations] == [
        "environment.name",
        "environment.host_ids[0]",
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
