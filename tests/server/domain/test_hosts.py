"""The host rules, each violation on its wire name."""

from __future__ import annotations

import uuid

import pytest

from server.domain.errors import InvalidArgument
from server.domain.hosts import (
    UPDATABLE_FIELDS,
    HostDraft,
    HostKind,
    HostStatus,
    StatusChange,
    parse_update_mask,
)


def _fields(draft: HostDraft) -> list[str]:
    with pytest.raises(InvalidArgument) as raised:
        draft.validate()
    return [v.field for v in raised.value.violations]


def test_only_the_name_is_required() -> None:
    fields = HostDraft(name="arm-1").validate()
    assert (fields.kind, fields.environment_id, fields.capabilities, fields.labels) == (
        HostKind.EDGE,
        None,
        (),
        {},
    )
    assert _fields(HostDraft()) == ["host.name"]


def test_environment_id_is_parsed_and_empty_means_none() -> None:
    environment = uuid.uuid4()
    assert HostDraft(name="h", environment_id=str(environment)).validate().environment_id == (
        environment
    )
    assert HostDraft(name="h", environment_id="").validate().environment_id is None
    assert _fields(HostDraft(name="h", environment_id="cell-1")) == ["host.environment_id"]


def test_capabilities_are_distinct_short_tokens() -> None:
    assert HostDraft(name="h", capabilities=("arm", "camera:rgb", "gpu.a100")).validate()
    assert _fields(HostDraft(name="h", capabilities=("arm", "", "two words", "arm", "x" * 65))) == [
        "host.capabilities[1]",
        "host.capabilities[2]",
        "host.capabilities[3]",
        "host.capabilities[4]",
    ]
    assert _fields(HostDraft(name="h", capabilities=tuple(f"c{i}" for i in range(65)))) == [
        "host.capabilities"
    ]


def test_labels_have_bounded_keys_and_values() -> None:
    good = {"site": "berlin", "topology.example.com/zone": "a", "empty": ""}
    assert HostDraft(name="h", labels=good).validate().labels == good
    for labels in (
        {"": "x"},
        {"-leading": "x"},
        {"k" * 64: "x"},
        {"has space": "x"},
        {"k": "v" * 256},
        {"k": "line\nbreak"},
        {f"k{i}": "v" for i in range(65)},
    ):
        assert _fields(HostDraft(name="h", labels=labels)) == ["host.labels"], labels


def test_status_changes_need_a_status_and_a_bounded_reason() -> None:
    change = StatusChange.of(HostStatus.MAINTENANCE, "firmware update\n\tstep 2")
    assert (change.status, change.reason) == (HostStatus.MAINTENANCE, "firmware update\n\tstep 2")
    with pytest.raises(InvalidArgument) as raised:
        StatusChange.of(None, "r" * 1025)
    assert [v.field for v in raised.value.violations] == ["status", "reason"]
    with pytest.raises(InvalidArgument):
        StatusChange.of(HostStatus.ONLINE, "bell\x07")


def test_only_online_and_degraded_mean_the_host_was_seen() -> None:
    assert {status for status in HostStatus if status.means_seen} == {
        HostStatus.ONLINE,
        HostStatus.DEGRADED,
    }


def test_update_masks_exclude_the_status() -> None:
    assert parse_update_mask(["*"]) is None
    assert parse_update_mask(sorted(UPDATABLE_FIELDS)) == UPDATABLE_FIELDS
    with pytest.raises(InvalidArgument) as raised:
        parse_update_mask(["labels", "status", "last_seen_time"])
    assert [v.field for v in raised.value.violations] == ["update_mask", "update_mask"]
    assert "status has its own method" in raised.value.violations[0].description
