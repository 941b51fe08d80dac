"""The request metrics of one server, and the `/metrics` page that serves its registry.

Each server has a `CollectorRegistry` of its own (never prometheus-client's global one), so
several servers in one process each count only their own requests. Labels are bounded: `method`
is a registered RPC ("roz.v1.HostService/GetHost") or `unknown` (an unknown route, a page, a
preflight: never a raw path); `code` is a gRPC status code's name (for REST's own refusals, the
code of their google.rpc.Status), or empty when none applies (a page, a preflight); no tenant or
key is ever a label.

What can be read when scraped is read then: calls in flight (and open streams) by method from
the interceptor chain, requests in flight from the middleware's own count. Only the request
counter and the latency histogram are updated as each request ends.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gateway.asgi import Receive, Scope, Send

if TYPE_CHECKING:
    from gateway.registry import Method

UNKNOWN_METHOD = "unknown"
# From a health check's millisecond to a long poll; streams land in +Inf by design.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Counts each request as it ends: by protocol, RPC method, gRPC code and HTTP status."""

    def __init__(
        self, registry: CollectorRegistry, methods: Collection[str], namespace: str = "roz"
    ) -> None:
        # "/pkg.Service/Method" → its label, "pkg.Service/Method": only these ever become labels.
        self._labels = {path: path.lstrip("/") for path in methods}
        self._requests = Counter(
            "requests",
            "HTTP requests served, by protocol, RPC method, gRPC code and HTTP status",
            ["protocol", "method", "code", "status"],
            namespace=namespace,
            registry=registry,
        )
        self._duration = Histogram(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's whole life)",
            ["protocol", "method"],
            namespace=namespace,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._children: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}

    def method_label(self, path: str) -> str:
        return self._labels.get(path, UNKNOWN_METHOD)

    def record(self, protocol: str, method: str, code: str, status: int, seconds: float) -> None:
        key = (protocol, method, code, status)
        children = self._children.get(key)
        if children is None:
            # labels() takes a lock and builds a key each time; the labels are bounded, so
            # each combination's children are looked up once and kept.
            children = self._children[key] = (
                self._requests.labels(protocol, method, code, str(status)),
                self._duration.labels(protocol, method),
            )
        children[0].inc()
        children[1].observe(seconds)


class InFlightCollector(Collector):
    """Calls and open streams by method (from the chain), requests in flight (from the
    middleware), read when scraped."""

    def __init__(
        self,
        active_methods: Callable[[], list[Method]],
        requests_in_flight: Callable[[], int],
        namespace: str = "roz",
    ) -> None:
        self._active_methods = active_methods
        self._requests_in_flight = requests_in_flight
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        ns = self._namespace
        calls: Tally[str] = Tally()
        streams: Tally[str] = Tally()
        for method in self._active_methods():
            label = method.path.lstrip("/")
            calls[label] += 1
            if method.kind.request_streaming or method.kind.response_streaming:
                streams[label] += 1
        requests = GaugeMetricFamily(
            f"{ns}_requests_in_flight", "HTTP requests being served, streams included"
        )
        requests.add_metric([], self._requests_in_flight())
        yield requests
        yield _by_method(f"{ns}_calls_in_flight", "RPC calls in the interceptor chain", calls)
        yield _by_method(
            f"{ns}_streams_open",
            "Streaming calls open (robot links, watches, sessions, server streams)",
            streams,
        )


def _by_method(name: str, documentation: str, counts: Tally[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["method"])
    for method, count in sorted(counts.items()):
        family.add_metric([method], count)
    return family


class MetricsPage:
    """`GET /metrics`: the registry in Prometheus' text format, or OpenMetrics when the scraper
    asks for it (Accept). Unauthenticated, as scrape endpoints usually are: it carries no tenant
    data, only counts by method, protocol and code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(
                send, 405, b"text/plain; charset=utf-8", b"GET only\n", [(b"allow", b"GET, HEAD")]
            )
            return
        accept = ""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        # Small and in memory: the collectors read counters and sizes, nothing that waits.
        body = encoder(self._registry)
        if scope["method"] == "HEAD":
            await _answer(send, 200, content_type.encode(), b"", [], length=len(body))
            return
        await _answer(send, 200, content_type.encode(), body, [])


async def _answer(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body) if length is None else length).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
