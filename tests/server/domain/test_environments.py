"""The environment rules, each violation on its wire name."""

from __future__ import annotations

import uuid

import pytest

from server.domain.environments import (
    MAX_CONFIG_BYTES,
    UPDATABLE_FIELDS,
    EnvironmentDraft,
    EnvironmentKind,
    parse_update_mask,
)
from server.domain.errors import InvalidArgument


def _fields(draft: EnvironmentDraft) -> list[str]:
    with pytest.raises(InvalidArgument) as raised:
        draft.validate()
    return [v.field for v in raised.value.violations]


def test_only_the_name_is_required() -> None:
    fields = EnvironmentDraft(name="lab").validate()
    assert (fields.name, fields.description, fields.kind) == ("lab", "", EnvironmentKind.SIMULATION)
    assert (fields.allowed_tools, fields.safety_policy_ids, fields.config) == ((), (), {})
    assert _fields(EnvironmentDraft()) == ["environment.name"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, "tab\there", "nul\x00"])
def test_bad_names(name: str) -> None:
    assert _fields(EnvironmentDraft(name=name)) == ["environment.name"]


def test_name_and_description_limits() -> None:
    EnvironmentDraft(name="x" * 128, description="d" * 4096).validate()
    assert _fields(EnvironmentDraft(name="n", description="d" * 4097)) == [
        "environment.description"
    ]


def test_tools_are_checked_one_by_one() -> None:
    ok = EnvironmentDraft(name="n", allowed_tools=("a", "b.c", "ns:tool-1", "x" * 128)).validate()
    assert ok.allowed_tools == ("a", "b.c", "ns:tool-1", "x" * 128)
    assert _fields(
        EnvironmentDraft(name="n", allowed_tools=("good", "", "has space", "good", "x" * 129))
    ) == [
        "environment.allowed_tools[1]",
        "environment.allowed_tools[2]",
        "environment.allowed_tools[3]",
        "environment.allowed_tools[4]",
    ]
    assert _fields(
        EnvironmentDraft(name="n", allowed_tools=tuple(f"t{i}" for i in range(257)))
    ) == ["environment.allowed_tools"]


def test_ids_are_parsed_and_checked_by_index() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ok = EnvironmentDraft(name="n", safety_policy_ids=(str(b), a)).validate()
    assert ok.safety_policy_ids == (b, a)  # order kept: it is the order of the checks
    assert _fields(
        EnvironmentDraft(name="n", safety_policy_ids=(str(a), "nope", str(b), str(b)))
    ) == ["environment.safety_policy_ids[1]", "environment.safety_policy_ids[3]"]
    assert _fields(
        EnvironmentDraft(name="n", safety_policy_ids=tuple(uuid.uuid4() for _ in range(257)))
    ) == ["environment.safety_policy_ids"]


def test_host_ids_are_not_settable() -> None:
    # A host names its environment; the environment only reports its hosts.
    assert "host_ids" not in UPDATABLE_FIELDS
    with pytest.raises(TypeError):
        EnvironmentDraft(name="n", host_ids=(uuid.uuid4(),))  # type: ignore[call-arg]
    with pytest.raises(InvalidArgument) as raised:
        parse_update_mask(["host_ids"])
    assert "'host_ids' is not an updatable field" in raised.value.violations[0].description


def test_config_must_be_a_small_json_object() -> None:
    assert EnvironmentDraft(
        name="n", config={"a": [1, 2.5, None, {"b": True}]}
    ).validate().config == {"a": [1, 2.5, None, {"b": True}]}
    assert _fields(EnvironmentDraft(name="n", config={"x": "y" * MAX_CONFIG_BYTES})) == [
        "environment.config"
    ]
    assert _fields(EnvironmentDraft(name="n", config={"nan": float("nan")})) == [
        "environment.config"
    ]
    assert _fields(EnvironmentDraft(name="n", config={"nul": ["a\x00"]})) == ["environment.config"]
    assert _fields(EnvironmentDraft(name="n", config={"obj": object()})) == ["environment.config"]
    assert _fields(EnvironmentDraft(name="n", config=[1, 2])) == ["environment.config"]  # type: ignore[arg-type]


def test_all_problems_are_reported_together() -> None:
    assert _fields(
        EnvironmentDraft(
            name="", description="d" * 5000, safety_policy_ids=("x",), config={"n": "\x00"}
        )
    ) == [
        "environment.name",
        "environment.description",
        "environment.safety_policy_ids[0]",
        "environment.config",
    ]


def test_update_masks() -> None:
    assert parse_update_mask([]) is None
    assert parse_update_mask(["*"]) is None
    assert parse_update_mask(["name", "config"]) == frozenset({"name", "config"})
    assert parse_update_mask(sorted(UPDATABLE_FIELDS)) == UPDATABLE_FIELDS
    with pytest.raises(InvalidArgument) as raised:
        parse_update_mask(["name", "id", "create_time"])
    assert [v.field for v in raised.value.violations] == ["update_mask", "update_mask"]


def test_merging_takes_only_masked_fields() -> None:
    current = EnvironmentDraft(name="old", description="keep", allowed_tools=("t",))
    merged = EnvironmentDraft(name="new", description="").merged_into(current, {"name"})
    assert merged == EnvironmentDraft(name="new", description="keep", allowed_tools=("t",))
    with pytest.raises(ValueError, match="not updatable"):
        EnvironmentDraft().merged_into(current, {"tenant_id"})
