"""Keyset pages of one tenant's rows, newest first: the one way every repository lists.

Rows are ordered by (create_time DESC, id DESC), the order of each table's pagination index;
a page token names the last row of the previous page, so inserts never shift a page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg.rows import kwargs_row

from server.domain import pagination
from server.domain.pagination import Page, PagePosition
from server.storage.database import Pool
from server.storage.tenancy import tenant_transaction

T = TypeVar("T")


@dataclass(frozen=True)
class Listing(Generic[T]):
    """How one table is listed: its columns, an optional fixed condition, the row converter."""

    table: str
    columns: str
    row: Callable[..., T]
    # A constant SQL condition every listed row meets (e.g. "revoke_time IS NULL").
    condition: str = ""
    _first: str = field(init=False, repr=False)
    _after: str = field(init=False, repr=False)
    _fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        select = f"SELECT {self.columns} FROM {self.table}"
        order = " ORDER BY create_time DESC, id DESC LIMIT %s"
        where = f" WHERE {self.condition}" if self.condition else ""
        keyset = " AND " if self.condition else " WHERE "
        object.__setattr__(self, "_first", select + where + order)
        object.__setattr__(
            self, "_after", select + where + keyset + "(create_time, id) < (%s, %s)" + order
        )
        object.__setattr__(self, "_fingerprint", pagination.fingerprint(self.table, self.condition))

    async def page(
        self, pool: Pool, tenant_id: UUID, *, page_size: int = 0, page_token: str = ""
    ) -> Page[T]:
        size = pagination.page_size(page_size)
        after = pagination.decode_page_token(page_token, self._fingerprint)
        async with (
            tenant_transaction(pool, tenant_id) as conn,
            conn.cursor(row_factory=kwargs_row(self.row)) as cursor,
        ):
            if after is None:
                await cursor.execute(self._first, (size + 1,))
            else:
                await cursor.execute(self._after, (after.create_time, after.id, size + 1))
            rows = await cursor.fetchall()
        return pagination.page_of(rows, size, _position, self._fingerprint)


def _position(row: Any) -> PagePosition:
    return PagePosition(row.create_time, row.id)
