"""Where the robot link goes: the server as a user writes it, turned into a gRPC target, its
transport security, the REST base URL of the same server, and the channel's keepalive terms."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
from grpc import aio

# The stream is long-lived and often idle: ping it so that NATs and proxies keep it open and a
# dead peer is noticed within half a minute, and let pings go out even with nothing in flight.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidServer(ValueError):
    """The server address cannot be understood; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """One server: `target` for grpc ("host:port"), whether to use TLS, and its REST base."""

    target: str
    tls: bool

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.target}"

    def open_channel(self) -> aio.Channel:
        """A grpc.aio channel (TLS with the system's default roots for https)."""
        if self.tls:
            credentials = grpc.ssl_channel_credentials()
            return aio.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS)
        return aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)


def parse_server(server: str) -> Endpoint:
    """`host:port` and `http://host[:port]` → plaintext; `https://host[:port]` → TLS.

    Ports default to the scheme's (80, 443); a bare `host:port` is plaintext, as on a LAN or in
    development. A path, query, user name or password is refused rather than silently dropped.
    """
    text = server.strip()
    if not text:
        raise InvalidServer("the server address is empty")
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidServer(f"the server must be host:port or an http(s) URL, not {server!r}")
    if not parts.hostname:
        raise InvalidServer(f"the server address names no host: {server!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidServer("the server address must not contain a user name or password")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise InvalidServer(f"the server address must not contain a path or query: {server!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidServer(f"the server address has an invalid port: {server!r}") from None
    host = parts.hostname
    if ":" in host:  # an IPv6 literal keeps its brackets in a target
        host = f"[{host}]"
    return Endpoint(target=f"{host}:{port}", tls=scheme == "https")


def auth_metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)
