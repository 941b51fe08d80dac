"""roz's interceptors: authenticate the API key, check the RPC's scope, limit each tenant's rate,
tell storage who acts (for the audit trail).

They run inside the gateway's one chain, so REST, gRPC-web and native gRPC get the same answers.
Each RPC's rule comes from its `(roz.v1.access)` option, read once at start-up. A key bound to a
host (a robot key) is held to the methods marked `robot` here, in Authorize and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from roz.v1 import access_pb2

from gateway.chain import Call
from gateway.registry import Method
from server.api.principal import set_principal
from server.domain import errors, scopes
from server.domain.api_keys import Principal
from server.domain.audit import Actor, Protocol
from server.domain.rate_limits import TokenBuckets
from server.storage.tenancy import set_actor

# Services from the gRPC ecosystem that carry no roz access option and need no key: the API
# surface is public in the proto anyway, and health must answer load balancers.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)

KeyLookup = Callable[[str], Awaitable[Principal | None]]


@dataclass(frozen=True)
class AccessRule:
    public: bool
    scope: str = ""  # the scope a key not bound to a host needs
    # Any key not bound to a host may call it, whatever its scopes (`authenticated`).
    any_key: bool = False
    # A key bound to a host may call it, for its own host only (`robot`).
    robot: bool = False


class AccessRules:
    """The access rule of every registered RPC; a roz RPC without one fails at start-up."""

    def __init__(self) -> None:
        self._rules: dict[str, AccessRule] = {}

    def load(self, methods: Iterable[Method]) -> None:
        """Reads every method's rule; called once all servicers are registered."""
        for method in methods:
            self._rules[method.path] = _rule_of(method)

    def __getitem__(self, path: str) -> AccessRule:
        return self._rules[path]


def _rule_of(method: Method) -> AccessRule:
    options = method.descriptor.GetOptions()
    extension: Any = access_pb2.access
    if options.HasExtension(extension):
        access = options.Extensions[extension]
        if access.public:
            if access.robot or access.authenticated or access.scope:
                raise ValueError(f"{method.path} is public and also names who may call it")
            return AccessRule(public=True)
        if access.authenticated and not access.scope:
            return AccessRule(public=False, any_key=True, robot=access.robot)
        if access.robot and not access.scope:
            return AccessRule(public=False, robot=True)  # robots only
        if not access.scope or not scopes.is_known(access.scope):
            raise ValueError(f"{method.path} declares an unknown scope {access.scope!r}")
        return AccessRule(public=False, scope=access.scope, robot=access.robot)
    if method.service.full_name in PUBLIC_SERVICES:
        return AccessRule(public=True)
    raise ValueError(f"{method.path} has no (roz.v1.access) option")


BEARER = "bearer "
# ErrorInfo reasons of Authorize's refusals, besides SCOPE_MISSING.
ROBOT_KEY_REFUSED = "ROBOT_KEY_REFUSED"
ROBOT_ONLY = "ROBOT_ONLY"


class Authenticate:
    """Turns `authorization: Bearer roz_sk_…` into the call's Principal."""

    def __init__(self, rules: AccessRules, lookup: KeyLookup) -> None:
        self._rules = rules
        self._lookup = lookup

    async def intercept(self, call: Call) -> None:
        if self._rules[call.method.path].public:
            return
        headers = call.metadata.get_all("authorization")
        if len(headers) > 1:
            # Proxies and clients disagree on which of two wins; guessing would let one
            # credential ride on another's request.
            raise errors.Unauthenticated(
                "ambiguous credentials: send one Authorization header, not several",
                reason="API_KEY_AMBIGUOUS",
            )
        header = call.metadata.get_text("authorization")
        if not header:
            raise errors.Unauthenticated(
                "missing API key: send the header 'Authorization: Bearer roz_sk_…'",
                reason="API_KEY_MISSING",
            )
        if header[: len(BEARER)].lower() != BEARER:
            raise errors.Unauthenticated("the Authorization header must use the Bearer scheme")
        principal = await self._lookup(header[len(BEARER) :].strip())
        if principal is None:
            raise errors.Unauthenticated("invalid, expired or revoked API key")
        set_principal(principal)
        call.log_fields["tenant"] = str(principal.tenant_id)
        call.log_fields["api_key"] = str(principal.key_id)
        if principal.host_id is not None:
            call.log_fields["host"] = str(principal.host_id)
        call.state["principal"] = principal


class Authorize:
    """Refuses a call whose key lacks the RPC's scope, or is bound to a host and the RPC is not
    one a robot may call (whatever scopes it holds: the binding is checked first).

    A robot key that passes here has only been let into the method; that the call is about its
    own host (`Principal.host_id`) is for the method to check.
    """

    def __init__(self, rules: AccessRules) -> None:
        self._rules = rules

    async def intercept(self, call: Call) -> None:
        rule = self._rules[call.method.path]
        if rule.public:
            return
        principal: Principal = call.state["principal"]
        if principal.host_id is not None:
            if not rule.robot:
                raise errors.PermissionDenied(
                    f"this API key is bound to host {principal.host_id} and may call only what "
                    "a robot calls for its own host",
                    reason=ROBOT_KEY_REFUSED,
                )
            return
        if rule.any_key:
            return
        if not rule.scope:
            raise errors.PermissionDenied(
                "only a key bound to a host (a robot key) may call this method",
                reason=ROBOT_ONLY,
            )
        if not scopes.grants(principal.scopes, rule.scope):
            raise errors.PermissionDenied(
                f"this API key lacks the scope {rule.scope!r}", required_scope=rule.scope
            )


class RateLimit:
    """A token bucket per tenant, shared by every protocol; public calls are not counted."""

    def __init__(self, buckets: TokenBuckets) -> None:
        self._buckets = buckets

    async def intercept(self, call: Call) -> None:
        principal: Principal | None = call.state.get("principal")
        if principal is None:
            return
        wait = self._buckets.take(principal.tenant_id)
        if wait > 0:
            raise errors.ResourceExhausted(
                f"rate limit exceeded, retry after {wait:.3f}s", retry_after_seconds=wait
            )


_PROTOCOLS = {protocol.value: protocol for protocol in Protocol if protocol is not Protocol.SERVER}


class RecordActor:
    """Sets the call's Actor (key, robot host, protocol, request id) for every tenant
    transaction the call opens, so the audit trail's triggers record who did it and how.
    Runs on every call, public ones too, so nothing of an earlier call can linger."""

    async def intercept(self, call: Call) -> None:
        principal: Principal | None = call.state.get("principal")
        set_actor(
            Actor(
                key_id=None if principal is None else principal.key_id,
                host_id=None if principal is None else principal.host_id,
                protocol=_PROTOCOLS.get(call.protocol, Protocol.GRPC),
                request_id=call.request_id,
            )
        )
