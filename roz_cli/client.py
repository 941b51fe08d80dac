"""The roz server's HTTP API as the CLI calls it: requests, parsed answers, errors as CliErrors.

Two error shapes come back: the device-login endpoints answer like OAuth (RFC 6749 §5.2,
`{"error", "error_description"}`), every other endpoint with a google.rpc.Status
(`{"code", "message", "details"}`). ApiError carries either as one message for the user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from roz_cli import __version__
from roz_cli.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)

USER_AGENT = f"roz-cli/{__version__}"
# Generous for a slow server, short enough that a dead one does not look like a hang.
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT_ID = "roz-cli"
# A watch sends a checkpoint every 15 s when quiet: four missed ones mean the connection is dead.
WATCH_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=60.0)

# google.rpc.Code numbers → exit codes; a code not here falls back to the HTTP status.
_EXIT_FOR_CODE = {
    3: EXIT_USAGE,  # INVALID_ARGUMENT
    11: EXIT_USAGE,  # OUT_OF_RANGE
    16: EXIT_AUTH,  # UNAUTHENTICATED
    7: EXIT_AUTH,  # PERMISSION_DENIED
    5: EXIT_NOT_FOUND,  # NOT_FOUND
    8: EXIT_UNAVAILABLE,  # RESOURCE_EXHAUSTED (rate limited)
    14: EXIT_UNAVAILABLE,  # UNAVAILABLE
    4: EXIT_UNAVAILABLE,  # DEADLINE_EXCEEDED
    13: EXIT_UNAVAILABLE,  # INTERNAL
    2: EXIT_UNAVAILABLE,  # UNKNOWN
    15: EXIT_UNAVAILABLE,  # DATA_LOSS
}


class ServerUnreachable(CliError):
    """No HTTP answer at all: refused, reset, timed out, TLS failure."""

    exit_code = EXIT_UNAVAILABLE


class UnexpectedAnswer(CliError):
    """The server answered 2xx with something that is not what the API promises."""

    exit_code = EXIT_UNAVAILABLE


class ApiError(CliError):
    """The server answered with an error status; `message` is what it said, for the user."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error: str | None = None,
        retry_after: float | None = None,
        code: int | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        # The OAuth error code (authorization_pending, slow_down, …) of a device endpoint.
        self.error = error
        # Seconds the server asked the client to wait (Retry-After), if it did.
        self.retry_after = retry_after
        # The google.rpc.Status the server sent (code, message, details), when it sent one.
        self.code = code
        self.document = document
        self.exit_code = _exit_code(status, code)

    @property
    def details(self) -> list[dict[str, Any]]:
        """The Status's details (BadRequest, ErrorInfo …) as the server wrote them."""
        details = (self.document or {}).get("details")
        return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []

    @property
    def transient(self) -> bool:
        """Worth asking again later: rate limited, or the server (or a proxy) failing."""
        return self.status == 429 or self.status >= 500 or self.code == 14


def _exit_code(status: int, code: int | None) -> int:
    if code is not None and code in _EXIT_FOR_CODE:
        return _EXIT_FOR_CODE[code]
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 429 or status >= 500:
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


@dataclass(frozen=True)
class DeviceCode:
    """RFC 8628 §3.2: what the user types where, and how the CLI polls meanwhile."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key as the server describes it; never the secret."""

    id: str
    name: str
    key_prefix: str
    scopes: tuple[str, ...]
    create_time: str
    expire_time: str | None = None
    last_used_time: str | None = None
    creator_key_id: str | None = None


@dataclass(frozen=True)
class Caller:
    """GET /api/v1/caller: the tenant and key behind a bearer secret."""

    tenant_id: str
    tenant_name: str
    api_key: ApiKeyInfo


@dataclass(frozen=True)
class AuditVerdict:
    """GET /api/v1/audit-events:verify: whether the tenant's audit trail is intact."""

    intact: bool
    verified_entries: int
    head_sequence: int
    head_hash: str
    broken: str
    broken_sequence: int
    description: str


def http_client(server: str, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client for `server` (a normalised URL); `transport` is for client-logic tests."""
    return httpx.Client(
        base_url=server,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        timeout=TIMEOUT,
        transport=transport,
    )


class RozClient:
    """The endpoints the CLI uses. Calls that need a key take it as `api_key`."""

    def __init__(self, http: httpx.Client, server: str) -> None:
        self.http = http
        self.server = server

    def request_device_code(self, client_name: str, scopes: Sequence[str]) -> DeviceCode:
        body: dict[str, str] = {"client_name": client_name, "client_id": CLIENT_ID}
        if scopes:
            body["scope"] = " ".join(scopes)
        try:
            response = self._send("POST", "/api/v1/device/code", json=body)
        except ApiError as exc:
            if exc.status in (404, 405):
                raise ApiError(
                    exc.status, f"{self.server} does not offer device login ({exc.message})"
                ) from None
            raise
        document = _json_object(response)
        try:
            return DeviceCode(
                device_code=_required_text(document, "device_code"),
                user_code=_required_text(document, "user_code"),
                verification_uri=_required_text(document, "verification_uri"),
                verification_uri_complete=_optional_text(document, "verification_uri_complete"),
                expires_in=_positive_int(document.get("expires_in", 900), "expires_in"),
                interval=_positive_int(document.get("interval", 5), "interval"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedAnswer(f"{self.server} sent an unusable device code: {exc}") from None

    def request_device_token(self, device_code: str) -> str:
        """The new API key once the user approved; ApiError (with `.error`) until then."""
        response = self._send(
            "POST",
            "/api/v1/device/token",
            data={
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": device_code,
                "client_id": CLIENT_ID,
            },
        )
        try:
            return _required_text(_json_object(response), "access_token")
        except (KeyError, TypeError) as exc:
            raise UnexpectedAnswer(
                f"{self.server} sent a token answer without a key: {exc}"
            ) from None

    def get_caller(self, api_key: str) -> Caller:
        document = _json_object(self._send("GET", "/api/v1/caller", api_key=api_key))
        try:
            return _caller_from_json(document)
        except (KeyError, TypeError) as exc:
            raise UnexpectedAnswer(f"{self.server} described the caller oddly: {exc}") from None

    def delete_caller_api_key(self, api_key: str) -> None:
        self._send("DELETE", "/api/v1/caller/api-key", api_key=api_key)

    def approve_device(self, api_key: str, user_code: str, scopes: Sequence[str]) -> None:
        body: dict[str, Any] = {"user_code": user_code}
        if scopes:
            body["scopes"] = list(scopes)
        self._send("POST", "/api/v1/device/approve", api_key=api_key, json=body)

    def deny_device(self, api_key: str, user_code: str) -> None:
        self._send("POST", "/api/v1/device/deny", api_key=api_key, json={"user_code": user_code})

    def verify_audit_events(self, api_key: str) -> AuditVerdict:
        document = _json_object(self._send("GET", "/api/v1/audit-events:verify", api_key=api_key))
        try:
            return AuditVerdict(
                intact=document["intact"] is True,
                verified_entries=int(document.get("verified_entries", 0)),
                head_sequence=int(document.get("head_sequence", 0)),
                head_hash=str(document.get("head_hash", "")),
                broken=str(document.get("broken", "")),
                broken_sequence=int(document.get("broken_sequence", 0)),
                description=str(document.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedAnswer(f"{self.server} sent an unusable verdict: {exc}") from None

    def audit_event_hash(self, api_key: str, sequence: int) -> str | None:
        """The hash of the trail's entry `sequence`, or None when there is no such entry."""
        params = {"after_sequence": str(sequence - 1), "order_by": "sequence", "page_size": "1"}
        document = _json_object(
            self._send("GET", "/api/v1/audit-events", api_key=api_key, params=params)
        )
        events = document.get("audit_events")
        if not isinstance(events, list):
            raise UnexpectedAnswer(f"{self.server} listed audit events oddly")
        if not events or not isinstance(events[0], dict):
            return None
        first = events[0]
        if str(first.get("sequence")) != str(sequence):
            return None
        return str(first.get("hash", ""))

    def call(
        self,
        method: str,
        path: str,
        *,
        api_key: str,
        params: Mapping[str, str | list[str]] | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Any JSON endpoint of the API: its answer as a JSON object, or ApiError."""
        response = self._send(
            method, path, api_key=api_key, params=params, json=body, headers=headers
        )
        return _json_object(response)

    def stream(
        self, path: str, *, api_key: str, params: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The messages of a server stream over REST (NDJSON `{"result": …}` lines), as they
        come. A final `{"error": Status}` line raises ApiError; a dropped or silent connection
        raises ServerUnreachable."""
        request_headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/x-ndjson",
        }
        try:
            with self.http.stream(
                "GET", path, headers=request_headers, params=params, timeout=WATCH_TIMEOUT
            ) as response:
                if not response.is_success:
                    response.read()
                    raise api_error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield _stream_message(line, self.server)
        except httpx.TimeoutException:
            raise ServerUnreachable(f"{self.server} went silent") from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"lost the connection to {self.server}: {str(exc) or type(exc).__name__}"
            ) from None

    def _send(
        self,
        method: str,
        path: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        all_headers.update(headers or {})
        try:
            response = self.http.request(method, path, headers=all_headers, **kwargs)
        except httpx.TimeoutException:
            raise ServerUnreachable(f"{self.server} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach {self.server}: {str(exc) or type(exc).__name__}"
            ) from None
        if response.is_success:
            return response
        raise api_error(response)


def api_error(response: httpx.Response) -> ApiError:
    """An error answer in either shape (OAuth or google.rpc.Status) as one ApiError."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    fallback = f"HTTP {status} {response.reason_phrase}".rstrip()
    location = response.headers.get("location")
    if response.is_redirect and location:
        # Keys are never sent on to another address; the user decides which URL is the server.
        return ApiError(status, f"{fallback}: the server redirects to {location}; use that URL")
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, str) and error:
            description = document.get("error_description")
            message = description if isinstance(description, str) and description else error
            return ApiError(status, message, error=error, retry_after=retry_after)
        status_message = document.get("message")  # google.rpc.Status
        if isinstance(status_message, str) and status_message:
            return status_error(status, document, retry_after=retry_after)
    return ApiError(status, fallback, retry_after=retry_after)


def status_error(
    status: int, document: Mapping[str, Any], *, retry_after: float | None = None
) -> ApiError:
    """A google.rpc.Status body (or a stream's final error) as an ApiError."""
    code = document.get("code")
    message = document.get("message")
    return ApiError(
        status,
        message if isinstance(message, str) and message else f"error code {code}",
        retry_after=retry_after,
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        document=document,
    )


def _stream_message(line: str, server: str) -> dict[str, Any]:
    try:
        document = json.loads(line)
    except ValueError:
        raise UnexpectedAnswer(f"{server} sent a stream line that is not JSON") from None
    result = document.get("result") if isinstance(document, dict) else None
    if isinstance(result, dict):
        return result
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        raise status_error(200, error)
    raise UnexpectedAnswer(f"{server} sent a stream line without a result")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """RFC 9110 §10.2.3: a number of seconds, or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise UnexpectedAnswer(
            f"{response.request.url} answered {response.status_code} without a JSON object"
        )
    return document


def _required_text(document: dict[str, Any], name: str) -> str:
    value = document[name]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} is not a non-empty string")
    return value


def _optional_text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) and value else None


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} is not a positive integer: {value!r}")
    return value


def _caller_from_json(document: dict[str, Any]) -> Caller:
    key = document["api_key"]
    if not isinstance(key, dict):
        raise TypeError("api_key is not an object")
    scopes = key.get("scopes") or []
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise TypeError("api_key.scopes is not a list of strings")
    return Caller(
        tenant_id=_required_text(document, "tenant_id"),
        tenant_name=_optional_text(document, "tenant_name") or "",
        api_key=ApiKeyInfo(
            id=_required_text(key, "id"),
            name=_optional_text(key, "name") or "",
            key_prefix=_optional_text(key, "key_prefix") or "",
            scopes=tuple(scopes),
            create_time=_optional_text(key, "create_time") or "",
            expire_time=_optional_text(key, "expire_time"),
            last_used_time=_optional_text(key, "last_used_time"),
            creator_key_id=_optional_text(key, "creator_key_id"),
        ),
    )
