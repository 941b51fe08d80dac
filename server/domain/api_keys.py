"""API keys: the secret's format, how it is minted and hashed, and the rules for a new key.

A key is "roz_sk_" + base64url (no padding) of 32 random bytes. The server stores only its first
16 characters (to recognise it in lists) and its SHA-256; the secret itself is shown once.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server.domain import scopes as scope_rules
from server.domain.errors import FieldViolation, InvalidArgument, PermissionDenied
from server.domain.names import name_problem

SECRET_PREFIX = "roz_sk_"  # noqa: S105 (the public marker of every key, not a secret)
SECRET_BYTES = 32
KEY_PREFIX_LENGTH = 16
_SECRET_FORMAT = re.compile(r"roz_sk_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    tenant_id: UUID
    name: str
    key_prefix: str
    scopes: frozenset[str]
    create_time: datetime
    expire_time: datetime | None
    last_used_time: datetime | None
    revoke_time: datetime | None
    created_by_key_id: UUID | None

    def is_usable(self, now: datetime) -> bool:
        return self.revoke_time is None and (self.expire_time is None or self.expire_time > now)


@dataclass(frozen=True)
class Principal:
    """Who is calling: what a valid secret resolves to, before anything else is known."""

    key_id: UUID
    tenant_id: UUID
    scopes: frozenset[str]


@dataclass(frozen=True)
class NewApiKey:
    """A validated request for a key; only `validate_new_key` should build one."""

    name: str
    scopes: frozenset[str]
    expire_time: datetime | None


def mint_secret() -> str:
    token = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=")
    return SECRET_PREFIX + token.decode("ascii")


def looks_like_key(text: str) -> bool:
    """Exact format check, so malformed bearer tokens never reach the database."""
    return _SECRET_FORMAT.fullmatch(text) is not None


def key_prefix(secret: str) -> str:
    return secret[:KEY_PREFIX_LENGTH]


def hash_secret(secret: str) -> bytes:
    # Unsalted SHA-256 is enough: the secret carries 256 random bits, so there is nothing to
    # brute-force, and a deterministic hash lets the database find a key by it.
    return hashlib.sha256(secret.encode("utf-8")).digest()


def validate_new_key(
    name: str,
    scopes: Iterable[str],
    expire_time: datetime | None,
    *,
    now: datetime,
    field: str = "api_key",
) -> NewApiKey:
    """Every problem with a requested key at once, as field violations on the wire names."""
    violations: list[FieldViolation] = []
    problem = name_problem(name)
    if problem is not None:
        violations.append(FieldViolation(f"{field}.name", f"name {problem}"))
    parsed: frozenset[str] = frozenset()
    try:
        parsed = scope_rules.parse_scopes(scopes, field=f"{field}.scopes")
    except InvalidArgument as exc:
        violations.extend(exc.violations)
    if expire_time is not None:
        if expire_time.tzinfo is None:
            violations.append(
                FieldViolation(f"{field}.expire_time", "expire_time must carry a time zone")
            )
        elif expire_time <= now:
            violations.append(
                FieldViolation(f"{field}.expire_time", "expire_time must be in the future")
            )
    if violations:
        raise InvalidArgument("the API key is not valid", violations)
    return NewApiKey(name=name, scopes=parsed, expire_time=expire_time)


def check_mintable(held: frozenset[str], requested: frozenset[str]) -> None:
    """A key may create keys only with scopes it holds itself (the original allowed anything)."""
    beyond = sorted(value for value in requested if not scope_rules.grants(held, value))
    if beyond:
        raise PermissionDenied(
            f"this API key cannot grant scopes it does not hold: {', '.join(beyond)}",
            required_scope=beyond[0],
        )
