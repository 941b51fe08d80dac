"""gRPC metadata as a read-only multimap, whatever shape a protocol context hands it over in."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any


class Metadata:
    """Keys are lower-case; `-bin` values are bytes, all others str."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items: list[tuple[str, str | bytes]] = [(str(k).lower(), v) for k, v in items]

    def get_all(self, key: str) -> Sequence[str | bytes]:
        key = key.lower()
        return [v for k, v in self._items if k == key]

    def get(self, key: str) -> str | bytes | None:
        values = self.get_all(key)
        return values[0] if values else None

    def get_text(self, key: str) -> str | None:
        value = self.get(key)
        if isinstance(value, bytes):
            return value.decode("latin-1")
        return value

    def __iter__(self) -> Iterator[tuple[str, str | bytes]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
