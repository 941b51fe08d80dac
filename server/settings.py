"""Every setting of the server, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the server cannot use; the message names the variable."""


def default_data_dir(env: Mapping[str, str]) -> Path:
    """Per-user: $XDG_DATA_HOME/roz, else ~/.local/share/roz."""
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "roz"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    admin_key: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * MIB
    max_message_bytes: int = 4 * MIB
    # What a gRPC client may have sent that its servicer has not read yet, per call and per
    # connection; and how many streams one HTTP/2 connection may have open at once.
    max_buffered_bytes_per_call: int = 8 * MIB
    max_buffered_bytes_per_connection: int = 32 * MIB
    max_concurrent_streams: int = 100
    rate_limit_rps: float = 100.0
    rate_limit_burst: int = 200
    # On SIGTERM: readiness off at once, serving on for drain_seconds (load balancers stop
    # sending), then no new connections and shutdown_grace_seconds for calls in flight.
    drain_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0
    keep_alive_timeout_seconds: float = 300.0
    health_check_interval_seconds: float = 5.0
    sweep_interval_seconds: float = 5.0
    db_pool_max: int = 10
    # The robot link: how often robots heartbeat, how long a silent one is still taken for
    # present, how long the server's side stays quiet before a keepalive, how often each
    # process vouches for its streams in the database (and catches up on missed wake-ups).
    robot_heartbeat_seconds: float = 10.0
    robot_presence_window_seconds: float = 30.0
    robot_keepalive_seconds: float = 15.0
    robot_pulse_seconds: float = 5.0
    # Triggers: the longest a process's scheduler sleeps before looking at the schedules again,
    # and how often its dispatcher looks for events whose wake-up it missed.
    trigger_poll_seconds: float = 5.0
    # Agent sessions: how long a session's robot may stay away before the session ends
    # (ROBOT_GONE), and how long a session may go without an event before it ends (IDLE).
    session_robot_grace_seconds: float = 60.0
    session_idle_seconds: float = 3600.0
    # Device login: the address people reach the server at (for the approval page's URL; by
    # default built from host and port), how long codes live, how often devices may poll, and
    # how many wrong user codes one client, and everyone together, may try per minute.
    public_url: str | None = None
    device_code_lifetime_seconds: int = 900
    device_poll_interval_seconds: int = 5
    device_guesses_per_minute: int = 5
    device_guesses_per_minute_total: int = 100
    log_level: str = "INFO"
    log_format: str = "text"
    # Tracing, off unless configured with the standard OTEL_* variables: where spans go over
    # OTLP/HTTP (None: no tracing at all), and the service name they carry.
    otel_traces_endpoint: str | None = None
    otel_service_name: str = "roz"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        settings = cls(
            host=reader.text("ROZ_HOST", cls.host),
            port=reader.integer("PORT", cls.port, minimum=0, maximum=65535),
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env["ROZ_DATA_DIR"])
            if env.get("ROZ_DATA_DIR")
            else default_data_dir(env),
            admin_key=env.get("ROZ_ADMIN_KEY") or None,
            tls_cert=reader.path("ROZ_TLS_CERT"),
            tls_key=reader.path("ROZ_TLS_KEY"),
            cors_origins=reader.items("ROZ_CORS_ORIGINS"),
            max_body_bytes=reader.integer("ROZ_MAX_BODY_BYTES", cls.max_body_bytes, minimum=1),
            max_message_bytes=reader.integer(
                "ROZ_MAX_MESSAGE_BYTES", cls.max_message_bytes, minimum=1
            ),
            max_buffered_bytes_per_call=reader.integer(
                "ROZ_MAX_BUFFERED_BYTES_PER_CALL", cls.max_buffered_bytes_per_call, minimum=1
            ),
            max_buffered_bytes_per_connection=reader.integer(
                "ROZ_MAX_BUFFERED_BYTES_PER_CONNECTION",
                cls.max_buffered_bytes_per_connection,
                minimum=1,
            ),
            max_concurrent_streams=reader.integer(
                "ROZ_MAX_CONCURRENT_STREAMS", cls.max_concurrent_streams, minimum=1
            ),
            rate_limit_rps=reader.number("ROZ_RATE_LIMIT_RPS", cls.rate_limit_rps, minimum=0.001),
            rate_limit_burst=reader.integer(
                "ROZ_RATE_LIMIT_BURST", cls.rate_limit_burst, minimum=1
            ),
            drain_seconds=reader.number("ROZ_DRAIN_SECONDS", cls.drain_seconds, minimum=0),
            shutdown_grace_seconds=reader.number(
                "ROZ_SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds, minimum=0
            ),
            keep_alive_timeout_seconds=reader.number(
                "ROZ_KEEP_ALIVE_TIMEOUT_SECONDS", cls.keep_alive_timeout_seconds, minimum=1
            ),
            health_check_interval_seconds=reader.number(
                "ROZ_HEALTH_CHECK_INTERVAL_SECONDS", cls.health_check_interval_seconds, minimum=0.1
            ),
            sweep_interval_seconds=reader.number(
                "ROZ_SWEEP_INTERVAL_SECONDS", cls.sweep_interval_seconds, minimum=0.1
            ),
            db_pool_max=reader.integer("ROZ_DB_POOL_MAX", cls.db_pool_max, minimum=1),
            robot_heartbeat_seconds=reader.number(
                "ROZ_ROBOT_HEARTBEAT_SECONDS", cls.robot_heartbeat_seconds, minimum=0.1
            ),
            robot_presence_window_seconds=reader.number(
                "ROZ_ROBOT_PRESENCE_WINDOW_SECONDS", cls.robot_presence_window_seconds, minimum=0.2
            ),
            robot_keepalive_seconds=reader.number(
                "ROZ_ROBOT_KEEPALIVE_SECONDS", cls.robot_keepalive_seconds, minimum=0.1
            ),
            robot_pulse_seconds=reader.number(
                "ROZ_ROBOT_PULSE_SECONDS", cls.robot_pulse_seconds, minimum=0.1
            ),
            trigger_poll_seconds=reader.number(
                "ROZ_TRIGGER_POLL_SECONDS", cls.trigger_poll_seconds, minimum=0.05
            ),
            session_robot_grace_seconds=reader.number(
                "ROZ_SESSION_ROBOT_GRACE_SECONDS", cls.session_robot_grace_seconds, minimum=1
            ),
            session_idle_seconds=reader.number(
                "ROZ_SESSION_IDLE_SECONDS", cls.session_idle_seconds, minimum=1
            ),
            public_url=reader.url("ROZ_PUBLIC_URL"),
            device_code_lifetime_seconds=reader.integer(
                "ROZ_DEVICE_CODE_LIFETIME_SECONDS",
                cls.device_code_lifetime_seconds,
                minimum=10,
                maximum=86_400,
            ),
            device_poll_interval_seconds=reader.integer(
                "ROZ_DEVICE_POLL_INTERVAL_SECONDS",
                cls.device_poll_interval_seconds,
                minimum=1,
                maximum=60,
            ),
            device_guesses_per_minute=reader.integer(
                "ROZ_DEVICE_GUESSES_PER_MINUTE", cls.device_guesses_per_minute, minimum=1
            ),
            device_guesses_per_minute_total=reader.integer(
                "ROZ_DEVICE_GUESSES_PER_MINUTE_TOTAL",
                cls.device_guesses_per_minute_total,
                minimum=1,
            ),
            log_level=reader.choice(
                "ROZ_LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            log_format=reader.choice("ROZ_LOG_FORMAT", cls.log_format, ("text", "json")),
            otel_traces_endpoint=_traces_endpoint(env),
            otel_service_name=env.get("OTEL_SERVICE_NAME") or cls.otel_service_name,
        )
        window = settings.robot_presence_window_seconds
        if window <= max(settings.robot_heartbeat_seconds, settings.robot_keepalive_seconds):
            raise SettingsError(
                "ROZ_ROBOT_PRESENCE_WINDOW_SECONDS must be longer than ROZ_ROBOT_HEARTBEAT_SECONDS"
                " and ROZ_ROBOT_KEEPALIVE_SECONDS (robots stop when the server is silent that long)"
            )
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise SettingsError("ROZ_TLS_CERT and ROZ_TLS_KEY must be set together")
        return settings

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def base_url(self) -> str:
        """Where people reach this server: ROZ_PUBLIC_URL, else this listener's own address."""
        if self.public_url:
            return self.public_url
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans go, from the standard variables: on when OTEL_TRACES_EXPORTER says otlp or an
    OTLP endpoint is set; off when neither is, or the exporter is "none", or the SDK disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    if exporters - {"otlp", "none"}:
        raw = env["OTEL_TRACES_EXPORTER"]
        raise SettingsError(f"OTEL_TRACES_EXPORTER must be otlp or none, not {raw!r}")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name)
        if protocol and protocol != "http/protobuf":
            raise SettingsError(f"{name} must be http/protobuf (OTLP over HTTP), not {protocol!r}")
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if "none" in exporters or (not exporters and not traces and not base):
        return None
    if traces:
        return traces
    if base:
        return base.rstrip("/") + "/v1/traces"
    return "http://localhost:4318/v1/traces"


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name) or default

    def path(self, name: str) -> Path | None:
        value = self._env.get(name)
        return Path(value) if value else None

    def url(self, name: str) -> str | None:
        """An absolute http(s) URL without query or fragment; returned without a trailing "/"."""
        raw = self._env.get(name)
        if not raw:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{name} must be an absolute http:// or https:// URL, not {raw!r}")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise SettingsError(f"{name} must not carry credentials, a query or a fragment")
        return raw.rstrip("/")

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self._env.get(name, "").split(",") if item.strip())

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._env.get(name) or default
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self._env.get(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise SettingsError(f"{name} must be {bounds}, not {value}")
        return value

    def number(self, name: str, default: float, minimum: float) -> float:
        raw = self._env.get(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise SettingsError(f"{name} must be >= {minimum}, not {raw}")
        return value
