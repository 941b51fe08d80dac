"""Who is calling: the API key behind the current call, set by the authentication interceptor."""

from __future__ import annotations

from contextvars import ContextVar

from server.domain import errors
from server.domain.api_keys import Principal

_current: ContextVar[Principal | None] = ContextVar("roz_principal", default=None)


def set_principal(principal: Principal) -> None:
    _current.set(principal)


def current_principal() -> Principal:
    """The caller of a non-public RPC. Raising here means a servicer ran without the chain."""
    principal = _current.get()
    if principal is None:
        raise errors.Unauthenticated("missing API key")
    return principal
