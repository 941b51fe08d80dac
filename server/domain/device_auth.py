"""Device login (RFC 8628): the codes, what a poll answers, and what an approval may grant.

A CLI asks for a pair of codes: a secret device code it polls with, and a short user code a
person types into the approval page. The person approves with an API key of their tenant; the
next poll mints a key for that tenant, once, with at most the approver's scopes.

Every decision here is pure and takes `now` from the caller, so a test's clock can drive it.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import unicodedata
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from server.domain import scopes as scope_rules
from server.domain.api_keys import Principal, check_mintable
from server.domain.errors import DomainError, FieldViolation, InvalidArgument, ResourceExhausted
from server.domain.names import MAX_NAME_LENGTH

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 §6.1: consonants only, so no code spells a word and none can be misread (no 0/O, 1/I).
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8  # 20^8 ≈ 2^34.6 codes, against a handful of guesses per minute
DEVICE_CODE_BYTES = 32
SLOW_DOWN_STEP_SECONDS = 5  # RFC 8628 §3.5: the interval grows by 5 s per slow_down
MAX_CLIENT_NAME_LENGTH = 100
DEFAULT_CLIENT_NAME = "a device"
# Answers for expired codes stay this long after expiry (expired_token), then the row is purged
# and the code reads as unknown (invalid_grant).
EXPIRED_RETENTION = timedelta(minutes=10)


class OAuthError(enum.StrEnum):
    """RFC 6749 §5.2 and RFC 8628 §3.5 error codes, as the token endpoint writes them."""

    INVALID_REQUEST = "invalid_request"
    INVALID_GRANT = "invalid_grant"
    INVALID_SCOPE = "invalid_scope"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    AUTHORIZATION_PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    ACCESS_DENIED = "access_denied"
    EXPIRED_TOKEN = "expired_token"  # noqa: S105 (an error code, not a secret)


class DeviceFlowError(DomainError):
    """A device-flow answer that is not a token: pending, slow down, denied, expired, invalid."""

    def __init__(
        self, error: OAuthError, message: str, *, interval_seconds: int | None = None
    ) -> None:
        super().__init__(message)
        self.error = error
        self.interval_seconds = interval_seconds


class State(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CONSUMED = "consumed"  # the key was minted; the device code is dead


# -- codes --------------------------------------------------------------------------------------


def mint_device_code() -> str:
    """256 random bits, base64url: what the device polls with. Only its hash is stored."""
    return secrets.token_urlsafe(DEVICE_CODE_BYTES)


def hash_device_code(device_code: str) -> bytes:
    # Unsalted SHA-256 suffices for the same reason as for API keys: 256 random bits.
    return hashlib.sha256(device_code.encode("utf-8")).digest()


def mint_user_code() -> str:
    """Eight characters from the alphabet, stored without the dash."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def format_user_code(code: str) -> str:
    """As shown to people: "BCDF-GHJK"."""
    half = USER_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def normalize_user_code(text: str) -> str | None:
    """What a person typed, as stored: case-insensitive, dashes and spaces ignored.

    None when it cannot be a user code at all, so a typo never reaches the database (and is
    still counted as a wrong guess by the caller).
    """
    code = "".join(ch for ch in text.upper() if ch not in "- \t")
    if len(code) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in code):
        return None
    return code


# -- requesting a login --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRequest:
    """A validated request for codes; `scopes` empty means "whatever the approver grants"."""

    client_name: str
    client_id: str
    scopes: frozenset[str]


def validate_device_request(scope: str, client_name: str, client_id: str) -> DeviceRequest:
    """RFC 6749 §3.3 scope: space-separated; unknown scopes are invalid_scope."""
    requested = scope.split()
    unknown = [value for value in requested if not scope_rules.is_known(value)]
    if unknown:
        named = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")  # never echo a flood
        raise DeviceFlowError(
            OAuthError.INVALID_SCOPE,
            f"unknown scope {named}: scopes are 'admin' or '<group>:<level>' with "
            f"group one of {', '.join(scope_rules.GROUPS)} and level read, write or admin",
        )
    name = " ".join(client_name.split())  # the page shows one line, without runs of spaces
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise DeviceFlowError(
            OAuthError.INVALID_REQUEST, "client_name must not contain control characters"
        )
    if len(name) > MAX_CLIENT_NAME_LENGTH:
        raise DeviceFlowError(
            OAuthError.INVALID_REQUEST,
            f"client_name is longer than {MAX_CLIENT_NAME_LENGTH} characters",
        )
    if len(client_id) > MAX_CLIENT_NAME_LENGTH:
        raise DeviceFlowError(
            OAuthError.INVALID_REQUEST,
            f"client_id is longer than {MAX_CLIENT_NAME_LENGTH} characters",
        )
    return DeviceRequest(client_name=name, client_id=client_id, scopes=frozenset(requested))


def check_grant_type(grant_type: str) -> None:
    """Form posts (RFC 8628 §3.4) name the grant; the seed's JSON posts may leave it out."""
    if grant_type and grant_type != GRANT_TYPE:
        raise DeviceFlowError(
            OAuthError.UNSUPPORTED_GRANT_TYPE,
            f"grant_type must be {GRANT_TYPE}",
        )


# -- polling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolledAuthorization:
    """What a poll needs to know about one stored login, read under its row lock."""

    id: UUID
    state: State
    expire_time: datetime
    interval_seconds: int
    last_poll_time: datetime | None
    client_name: str
    tenant_id: UUID | None
    approver_key_id: UUID | None
    approver_usable: bool  # the approving key is neither revoked nor expired
    granted_scopes: frozenset[str]


class PollOutcome(enum.Enum):
    GRANT = "grant"  # mint the key and consume the code
    ANSWER = "answer"  # record the poll, then raise `error`


@dataclass(frozen=True)
class PollDecision:
    outcome: PollOutcome
    # What to store for the next poll; None leaves the row as it is.
    last_poll_time: datetime | None = None
    interval_seconds: int = 0
    error: DeviceFlowError | None = None


def decide_poll(found: PolledAuthorization | None, now: datetime) -> PollDecision:
    """RFC 8628 §3.5 for one poll, in this order: unknown or used, expired, denied, approved,
    too fast (slow_down, the interval grows by 5 s), still pending."""
    if found is None or found.state is State.CONSUMED:
        return _answer(OAuthError.INVALID_GRANT, "unknown, used or expired device code")
    if now >= found.expire_time:
        return _answer(OAuthError.EXPIRED_TOKEN, "the device code expired; request a new one")
    if found.state is State.DENIED:
        return _answer(OAuthError.ACCESS_DENIED, "the login was denied")
    if found.state is State.APPROVED:
        if not found.approver_usable:
            # The approving key was revoked before the device collected its key.
            return _answer(OAuthError.ACCESS_DENIED, "the approving API key is no longer valid")
        return PollDecision(PollOutcome.GRANT, last_poll_time=now)
    interval = found.interval_seconds
    if found.last_poll_time is not None and now < found.last_poll_time + timedelta(
        seconds=interval
    ):
        interval += SLOW_DOWN_STEP_SECONDS
        return PollDecision(
            PollOutcome.ANSWER,
            last_poll_time=now,
            interval_seconds=interval,
            error=DeviceFlowError(
                OAuthError.SLOW_DOWN,
                f"polling too fast; wait {interval} seconds between polls",
                interval_seconds=interval,
            ),
        )
    return PollDecision(
        PollOutcome.ANSWER,
        last_poll_time=now,
        interval_seconds=interval,
        error=DeviceFlowError(
            OAuthError.AUTHORIZATION_PENDING,
            "waiting for the user to approve the login",
            interval_seconds=interval,
        ),
    )


def _answer(error: OAuthError, message: str) -> PollDecision:
    return PollDecision(PollOutcome.ANSWER, error=DeviceFlowError(error, message))


# -- approving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingAuthorization:
    """A login waiting for a person: what the approval page shows."""

    id: UUID
    user_code: str
    client_name: str
    client_id: str
    client_address: str
    requested_scopes: frozenset[str]
    create_time: datetime
    expire_time: datetime


def granted_scopes(
    requested: frozenset[str],
    approver: frozenset[str],
    chosen: Iterable[str] | None,
    *,
    field: str = "scopes",
) -> frozenset[str]:
    """What an approval grants: the chosen scopes, else those requested, else the approver's.

    Never more than the device asked for (when it asked) nor than the approver holds.
    """
    picked = list(chosen or ())
    if picked:
        grant = scope_rules.parse_scopes(picked, field=field)
        if requested:
            beyond = sorted(grant - requested)
            if beyond:
                raise InvalidArgument(
                    "cannot grant scopes the device did not ask for",
                    [FieldViolation(field, f"not requested: {', '.join(beyond)}")],
                )
    else:
        grant = requested or approver
    check_mintable(approver, grant)
    return grant


def key_name(client_name: str, now: datetime) -> str:
    """The minted key's name: the device and the date, e.g. "roz CLI on lab-3 (device login
    2026-12-01)"."""
    suffix = f" (device login {now.date().isoformat()})"
    base = client_name or DEFAULT_CLIENT_NAME
    return base[: MAX_NAME_LENGTH - len(suffix)] + suffix


# -- the approval page's sessions ----------------------------------------------------------------

SESSION_LIFETIME = timedelta(minutes=10)


def mint_session_id() -> str:
    """The approval page's session cookie: 256 random bits; only the hash is stored."""
    return secrets.token_urlsafe(DEVICE_CODE_BYTES)


hash_session_id = hash_device_code


@dataclass(frozen=True)
class ApproverSession:
    """Who is signed in to the approval page, re-read from their key on every request."""

    principal: Principal
    key_name: str
    tenant_name: str
    expire_time: datetime


# -- brute force -------------------------------------------------------------------------------


@dataclass
class _Window:
    times: deque[float] = field(default_factory=deque)


class GuessLimiter:
    """Wrong user codes per client and in total, over a sliding window.

    `check` refuses a caller any of whose clients (their key, their address …) already made
    `per_client` wrong guesses in the window, and everyone once `overall` were made; `failed`
    records one wrong guess against each client and once in the total. In-process, like
    TokenBuckets: each server process counts on its own.
    """

    def __init__(
        self,
        *,
        per_client: int = 5,
        overall: int = 100,
        window_seconds: float = 60.0,
        clock: Callable[[], float],
        max_clients: int = 100_000,
    ) -> None:
        self._per_client = per_client
        self._overall = overall
        self._window = window_seconds
        self._clock = clock
        self._max_clients = max_clients
        self._clients: dict[Hashable, _Window] = {}
        self._all = _Window()

    def check(self, clients: Iterable[Hashable]) -> None:
        now = self._clock()
        windows = [(self._all, self._overall)]
        windows += [(self._clients[c], self._per_client) for c in clients if c in self._clients]
        for window, limit in windows:
            self._expire(window, now)
            if len(window.times) >= limit:
                wait = window.times[0] + self._window - now
                raise ResourceExhausted(
                    "too many wrong user codes; wait before trying again",
                    retry_after_seconds=max(wait, 1.0),
                )

    def failed(self, clients: Iterable[Hashable]) -> None:
        now = self._clock()
        for client in clients:
            window = self._clients.get(client)
            if window is None:
                if len(self._clients) >= self._max_clients:
                    self._forget_idle(now)
                window = self._clients[client] = _Window()
            window.times.append(now)
        self._all.times.append(now)
        self._expire(self._all, now)

    def _expire(self, window: _Window, now: float) -> None:
        while window.times and window.times[0] <= now - self._window:
            window.times.popleft()

    def _forget_idle(self, now: float) -> None:
        for client, window in list(self._clients.items()):
            self._expire(window, now)
            if not window.times:
                del self._clients[client]
