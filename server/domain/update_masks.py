"""Update masks (AIP-134): which fields an update may name, and the draft an update leaves.

Each resource declares its updatable fields; everything else on it is output-only or changed
through a method of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from server.domain.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Draft = TypeVar("_Draft", bound="DataclassInstance")


def parse_update_mask(
    paths: Iterable[str],
    updatable: Collection[str],
    field_name: str = "update_mask",
    *,
    note: str = "",
) -> frozenset[str] | None:
    """The fields an update changes; None means every mutable field (an empty mask or "*").

    `note` ends each refusal, to say where a field that is not updatable is changed instead.
    """
    collected = list(paths)
    if not collected or collected == ["*"]:
        return None
    unknown = [path for path in collected if path not in updatable]
    if unknown:
        listed = ", ".join(sorted(updatable))
        ending = f" {note}" if note else ""
        raise InvalidArgument(
            "the update mask names fields that cannot be updated",
            [
                FieldViolation(
                    field_name,
                    f"{path!r} is not an updatable field; updatable fields are {listed}{ending}",
                )
                for path in unknown
            ],
        )
    return frozenset(collected)


def merge_masked(
    changes: _Draft, current: _Draft, mask: Collection[str], updatable: Collection[str]
) -> _Draft:
    """`current` with the fields named in `mask` taken from `changes`."""
    unknown = set(mask) - set(updatable)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    return replace(current, **{name: getattr(changes, name) for name in mask})
