"""Hypercorn's configuration for one port carrying REST, gRPC-web and long-lived gRPC streams."""

from __future__ import annotations

import logging

from hypercorn.config import Config

from server.settings import Settings

# Hypercorn closes an HTTP/2 connection after keep_alive_max_requests (default 1000), which a
# long-lived gRPC channel sees as UNAVAILABLE; one channel may make far more calls than that.
MAX_REQUESTS_PER_CONNECTION = 2**31 - 1


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.keep_alive_max_requests = MAX_REQUESTS_PER_CONNECTION
    config.h2_max_concurrent_streams = settings.max_concurrent_streams
    # Idle connections between calls (robots, CLIs) stay open this long; streams in progress are
    # not idle and are never cut by it.
    config.keep_alive_timeout = settings.keep_alive_timeout_seconds
    # Beyond our own grace period, so the drain can end streams with UNAVAILABLE first.
    config.graceful_timeout = settings.shutdown_grace_seconds + 5
    config.accesslog = None  # the interceptor chain writes the access log, with request ids
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once
    config.include_server_header = False
    if settings.tls_cert is not None and settings.tls_key is not None:
        config.certfile = str(settings.tls_cert)
        config.keyfile = str(settings.tls_key)
        config.alpn_protocols = ["h2", "http/1.1"]
    return config
