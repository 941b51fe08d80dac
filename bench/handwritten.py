"""The REST comparator: `GET /api/v1/environments/{id}` written by hand as one small ASGI app.

It does the work the transcoded route does and nothing else: the Bearer key through
ApiKeyRepository.authenticate, the scope check, the same tenant-scoped query through
EnvironmentRepository.get, and json.dumps of the same fields in the same proto3 JSON form, so
the difference between the two is what the gateway (router, transcoder, interceptor chain,
protobuf round trip) costs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from server.domain import scopes
from server.domain.environments import Environment
from server.domain.errors import NotFound
from server.storage.api_keys import ApiKeyRepository, LastUsedRecorder
from server.storage.database import Pool
from server.storage.environments import EnvironmentRepository

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX = "/api/v1/environments/"
REQUIRED_SCOPE = "environments:read"
_KIND_NAMES = {
    "simulation": "KIND_SIMULATION",
    "hardware": "KIND_HARDWARE",
    "hybrid": "KIND_HYBRID",
}


def rfc3339(moment: datetime) -> str:
    """A timestamp as proto3 JSON writes it: UTC, "Z", 0, 3 or 6 fractional digits."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    micros = utc.microsecond
    if micros == 0:
        return text + "Z"
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}Z"
    return f"{text}.{micros:06d}Z"


def environment_json(environment: Environment) -> dict[str, Any]:
    return {
        "id": str(environment.id),
        "name": environment.name,
        "description": environment.description,
        "kind": _KIND_NAMES[environment.kind.value],
        "allowed_tools": list(environment.allowed_tools),
        "safety_policy_ids": [str(value) for value in environment.safety_policy_ids],
        "host_ids": [str(value) for value in environment.host_ids],
        "config": environment.config,
        "create_time": rfc3339(environment.create_time),
        "update_time": rfc3339(environment.update_time),
    }


class HandwrittenEnvironmentEndpoint:
    """One route, one query, no framework: the floor the REST gateway is compared against."""

    def __init__(self, pool: Pool) -> None:
        # Not started: its only cost on the request path, remembering the key, is still paid.
        self._keys = ApiKeyRepository(pool, LastUsedRecorder(pool))
        self._environments = EnvironmentRepository(pool)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, body = await self._respond(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: Scope) -> tuple[int, bytes]:
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PREFIX):
            return 404, _error("no such route")
        authorization = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
        header = authorization.decode("latin-1")
        if header[:7].lower() != "bearer ":
            return 401, _error("missing API key")
        principal = await self._keys.authenticate(header[7:].strip())
        if principal is None:
            return 401, _error("invalid, expired or revoked API key")
        if not scopes.grants(principal.scopes, REQUIRED_SCOPE):
            return 403, _error(f"this API key lacks the scope {REQUIRED_SCOPE!r}")
        try:
            environment_id = UUID(path[len(PREFIX) :])
        except ValueError:
            return 400, _error("id must be a UUID")
        try:
            environment = await self._environments.get(principal.tenant_id, environment_id)
        except NotFound:
            return 404, _error("environment not found")
        body = json.dumps(environment_json(environment), ensure_ascii=False, separators=(",", ":"))
        return 200, body.encode()


def _error(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
