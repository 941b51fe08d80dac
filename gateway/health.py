"""grpc.health.v1 for a method registry: grpcio's asyncio HealthServicer, plus the List it lacks.

Nothing here knows what "healthy" means; the application sets statuses with `await
servicer.set(service, status)` and calls `enter_graceful_shutdown()` before draining. Watch streams
through `context.write()`, which the interceptor chain adapts for every protocol.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The documented name is grpc_health.v1.health.aio, an implicit re-export of this module that
# strict mypy does not follow.
from grpc_health.v1._async import HealthServicer as _AioHealthServicer

from gateway.registry import MethodRegistry

SERVICE_NAME = "grpc.health.v1.Health"

# The limit the protocol names: above it List answers RESOURCE_EXHAUSTED instead of a huge map.
LIST_LIMIT = 100

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(_AioHealthServicer):  # type: ignore[misc]
    """grpcio-health-checking 1.85's asyncio servicer answers Check and Watch, but its List is the
    generated stub's UNIMPLEMENTED; this adds it."""

    async def List(self, request: Any, context: Any) -> Any:
        # `_server_status` is the base class's (annotated) table of statuses; a test covers List
        # so an upgrade that renames it fails loudly rather than silently.
        statuses: dict[str, Any] = dict(self._server_status)
        if len(statuses) > LIST_LIMIT:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {LIST_LIMIT} services"
            )
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


def add_health_to(registry: MethodRegistry) -> HealthServicer:
    """Registers grpc.health.v1.Health; the whole server ("") starts SERVING."""
    try:
        registry.pool.FindServiceByName(SERVICE_NAME)
    except KeyError:
        # A private pool lacks the generated file (it has no dependencies); the registry needs
        # the service's descriptor to register it.
        proto = descriptor_pb2.FileDescriptorProto()
        health_pb2.DESCRIPTOR.CopyToProto(proto)
        registry.pool.Add(proto)
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, registry)
    return servicer
