"""API keys: the secret's format, how it is minted and hashed, and the rules for a new key.

A key is "roz_sk_" + base64url (no padding) of 32 random bytes. The server stores only its first
16 characters (to recognise it in lists) and its SHA-256; the secret itself is shown once.

A key may be bound to a host: a robot key. It holds no scopes; what it may do is the methods
marked `robot` in their access rule, for its own host only. Minting one is granting what a robot
does for its host, so the creator must hold that in operator terms (ROBOT_EQUIVALENT_SCOPES).
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
# What a robot does for its own host, said as operator scopes: it reports the host's presence,
# receives and reports on its commands and tasks. Only a key holding all of them may mint a robot
# key, so a key never mints one with power it does not have itself.
ROBOT_EQUIVALENT_SCOPES: frozenset[str] = frozenset(
    {
        scope_rules.scope("hosts", "write"),
        scope_rules.scope("commands", "write"),
        scope_rules.scope("tasks", "write"),
    }
)


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
    host_id: UUID | None = None  # set: a robot key, bound to this host

    def is_usable(self, now: datetime) -> bool:
        return self.revoke_time is None and (self.expire_time is None or self.expire_time > now)


@dataclass(frozen=True)
class Principal:
    """Who is calling: what a valid secret resolves to, before anything else is known."""

    key_id: UUID
    tenant_id: UUID
    scopes: frozenset[str]
    # The host a robot key is bound to; such a key may call only methods marked `robot`, and
    # only about this host.
    host_id: UUID | None = None


@dataclass(frozen=True)
class NewApiKey:
    """A validated request for a key; only `validate_new_key` should build one."""

    name: str
    scopes: frozenset[str]
    expire_time: datetime | None
    host_id: UUID | None = None


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
    host_id: str | UUID = "",
) -> NewApiKey:
    """Every problem with a requested key at once, as field violations on the wire names.

    `host_id` binds the key to a host (empty: an ordinary key); a bound key asks for no scopes.
    Whether the host exists in the tenant is for storage to say.
    """
    violations: list[FieldViolation] = []
    requested = list(scopes)
    problem = name_problem(name)
    if problem is not None:
        violations.append(FieldViolation(f"{field}.name", f"name {problem}"))
    parsed: frozenset[str] = frozenset()
    try:
        parsed = scope_rules.parse_scopes(requested, field=f"{field}.scopes")
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
    host: UUID | None = None
    if isinstance(host_id, UUID):
        host = host_id
    elif host_id:
        try:
            host = UUID(host_id)
        except ValueError:
            violations.append(
                FieldViolation(f"{field}.host_id", f"{host_id[:64]!r} is not a valid id")
            )
    if host_id and requested:
        violations.append(
            FieldViolation(
                f"{field}.scopes",
                "a key bound to a host holds no scopes: it may call only what a robot calls, "
                "for its own host; leave scopes empty",
            )
        )
    if violations:
        raise InvalidArgument("the API key is not valid", violations)
    return NewApiKey(name=name, scopes=parsed, expire_time=expire_time, host_id=host)


def check_mintable(held: frozenset[str], requested: frozenset[str]) -> None:
    """A key may create keys only with scopes it holds itself (the original allowed anything)."""
    beyond = sorted(value for value in requested if not scope_rules.grants(held, value))
    if beyond:
        raise PermissionDenied(
            f"this API key cannot grant scopes it does not hold: {', '.join(beyond)}",
            required_scope=beyond[0],
        )


def check_new_key_mintable(held: frozenset[str], new: NewApiKey) -> None:
    """check_mintable for a new key; a robot key counts as ROBOT_EQUIVALENT_SCOPES."""
    if new.host_id is None:
        check_mintable(held, new.scopes)
        return
    beyond = sorted(
        value for value in ROBOT_EQUIVALENT_SCOPES if not scope_rules.grants(held, value)
    )
    if beyond:
        raise PermissionDenied(
            "a key bound to a host acts for it as the scopes "
            f"{', '.join(sorted(ROBOT_EQUIVALENT_SCOPES))} would; this API key lacks "
            f"{', '.join(beyond)}",
            required_scope=beyond[0],
        )
