"""DeviceAuthService: device login over the API, and the RFC 6749 shape of its REST answers.

Codes and tokens are public RPCs; approving and denying need an API key with "api-keys:admin",
the scope that may mint keys. Over gRPC every answer that is not a token is a status with an
ErrorInfo whose reason is the OAuth error code in upper case; over REST the same status is
written as RFC 6749 §5.2 wants it: 400 {"error": "authorization_pending", ...}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from google.protobuf import empty_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from roz.v1 import device_auth_pb2 as pb
from roz.v1 import device_auth_pb2_grpc

from gateway.rest.options import RestErrorResponse, RestMethodOptions
from server.api.errors import ERROR_DOMAIN
from server.api.principal import current_principal
from server.domain.api_keys import Principal
from server.domain.device_auth import (
    DeviceFlowError,
    GuessLimiter,
    OAuthError,
    PendingAuthorization,
    check_grant_type,
    format_user_code,
    granted_scopes,
    normalize_user_code,
    validate_device_request,
)
from server.domain.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from server.domain.rate_limits import TokenBuckets
from server.storage.device_authorizations import DeviceAuthorizationRepository

log = logging.getLogger(__name__)

SERVICE = "/roz.v1.DeviceAuthService/"
PUBLIC_METHODS = (SERVICE + "RequestDeviceCode", SERVICE + "ExchangeDeviceCode")
# RFC 6749 §5.1: token responses, errors included, must not be cached.
NO_STORE: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
)
VERIFICATION_PATH = "/device"
RESOURCE = "device login"


@dataclass(frozen=True)
class DeviceLoginSettings:
    base_url: str
    lifetime: timedelta
    interval_seconds: int


class DeviceLogins:
    """What the API and the approval page share: finding a login by its user code under the
    guess limits, and deciding it for a signed-in approver."""

    def __init__(
        self,
        repository: Callable[[], DeviceAuthorizationRepository],
        guesses: GuessLimiter,
        clock: Callable[[], datetime],
    ) -> None:
        self._repository = repository
        self._guesses = guesses
        self.clock = clock

    def repository(self) -> DeviceAuthorizationRepository:
        return self._repository()

    async def find(self, user_code: str, clients: tuple[Hashable, ...]) -> PendingAuthorization:
        """The waiting login a person's code names. Every miss counts against each client."""
        self._guesses.check(clients)
        normalized = normalize_user_code(user_code)
        found = None
        if normalized is not None:
            found = await self._repository().find_pending(normalized, self.clock())
        if found is None:
            self._guesses.failed(clients)
            raise NotFound(RESOURCE, "")
        return found

    async def decide(
        self,
        login: PendingAuthorization,
        approver: Principal,
        *,
        approve: bool,
        scopes: list[str] | None = None,
        field: str = "scopes",
    ) -> frozenset[str]:
        """Approves (granting at most the approver's scopes) or denies; returns what was granted."""
        grant: frozenset[str] = frozenset()
        if approve:
            grant = granted_scopes(login.requested_scopes, approver.scopes, scopes, field=field)
        decided = await self._repository().decide(
            login.id, approver, approve=approve, scopes=grant, now=self.clock()
        )
        if not decided:  # decided elsewhere or expired in the meantime
            raise NotFound(RESOURCE, "")
        log.info(
            "device login %s %s by key %s",
            login.id,
            "approved" if approve else "denied",
            approver.key_id,
            extra={"tenant": str(approver.tenant_id)},
        )
        return grant


class DeviceAuthServicer(device_auth_pb2_grpc.DeviceAuthServiceServicer):  # type: ignore[misc]
    def __init__(
        self, logins: DeviceLogins, settings: DeviceLoginSettings, public_calls: TokenBuckets
    ) -> None:
        self._logins = logins
        self._settings = settings
        self._public_calls = public_calls

    async def RequestDeviceCode(
        self, request: pb.RequestDeviceCodeRequest, context: Any
    ) -> pb.RequestDeviceCodeResponse:
        address = self._limit(context)
        wanted = validate_device_request(request.scope, request.client_name, request.client_id)
        settings = self._settings
        device_code, user_code = await self._logins.repository().start(
            wanted,
            client_address=address,
            now=self._logins.clock(),
            lifetime=settings.lifetime,
            interval_seconds=settings.interval_seconds,
        )
        shown = format_user_code(user_code)
        uri = settings.base_url + VERIFICATION_PATH
        return pb.RequestDeviceCodeResponse(
            device_code=device_code,
            user_code=shown,
            verification_uri=uri,
            verification_uri_complete=f"{uri}?user_code={quote(shown)}",
            expires_in=int(settings.lifetime.total_seconds()),
            interval=settings.interval_seconds,
        )

    async def ExchangeDeviceCode(
        self, request: pb.ExchangeDeviceCodeRequest, context: Any
    ) -> pb.ExchangeDeviceCodeResponse:
        self._limit(context)
        check_grant_type(request.grant_type)
        if not request.device_code:
            raise DeviceFlowError(OAuthError.INVALID_REQUEST, "device_code is required")
        if len(request.device_code) > 100:
            raise DeviceFlowError(OAuthError.INVALID_GRANT, "unknown, used or expired device code")
        key, secret = await self._logins.repository().exchange(
            request.device_code, self._logins.clock()
        )
        log.info("device login collected as key %s", key.id, extra={"tenant": str(key.tenant_id)})
        return pb.ExchangeDeviceCodeResponse(
            access_token=secret,
            token_type="Bearer",  # noqa: S106 (the RFC 6750 token type, not a secret)
            scope=" ".join(sorted(key.scopes)),
        )

    async def ApproveDevice(
        self, request: pb.ApproveDeviceRequest, context: Any
    ) -> empty_pb2.Empty:
        approver = current_principal()
        login = await self._find(request.user_code, approver)
        await self._logins.decide(login, approver, approve=True, scopes=list(request.scopes))
        return empty_pb2.Empty()

    async def DenyDevice(self, request: pb.DenyDeviceRequest, context: Any) -> empty_pb2.Empty:
        approver = current_principal()
        login = await self._find(request.user_code, approver)
        await self._logins.decide(login, approver, approve=False)
        return empty_pb2.Empty()

    def _limit(self, context: Any) -> str:
        """Public calls count against the caller's address (tenants' keys have their own)."""
        address = client_address(context.peer())
        wait = self._public_calls.take(address)
        if wait > 0:
            raise ResourceExhausted(
                f"too many requests from {address}, retry after {wait:.0f}s",
                retry_after_seconds=wait,
            )
        return address

    async def _find(self, user_code: str, approver: Principal) -> PendingAuthorization:
        if not user_code:
            raise InvalidArgument(
                "user_code is required", [FieldViolation("user_code", "user_code is required")]
            )
        # The key is the client: the caller proved who they are, and an address may be shared.
        return await self._logins.find(user_code, (("key", approver.key_id),))


def client_address(peer: str) -> str:
    """The host of a gRPC peer string ("ipv4:10.0.0.1:5123", "ipv6:[::1]:5123")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer or "unknown"


# -- RFC 6749 error bodies over REST ----------------------------------------------------------

_BY_REASON = {error.value.upper(): error for error in OAuthError}
# What a status without a device-flow reason means to an OAuth client.
_BY_CODE = {
    code_pb2.INVALID_ARGUMENT: "invalid_request",
    code_pb2.NOT_FOUND: "invalid_grant",
    code_pb2.RESOURCE_EXHAUSTED: "slow_down",
    code_pb2.UNAVAILABLE: "temporarily_unavailable",
}


def rest_options() -> dict[str, RestMethodOptions]:
    """The public endpoints as OAuth clients expect them: form bodies, RFC 6749 errors and
    no caching; approve and deny stay ordinary JSON methods."""
    options = RestMethodOptions(form_body=True, error_writer=oauth_error, response_headers=NO_STORE)
    return dict.fromkeys(PUBLIC_METHODS, options)


def oauth_error(status: status_pb2.Status, http_status: int) -> RestErrorResponse:
    """RFC 6749 §5.2: {"error", "error_description"}; 400 for the flow's own answers, the
    gateway's status for the rest (413 and 415 as invalid_request, 429 with Retry-After as
    slow_down, 503, 500)."""
    error = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN and info.reason in _BY_REASON:
            error = _BY_REASON[info.reason].value
            break
    if error is not None:
        http_status = 400
    elif http_status == 413:
        # A body too large to read is a malformed request, not a poll to slow down (the
        # RESOURCE_EXHAUSTED under it would say slow_down). 413 stays: the body was never read,
        # the connection may be closed, and OAuth clients read the error from the JSON anyway.
        error = "invalid_request"
    else:
        error = _BY_CODE.get(status.code, "server_error")
        if status.code == code_pb2.INVALID_ARGUMENT and http_status not in (413, 415):
            http_status = 400
    document = {"error": error}
    if status.message:
        document["error_description"] = status.message
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return RestErrorResponse(http_status, [], body, b"application/json")
