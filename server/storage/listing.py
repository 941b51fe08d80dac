"""Keyset pages of one tenant's rows, newest first: the one way every repository lists.

Rows are ordered by (create_time DESC, id DESC), the order of each table's pagination index;
a page token names the last row of the previous page, so inserts never shift a page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    """How one table is listed: its columns, an optional fixed condition, the row converter.

    `filters` names the columns a caller may filter on by equality (e.g. "state", "host_id");
    their values are parameters, and a page token only continues the query it came from.
    """

    table: str
    columns: str
    row: Callable[..., T]
    # A constant SQL condition every listed row meets (e.g. "revoke_time IS NULL").
    condition: str = ""
    filters: tuple[str, ...] = ()
    _fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for column in self.filters:
            if not column.isidentifier():
                raise ValueError(f"not a column name: {column!r}")
        object.__setattr__(self, "_fingerprint", f"{self.table}|{self.condition}")

    def _query(
        self, filters: Mapping[str, Any], after: PagePosition | None
    ) -> tuple[str, list[Any]]:
        conditions = [self.condition] if self.condition else []
        params: list[Any] = []
        for column in sorted(filters):
            conditions.append(f"{column} = %s")
            params.append(filters[column])
        if after is not None:
            conditions.append("(create_time, id) < (%s, %s)")
            params += [after.create_time, after.id]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"SELECT {self.columns} FROM {self.table}{where}"
        return query + " ORDER BY create_time DESC, id DESC LIMIT %s", params

    async def page(
        self,
        pool: Pool,
        tenant_id: UUID,
        *,
        page_size: int = 0,
        page_token: str = "",
        filters: Mapping[str, Any] | None = None,
    ) -> Page[T]:
        """One page; `filters` maps some of `self.filters` to the value rows must have."""
        filters = {k: v for k, v in (filters or {}).items() if v is not None}
        unknown = set(filters) - set(self.filters)
        if unknown:
            raise ValueError(f"{self.table} cannot be filtered by {sorted(unknown)}")
        size = pagination.page_size(page_size)
        fingerprint = pagination.fingerprint(
            self._fingerprint, *(f"{k}={filters[k]}" for k in sorted(filters))
        )
        after = pagination.decode_page_token(page_token, fingerprint)
        query, params = self._query(filters, after)
        async with (
            tenant_transaction(pool, tenant_id) as conn,
            conn.cursor(row_factory=kwargs_row(self.row)) as cursor,
        ):
            await cursor.execute(query, (*params, size + 1))
            rows = await cursor.fetchall()
        return pagination.page_of(rows, size, _position, fingerprint)


def _position(row: Any) -> PagePosition:
    return PagePosition(row.create_time, row.id)
