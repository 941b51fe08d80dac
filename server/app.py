"""The composition root: settings in, one ASGI app out — database, servicers, gateway, lifespan.

The gateway knows nothing of roz; this module hands it roz's servicers and interceptors and
wires storage in. Every protocol reaches the same registry through the same chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from roz.v1 import (
    api_keys_pb2_grpc,
    audit_pb2_grpc,
    commands_pb2_grpc,
    device_auth_pb2_grpc,
    environments_pb2_grpc,
    estop_pb2_grpc,
    health_pb2_grpc,
    hosts_pb2_grpc,
    metrics_pb2_grpc,
    robot_link_pb2_grpc,
    safety_policies_pb2_grpc,
    sessions_pb2_grpc,
    tasks_pb2_grpc,
    triggers_pb2_grpc,
    watch_pb2_grpc,
)

from gateway.chain import InterceptorChain
from gateway.connect import ConnectApp
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.health import add_health_to
from gateway.openapi import DOCS_PATH, DOCUMENT_PATH, OpenApiPages
from gateway.reflection import add_reflection_to
from gateway.registry import MethodRegistry
from gateway.rest.app import RestApp
from gateway.router import GatewayRouter
from server.api.api_keys import ApiKeyServicer
from server.api.audit import AuditServicer
from server.api.commands import CommandServicer
from server.api.device_auth import (
    DeviceAuthServicer,
    DeviceLogins,
    DeviceLoginSettings,
    rest_options,
)
from server.api.environments import EnvironmentServicer
from server.api.errors import status_for
from server.api.estop import EstopServicer
from server.api.health import HealthMonitor, ServerHealthServicer
from server.api.hosts import HostServicer
from server.api.interceptors import (
    AccessRules,
    Authenticate,
    Authorize,
    RateLimit,
    RecordActor,
)
from server.api.metrics import MetricsServicer
from server.api.robot_link import RobotLinkServicer
from server.api.safety_policies import SafetyPolicyServicer
from server.api.sessions import SessionServicer
from server.api.tasks import TaskServicer
from server.api.triggers import TriggerServicer
from server.api.triggers import rest_options as trigger_rest_options
from server.api.watches import WatchServicer
from server.domain.api_keys import Principal
from server.domain.device_auth import GuessLimiter
from server.domain.rate_limits import TokenBuckets
from server.domain.robot_link import SILENT, LinkTerms
from server.observability import Observability, RozState
from server.openapi import TITLE as OPENAPI_TITLE
from server.openapi import load_comments, roz_document
from server.services.firing import FiringStore, TriggerFiring
from server.services.robot_link import Repositories, RobotLinks
from server.services.sealing import AuditSealer
from server.services.sessions import Sessions
from server.services.watches import AuditTail, Watches, WatchRepositories
from server.settings import Settings
from server.storage.api_keys import ApiKeyRepository, LastUsedRecorder
from server.storage.audit import CHANNEL as AUDIT_CHANNEL
from server.storage.audit import UNSEALED_CHANNEL, AuditRepository, seal, seal_all
from server.storage.bootstrap import bootstrap
from server.storage.commands import CommandRepository, time_out_commands
from server.storage.database import Database
from server.storage.device_authorizations import (
    DeviceAuthorizationRepository,
    purge_device_authorizations,
)
from server.storage.environments import EnvironmentRepository
from server.storage.estops import CHANNEL as ESTOPS_CHANNEL
from server.storage.estops import EstopRepository, estop_epochs
from server.storage.hosts import HostRepository
from server.storage.metrics import MetricsRepository
from server.storage.notifications import NotificationListener
from server.storage.robot_deliveries import CHANNEL as DELIVERIES_CHANNEL
from server.storage.robot_deliveries import RobotDeliveryRepository
from server.storage.robot_links import CHANNEL as LINKS_CHANNEL
from server.storage.robot_links import RobotLinkRepository, release_silent
from server.storage.safety_policies import SafetyPolicyRepository
from server.storage.sessions import CHANNEL as SESSION_EVENTS_CHANNEL
from server.storage.sessions import SessionRepository
from server.storage.sweeps import Sweeper
from server.storage.tasks import TaskRepository, time_out_tasks
from server.storage.triggers import BATCH_SIZE as TRIGGER_BATCH_SIZE
from server.storage.triggers import CHANNEL as TRIGGERS_CHANNEL
from server.storage.triggers import EVENTS_CHANNEL as TRIGGER_EVENTS_CHANNEL
from server.storage.triggers import (
    TriggerRepository,
    dispatch_events,
    event_tenants,
    fire_due,
    schedule_overview,
)
from server.web import DevicePage

log = logging.getLogger(__name__)

# After the grace period: how long calls told to end get to send their UNAVAILABLE, and then how
# long native gRPC calls held by clients that stopped reading get before their streams close.
_CLOSE_SECONDS = 2.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RozServer:
    """One server process. `asgi` is what Hypercorn serves; its lifespan opens the database.

    `clock` is the wall clock of device logins and robot links, `monotonic` the clock of robot
    links' silence and keepalives (tests pass ones they can move).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or _utcnow
        self.database = Database(
            database_url=settings.database_url,
            data_dir=settings.data_dir,
            pool_max_size=settings.db_pool_max,
        )
        self._recorder: LastUsedRecorder | None = None
        presence_window = timedelta(seconds=settings.robot_presence_window_seconds)
        self.sessions = Sessions(
            lambda: SessionRepository(self.database.pool),
            lambda: CommandRepository(self.database.pool),
            clock=self.clock,
            robot_grace=timedelta(seconds=settings.session_robot_grace_seconds),
            idle_timeout=timedelta(seconds=settings.session_idle_seconds),
        )
        self.robot_links = RobotLinks(
            Repositories(
                deliveries=lambda: RobotDeliveryRepository(self.database.pool),
                links=lambda: RobotLinkRepository(self.database.pool),
                commands=lambda: CommandRepository(self.database.pool),
                tasks=lambda: TaskRepository(self.database.pool),
                estops=lambda: EstopRepository(self.database.pool),
                estop_epochs=lambda hosts: estop_epochs(self.database.pool, hosts),
                agent_update=self.sessions.record_agent_update,
            ),
            LinkTerms(
                heartbeat_interval=timedelta(seconds=settings.robot_heartbeat_seconds),
                presence_window=presence_window,
                keepalive_interval=timedelta(seconds=settings.robot_keepalive_seconds),
                hello_timeout=timedelta(seconds=10),
            ),
            pulse_seconds=settings.robot_pulse_seconds,
            clock=self.clock,
            monotonic=monotonic or time.monotonic,
        )
        self.audit_tail = AuditTail(
            lambda tenant, after, limit: AuditRepository(self.database.pool).after(
                tenant, after, limit
            ),
            lambda tenant: AuditRepository(self.database.pool).head(tenant),
        )
        self.robot_links.on_telemetry = self.audit_tail.stir
        self.watches = Watches(
            WatchRepositories(
                audit=lambda: AuditRepository(self.database.pool),
                hosts=lambda: HostRepository(self.database.pool),
                estops=lambda: EstopRepository(self.database.pool),
                commands=lambda: CommandRepository(self.database.pool),
                tasks=lambda: TaskRepository(self.database.pool),
            ),
            self.audit_tail,
            self.robot_links.telemetry.get,
        )
        self.sealer = AuditSealer(
            lambda tenant: seal(self.database.pool, tenant), ours=self.database.is_pool_session
        )
        self.firing = TriggerFiring(
            FiringStore(
                overview=lambda now: schedule_overview(self.database.pool, now),
                fire_due=lambda tenant, now: fire_due(
                    self.database.pool, tenant, now, clock=self.clock
                ),
                event_tenants=lambda: event_tenants(self.database.pool),
                dispatch_events=lambda tenant, now: dispatch_events(
                    self.database.pool, tenant, now
                ),
                batch_size=TRIGGER_BATCH_SIZE,
            ),
            clock=self.clock,
            poll_seconds=settings.trigger_poll_seconds,
        )
        self.listener = NotificationListener(
            lambda: self.database.request_dsn,
            {
                DELIVERIES_CHANNEL: self.robot_links.on_delivery,
                LINKS_CHANNEL: self.robot_links.on_link,
                ESTOPS_CHANNEL: self.robot_links.on_estop,
                AUDIT_CHANNEL: self.audit_tail.on_audit,
                TRIGGERS_CHANNEL: self.firing.wake,
                TRIGGER_EVENTS_CHANNEL: self.firing.on_event,
                SESSION_EVENTS_CHANNEL: self.sessions.on_event,
            },
            on_reconnect=self._reconnected,
            senders={UNSEALED_CHANNEL: self.sealer.on_unsealed_by},
        )
        # Every process sweeps; each sweep is safe alongside the same sweep elsewhere.
        self.sweeper = (
            Sweeper(settings.sweep_interval_seconds)
            .add("task timeouts", time_out_tasks)
            .add("audit seals", seal_all)
            .add("command timeouts", time_out_commands)
            .add(
                "device logins",
                lambda pool: purge_device_authorizations(pool, self.clock()),
            )
            .add("abandoned sessions", lambda _pool: self.sessions.end_abandoned())
            .add(
                "robot presence",
                lambda pool: release_silent(
                    pool, self.clock() - presence_window, reason=SILENT, now=self.clock()
                ),
            )
        )

        # Each tenant's bucket, per process: calls take a token, and so does each message an
        # operator sends on a session's stream.
        self.rate_limits = TokenBuckets(settings.rate_limit_rps, settings.rate_limit_burst)
        self.access_rules = rules = AccessRules()
        chain = InterceptorChain(
            [
                Authenticate(rules, self._authenticate),
                RecordActor(),
                Authorize(rules),
                RateLimit(self.rate_limits),
            ],
            translate_error=status_for,
        )
        self.chain = chain
        self._draining = False
        self.registry = registry = MethodRegistry(chain)
        environments_pb2_grpc.add_EnvironmentServiceServicer_to_server(
            EnvironmentServicer(lambda: EnvironmentRepository(self.database.pool)), registry
        )
        hosts_pb2_grpc.add_HostServiceServicer_to_server(
            HostServicer(lambda: HostRepository(self.database.pool)), registry
        )
        safety_policies_pb2_grpc.add_SafetyPolicyServiceServicer_to_server(
            SafetyPolicyServicer(lambda: SafetyPolicyRepository(self.database.pool)), registry
        )
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(
            TaskServicer(lambda: TaskRepository(self.database.pool)), registry
        )
        metrics_pb2_grpc.add_MetricsServiceServicer_to_server(
            MetricsServicer(lambda: MetricsRepository(self.database.pool)), registry
        )
        commands_pb2_grpc.add_CommandServiceServicer_to_server(
            CommandServicer(lambda: CommandRepository(self.database.pool)), registry
        )
        self.device_logins = DeviceLogins(
            lambda: DeviceAuthorizationRepository(self.database.pool),
            GuessLimiter(
                per_client=settings.device_guesses_per_minute,
                overall=settings.device_guesses_per_minute_total,
                clock=time.monotonic,
            ),
            self.clock,
        )
        device_auth_pb2_grpc.add_DeviceAuthServiceServicer_to_server(
            DeviceAuthServicer(
                self.device_logins,
                DeviceLoginSettings(
                    base_url=settings.base_url,
                    lifetime=timedelta(seconds=settings.device_code_lifetime_seconds),
                    interval_seconds=settings.device_poll_interval_seconds,
                ),
                TokenBuckets(settings.rate_limit_rps, settings.rate_limit_burst),
            ),
            registry,
        )
        estop_pb2_grpc.add_EstopServiceServicer_to_server(
            EstopServicer(lambda: EstopRepository(self.database.pool), self.robot_links.announce),
            registry,
        )
        triggers_pb2_grpc.add_TriggerServiceServicer_to_server(
            TriggerServicer(
                lambda: TriggerRepository(self.database.pool),
                clock=self.clock,
                webhook_base=settings.base_url,
            ),
            registry,
        )
        watch_pb2_grpc.add_WatchServiceServicer_to_server(WatchServicer(self.watches), registry)
        sessions_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(
                self.sessions,
                lambda: SessionRepository(self.database.pool),
                self.rate_limits,
            ),
            registry,
        )
        robot_link_pb2_grpc.add_RobotLinkServiceServicer_to_server(
            RobotLinkServicer(self.robot_links), registry
        )
        api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(
            ApiKeyServicer(self._api_keys), registry
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(lambda: AuditRepository(self.database.pool)), registry
        )
        health_pb2_grpc.add_ServerHealthServiceServicer_to_server(
            ServerHealthServicer(self.database.health_check, lambda: self._draining), registry
        )
        self.health = add_health_to(registry)
        add_reflection_to(registry)
        rules.load(registry.methods())

        self.health_monitor = HealthMonitor(
            self.health,
            self.database.health_check,
            registry.service_names(),
            interval=settings.health_check_interval_seconds,
        )
        # NOT_SERVING as soon as the database is found down, SERVING as soon as it is back.
        self.database.availability.listen(self.health_monitor.wake)
        self.grpc = NativeGrpcApp(
            registry,
            max_message_bytes=settings.max_message_bytes,
            max_buffered_bytes_per_call=settings.max_buffered_bytes_per_call,
            max_buffered_bytes_per_connection=settings.max_buffered_bytes_per_connection,
        )
        self.rest = RestApp(
            registry,
            max_body_bytes=settings.max_body_bytes,
            method_options=rest_options() | trigger_rest_options(),
        )
        api_reference = OpenApiPages(
            roz_document(self.rest, rules, load_comments()), title=OPENAPI_TITLE
        )
        self.observability = Observability(settings, chain, [m.path for m in registry.methods()])
        self.observability.watch(
            RozState(
                robots_connected=self.robot_links.count,
                database=self.database,
                sweeps=self.sweeper.stats,
            )
        )
        router = GatewayRouter(
            grpc_app=self.grpc,
            grpc_web_app=GrpcWebApp(registry, max_message_bytes=settings.max_message_bytes),
            rest_app=self.rest,
            allowed_origins=settings.cors_origins,
            connect_app=self.observability.connect(
                ConnectApp(registry, max_message_bytes=settings.max_message_bytes)
            ),
            lifespan=self.lifespan,
            mounts=self.observability.pages(
                {
                    "/device": DevicePage(
                        self.device_logins, self._authenticate, base_url=settings.base_url
                    ),
                    DOCUMENT_PATH: api_reference,
                    DOCS_PATH: api_reference,
                }
            ),
        )
        self.asgi = self.observability.observe(router)

    def _api_keys(self) -> ApiKeyRepository:
        return ApiKeyRepository(self.database.pool, self._recorder)

    def _reconnected(self) -> None:
        """The notification listener was away: robot links and watches look for what they
        missed."""
        self.robot_links.on_reconnect()
        self.audit_tail.on_reconnect()
        self.firing.on_reconnect()
        self.sessions.on_reconnect()

    async def _authenticate(self, secret: str) -> Principal | None:
        return await self._api_keys().authenticate(secret)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        if self.settings.public_url is None and self.settings.host in ("0.0.0.0", "::"):  # noqa: S104
            log.warning(
                "ROZ_PUBLIC_URL is not set: device logins will send people to %s/device, which "
                "only works on this machine",
                self.settings.base_url,
            )
        self.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self.database.open()
        try:
            await bootstrap(
                self.database.owner_dsn, self.settings.data_dir, self.settings.admin_key
            )
            self._recorder = LastUsedRecorder(self.database.pool)
            self._recorder.start()
            await self.health_monitor.start()
            self.sweeper.start(self.database.pool)
            self.listener.start()
            self.robot_links.start()
            self.firing.start()
            yield
        finally:
            await self.firing.stop()
            await self.robot_links.stop()
            await self.listener.stop()
            await self.sealer.stop()
            await self.sweeper.stop()
            await self.health_monitor.stop()
            if self._recorder is not None:
                await self._recorder.close()
            await self.database.close()
            await self.observability.close()

    async def start_draining(self) -> None:
        """Readiness off at once (/ready 503, every grpc.health.v1 status NOT_SERVING, Watch
        streams told), so load balancers stop sending; calls are still served meanwhile."""
        if self._draining:
            return
        self._draining = True
        told = self.robot_links.drain("server is shutting down", timedelta(seconds=1))
        if told:
            log.info("told %d robots to reconnect elsewhere", told)
        await self.health.enter_graceful_shutdown()

    async def drain(self, grace_seconds: float) -> None:
        """Lets calls in flight on every protocol finish for up to `grace_seconds`, then ends
        the rest with UNAVAILABLE, which each protocol reports to its client."""
        await self.start_draining()
        try:
            async with asyncio.timeout(grace_seconds):
                await self.chain.wait_idle()
            return
        except TimeoutError:
            pass
        told = self.chain.close_calls("server is shutting down")
        log.info("ending %d calls still open after the grace period with UNAVAILABLE", told)
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self.chain.wait_idle()
            return
        except TimeoutError:
            pass
        # Left: calls whose client stopped reading, holding their answer back; native gRPC
        # ones are ended by their adapter, the rest go with their connections.
        log.info("%d calls did not end; closing their streams", self.chain.active_calls())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self.grpc.close_streams()
