"""OpenTelemetry spans for requests: one SERVER span each, parented on the caller's W3C trace.

Only built when tracing is configured; a server without it creates no SDK object at all and the
middleware skips every step here. The tracer provider is this server's own (never the global
one), so several servers in one process keep their spans apart. Spans leave through a batch
processor, which exports from its own thread; `close` flushes what is left, off the event loop.

The parent comes from `traceparent` and `tracestate`: HTTP headers for REST, gRPC-web and
Connect, and the same headers, as metadata, for native gRPC. A span is named after its RPC
("roz.v1.HostService/GetHost") once the chain has said which ran; a request refused before any
RPC was chosen keeps its HTTP method as its name. Its status is ERROR for the gRPC codes the
semantic conventions count as a server's error (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
INTERNAL, UNAVAILABLE, DATA_LOSS), and for HTTP 5xx when no gRPC code applies; a client's
mistake (NOT_FOUND, INVALID_ARGUMENT …) is not the server's error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.asgi import Headers

_SERVER_ERRORS = frozenset(
    code.name
    for code in (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)
_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
_PROPAGATED = (b"traceparent", b"tracestate")


class Tracing:
    """Spans for one server: started when a request arrives, ended with what it became."""

    def __init__(self, exporter: SpanExporter, service_name: str) -> None:
        # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
        self._provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, http_method: str, headers: Headers) -> tuple[Span, object]:
        """A span for the request, made current (so that spans made while serving it are its
        children); returns it and the token that `end` needs."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in _PROPAGATED
        }
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(http_method, context=parent, kind=SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def end(
        span: Span,
        token: object,
        *,
        protocol: str,
        rpc: str,
        code: str,
        status: int,
        attributes: dict[str, Any],
    ) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        if rpc:
            service, _, method = rpc.lstrip("/").partition("/")
            span.update_name(f"{service}/{method}")
            span.set_attribute("rpc.system", "connect_rpc" if protocol == "connect" else "grpc")
            span.set_attribute("rpc.service", service)
            span.set_attribute("rpc.method", method)
        if code:
            span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        if status:
            span.set_attribute("http.response.status_code", status)
        span.set_attributes(attributes)
        if code in _SERVER_ERRORS or (not code and status >= 500):
            span.set_status(Status(StatusCode.ERROR, code or str(status)))
        span.end()

    async def close(self) -> None:
        """Exports what is still queued and stops the exporter, on a thread: it waits on HTTP."""
        await asyncio.to_thread(self._provider.shutdown)


def otlp_tracing(endpoint: str, service_name: str) -> Tracing:
    """Tracing that exports to an OTLP/HTTP collector at `endpoint` (…/v1/traces). Headers,
    timeout and compression come from the usual OTEL_EXPORTER_OTLP_* variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return Tracing(OTLPSpanExporter(endpoint=endpoint), service_name)
