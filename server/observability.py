"""roz's metrics and tracing, wired: the gateway's request metrics plus what only roz knows
(robots connected, the database pool, sweeps, trigger fires), all in one registry per server.

Everything here is read when `/metrics` is scraped, from state the server keeps anyway: the robot
links' table, psycopg_pool's `get_stats()`, each sweep's tally, the fires this process recorded.
Nothing is added to a request's path beyond the gateway's middleware.

`/metrics` needs no API key, as scrape endpoints usually don't: it holds counts by method,
protocol, code and sweep, never a tenant, key or resource id. Keep it on a network your
Prometheus reaches and the internet does not, as for any scrape endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.asgi import ASGIApp
from gateway.chain import InterceptorChain
from gateway.observability.metrics import InFlightCollector, MetricsPage, RequestMetrics
from gateway.observability.middleware import Observed, as_pages, carrying
from gateway.observability.tracing import Tracing, otlp_tracing
from server.settings import Settings
from server.storage.database import Database
from server.storage.sweeps import SweepStats
from server.storage.triggers import FIRES_RECORDED

NAMESPACE = "roz"
METRICS_PATH = "/metrics"

# psycopg_pool's get_stats() keys: (metric, help, is a counter, scale).
_POOL_STATS = {
    "pool_min": ("db_pool_min", "Connections the pool keeps open at least", False, 1.0),
    "pool_max": ("db_pool_max", "Connections the pool may open at most", False, 1.0),
    "pool_size": ("db_pool_size", "Connections open, in use or not", False, 1.0),
    "pool_available": ("db_pool_available", "Connections open and idle", False, 1.0),
    "requests_waiting": (
        "db_pool_requests_waiting",
        "Requests waiting for a connection",
        False,
        1.0,
    ),
    "requests_num": ("db_pool_requests", "Connections asked for", True, 1.0),
    "requests_queued": ("db_pool_requests_queued", "Requests that had to wait", True, 1.0),
    "requests_wait_ms": (
        "db_pool_requests_wait_seconds",
        "Time requests spent waiting for a connection",
        True,
        0.001,
    ),
    "requests_errors": ("db_pool_requests_errors", "Requests that got no connection", True, 1.0),
    "usage_ms": ("db_pool_usage_seconds", "Time connections were lent out", True, 0.001),
    "connections_num": ("db_pool_connections", "Connections opened", True, 1.0),
    "connections_errors": (
        "db_pool_connections_errors",
        "Connections that failed to open",
        True,
        1.0,
    ),
    "connections_lost": ("db_pool_connections_lost", "Connections found broken", True, 1.0),
}


@dataclass(frozen=True)
class RozState:
    """What the roz collector reads when scraped."""

    robots_connected: Callable[[], int]
    database: Database
    sweeps: Mapping[str, SweepStats]


class RozCollector(Collector):
    def __init__(self, state: RozState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        ns = NAMESPACE
        robots = GaugeMetricFamily(
            f"{ns}_robots_connected", "Robots with a live link to this process"
        )
        robots.add_metric([], self._state.robots_connected())
        yield robots
        yield from self._pool()
        yield from self._sweeps()
        fires = CounterMetricFamily(
            f"{ns}_trigger_fires",
            "Trigger fires this process recorded, by source and outcome",
            labels=["source", "outcome"],
        )
        for (source, outcome), count in sorted(FIRES_RECORDED.items()):
            fires.add_metric([source, outcome], count)
        yield fires

    def _pool(self) -> Iterator[Metric]:
        try:
            stats = self._state.database.pool.get_stats()
        except RuntimeError:  # not open yet, or closed
            return
        for key, (name, documentation, counter, scale) in _POOL_STATS.items():
            value = stats.get(key, 0) * scale
            family: Metric
            if counter:
                family = CounterMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)
            else:
                family = GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)
            yield family

    def _sweeps(self) -> Iterator[Metric]:
        ns = NAMESPACE
        runs = CounterMetricFamily(f"{ns}_sweep_runs", "Sweep runs", labels=["sweep"])
        failures = CounterMetricFamily(
            f"{ns}_sweep_failures", "Sweep runs that failed", labels=["sweep"]
        )
        seconds = CounterMetricFamily(
            f"{ns}_sweep_duration_seconds", "Time spent in sweeps", labels=["sweep"]
        )
        moved = CounterMetricFamily(f"{ns}_sweep_moved", "Rows sweeps moved", labels=["sweep"])
        for name, stats in self._state.sweeps.items():
            runs.add_metric([name], stats.runs)
            failures.add_metric([name], stats.failures)
            seconds.add_metric([name], stats.seconds)
            moved.add_metric([name], stats.moved)
        yield from (runs, failures, seconds, moved)


class Observability:
    """One server's registry, its `/metrics` page and (when configured) its tracing."""

    def __init__(self, settings: Settings, chain: InterceptorChain, methods: list[str]) -> None:
        self.registry = CollectorRegistry()
        # The usual process_* (CPU, memory, open files), python_info and python_gc_* series,
        # which the default registry would have had.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(GC_COLLECTOR)
        self.metrics = RequestMetrics(self.registry, methods, NAMESPACE)
        self._methods = methods
        self._chain = chain
        self.tracing: Tracing | None = None
        if settings.otel_traces_endpoint is not None:
            self.tracing = otlp_tracing(settings.otel_traces_endpoint, settings.otel_service_name)

    def watch(self, state: RozState) -> None:
        self.registry.register(RozCollector(state))

    def pages(self, mounts: Mapping[str, ASGIApp]) -> dict[str, ASGIApp]:
        """The router's mounts, `/metrics` added, each logged and counted as plain HTTP."""
        return as_pages({**mounts, METRICS_PATH: MetricsPage(self.registry)})

    @staticmethod
    def connect(app: ASGIApp) -> ASGIApp:
        """The Connect app, whose refusals are counted as Connect's even before any call."""
        return carrying("connect", app)

    def observe(self, router: ASGIApp) -> Observed:
        observed = Observed(
            router, metrics=self.metrics, methods=self._methods, tracing=self.tracing
        )
        self.registry.register(
            InFlightCollector(self._chain.active_methods, observed.requests_in_flight, NAMESPACE)
        )
        return observed

    async def close(self) -> None:
        """Sends the spans still queued (at shutdown)."""
        if self.tracing is not None:
            await self.tracing.close()
