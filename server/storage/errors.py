"""Database errors a client can cause, translated into the domain vocabulary.

The client learns which rule it broke, never the database's text: constraint names and
messages stay in the server log (the psycopg error is kept as the domain error's __cause__).
Errors that are not the client's fault (connection loss, RLS refusing a row the server built
wrongly, a bug in SQL) are not translated and surface as internal errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from uuid import UUID

import psycopg
from psycopg import errors as pg

from server.domain.errors import AlreadyExists, DomainError, InvalidArgument, NotFound

# Constraint name -> the precise error, for constraints whose meaning a generic message misses.
ConstraintErrors = Mapping[str, Callable[[], DomainError]]


def translate(
    exc: psycopg.Error, resource: str, constraints: ConstraintErrors | None = None
) -> DomainError | None:
    """The domain error for `exc`, or None when the client did not cause it."""
    constraint = exc.diag.constraint_name
    if constraints and constraint is not None and constraint in constraints:
        return constraints[constraint]()
    if isinstance(exc, pg.UniqueViolation):
        return AlreadyExists(f"the {resource} already exists", resource=resource)
    if isinstance(exc, pg.ForeignKeyViolation):
        return InvalidArgument(f"the {resource} refers to something that does not exist")
    if isinstance(exc, pg.CheckViolation | pg.NotNullViolation):
        return InvalidArgument(f"the {resource} is not valid")
    if isinstance(exc, pg.InvalidTextRepresentation):
        # In lookups, the text that failed to parse is the id the client sent.
        return NotFound(resource)
    if isinstance(exc, pg.DataError):
        return InvalidArgument(f"the {resource} holds a value the database cannot store")
    return None


@contextmanager
def database_errors(resource: str, constraints: ConstraintErrors | None = None) -> Iterator[None]:
    """Wrap a whole transaction: the rollback happens first, then the domain error is raised."""
    try:
        yield
    except psycopg.Error as exc:
        translated = translate(exc, resource, constraints)
        if translated is None:
            raise
        raise translated from exc


def resource_id(value: str | UUID, resource: str) -> UUID:
    """The id a client sent; text that is not a UUID names nothing, so it is NOT_FOUND."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(resource, str(value)) from None
