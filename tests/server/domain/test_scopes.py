"""The scope vocabulary: what each scope grants, and what a key may hand on."""

from __future__ import annotations

import pytest

from server.domain import scopes
from server.domain.errors import InvalidArgument


@pytest.mark.parametrize(
    ("held", "required", "granted"),
    [
        ({"environments:read"}, "environments:read", True),
        ({"environments:read"}, "environments:write", False),
        ({"environments:write"}, "environments:read", True),
        ({"environments:write"}, "environments:admin", False),
        ({"environments:admin"}, "environments:write", True),
        ({"environments:admin"}, "environments:read", True),
        ({"environments:admin"}, "hosts:read", False),
        ({"admin"}, "api-keys:admin", True),
        ({"admin"}, "safety-policies:write", True),
        ({"admin"}, "admin", True),
        ({"api-keys:admin", "environments:admin"}, "admin", False),
        (set(), "metrics:read", False),
        ({"read-tasks", "tasks"}, "tasks:read", False),  # the original's spellings grant nothing
    ],
)
def test_grants(held: set[str], required: str, granted: bool) -> None:
    assert scopes.grants(frozenset(held), required) is granted


def test_every_group_has_every_level_and_admin_exists() -> None:
    assert len(scopes.ALL_SCOPES) == len(scopes.GROUPS) * 3 + 1
    assert "admin" in scopes.ALL_SCOPES
    assert {"commands:write", "triggers:read", "metrics:admin"} <= scopes.ALL_SCOPES


def test_parse_scopes_reports_every_unknown_scope_by_index() -> None:
    with pytest.raises(InvalidArgument) as raised:
        scopes.parse_scopes(["hosts:read", "read-tasks", "admin", "tasks:execute", "Admin"])
    assert [v.field for v in raised.value.violations] == [
        "api_key.scopes[1]",
        "api_key.scopes[3]",
        "api_key.scopes[4]",
    ]
    assert "read-tasks" in raised.value.violations[0].description


def test_parse_scopes_deduplicates() -> None:
    assert scopes.parse_scopes(["hosts:read", "hosts:read"]) == frozenset({"hosts:read"})
    assert scopes.parse_scopes([]) == frozenset()


def test_covers_means_never_more_than_the_minting_key_holds() -> None:
    writer = frozenset({"environments:write", "api-keys:admin"})
    assert scopes.covers(writer, ["environments:read", "environments:write"])
    assert not scopes.covers(writer, ["environments:admin"])
    assert not scopes.covers(writer, ["admin"])
    assert not scopes.covers(writer, ["hosts:read"])
    assert scopes.covers(frozenset({"admin"}), ["admin", "hosts:admin"])
    assert scopes.covers(writer, [])


def test_unknown_required_scopes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        scopes.grants(frozenset({"admin"}), "environments:delete")
    with pytest.raises(ValueError, match="unknown scope"):
        scopes.scope("robots", "read")
    assert scopes.scope("hosts", "write") == "hosts:write"
    assert scopes.is_known("hosts:write")
    assert not scopes.is_known("hosts:delete")
