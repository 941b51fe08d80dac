"""What the gateway tells operators about each request: the access log, Prometheus metrics and
OpenTelemetry spans, all written by one ASGI middleware around the router (`middleware.py`).

- `exchange.py`: the record of one HTTP request that the layers serving it fill in (the chain
  says which RPC ran and how it ended), found through a context variable.
- `middleware.py`: `Observed`, the outermost ASGI app: one access-log line per request, the
  request metrics, a SERVER span when tracing is on.
- `metrics.py`: the request metrics and the `/metrics` page.
- `tracing.py`: spans, parented on the caller's W3C `traceparent`, exported over OTLP/HTTP.
"""
