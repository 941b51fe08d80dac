"""Health: /health and /ready for people and load balancers, grpc.health.v1 for gRPC clients.

Both reflect the same fact — whether the database answers — which a monitor task refreshes
every interval, and at once when told the database went away or came back (`wake`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from grpc_health.v1 import health_pb2
from roz.v1 import health_pb2 as roz_health_pb2
from roz.v1 import health_pb2_grpc as roz_health_pb2_grpc

from server import background
from server.domain import errors

log = logging.getLogger(__name__)

DatabaseCheck = Callable[[], Awaitable[bool]]


class ServerHealthServicer(roz_health_pb2_grpc.ServerHealthServiceServicer):  # type: ignore[misc]
    def __init__(
        self, check_database: DatabaseCheck, draining: Callable[[], bool] = lambda: False
    ) -> None:
        self._check_database = check_database
        self._draining = draining

    async def GetHealth(
        self, request: roz_health_pb2.GetHealthRequest, context: Any
    ) -> roz_health_pb2.GetHealthResponse:
        return roz_health_pb2.GetHealthResponse(status="ok")

    async def GetReadiness(
        self, request: roz_health_pb2.GetReadinessRequest, context: Any
    ) -> roz_health_pb2.GetReadinessResponse:
        if self._draining():
            raise errors.Unavailable("not ready: the server is shutting down")
        if not await self._check_database():
            raise errors.Unavailable("not ready: the database does not answer")
        return roz_health_pb2.GetReadinessResponse(status="ok", checks={"database": "ok"})


class HealthMonitor:
    """Keeps grpc.health.v1 statuses in step with the database, checking every `interval` and
    whenever `wake()` is called."""

    def __init__(
        self,
        health: Any,
        check_database: DatabaseCheck,
        services: Sequence[str],
        interval: float = 5.0,
    ) -> None:
        self._health = health
        self._check_database = check_database
        self._services = ["", *services]
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()

    def wake(self, *_: object) -> None:
        """Checks again now (a listener for the database's changes of state)."""
        self._woken.set()

    async def refresh(self) -> bool:
        healthy = await self._check_database()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._services:
            await self._health.set(service, status)
        return healthy

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def _run(self) -> None:
        was_healthy = True
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see gateway/grpc_native.py
                async with asyncio.timeout(self._interval):
                    await self._woken.wait()
            self._woken.clear()
            try:
                healthy = await self.refresh()
            except Exception:
                log.exception("health check failed")
                healthy = False
            if healthy != was_healthy:  # the outage itself is logged by the storage layer
                log.info("health: %s", "SERVING" if healthy else "NOT_SERVING")
                was_healthy = healthy

    async def stop(self) -> None:
        """Marks everything NOT_SERVING for good (graceful shutdown) and stops checking."""
        task, self._task = self._task, None
        await background.stop(task)
        await self._health.enter_graceful_shutdown()
