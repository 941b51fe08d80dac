"""The servers under test, in one process of their own: `python -m bench.servers`.

On one event loop, sharing one RozServer (and so one database pool and one interceptor chain):
- roz's port: Hypercorn serving `RozServer.asgi` with the production listener configuration;
- the gRPC comparator: `grpc.aio.server()` given `registry.generic_handler()`, the very same
  wrapped servicers;
- the REST comparator: Hypercorn, configured the same, serving the hand-written endpoint.

The database is an embedded PostgreSQL in a temporary ROZ_DATA_DIR. Once everything listens and
the API key and environment exist, one line (Endpoints) goes to stdout; the process then
serves until its stdin closes or it receives SIGTERM/SIGINT, and removes the data directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from hypercorn.asyncio import serve as hypercorn_serve

from bench.handwritten import HandwrittenEnvironmentEndpoint
from server.app import RozServer
from server.domain.api_keys import mint_secret, validate_new_key
from server.domain.environments import EnvironmentDraft, EnvironmentKind
from server.domain.hosts import HostDraft
from server.domain.safety_policies import Limits, SafetyPolicyDraft
from server.listener import hypercorn_config
from server.logs import configure_logging
from server.settings import Settings
from server.storage.api_keys import ApiKeyRepository
from server.storage.environments import EnvironmentRepository
from server.storage.hosts import HostRepository
from server.storage.safety_policies import SafetyPolicyRepository

HOST = "127.0.0.1"
READER_SCOPES = ("environments:read",)
READY = "bench-servers-ready "  # prefixes the one stdout line the load side waits for


@dataclass(frozen=True)
class Endpoints:
    """What the load side needs to know: where each server listens and what to ask it."""

    roz_port: int
    grpcio_port: int
    handwritten_port: int
    api_key: str
    environment_id: str
    postgres_version: str

    def to_line(self) -> str:
        return READY + json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_line(cls, line: str) -> Endpoints | None:
        """The endpoints, if this stdout line announces them."""
        if not line.startswith(READY):
            return None
        return cls(**json.loads(line[len(READY) :]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bench_settings(data_dir: Path) -> Settings:
    """Production defaults, except a rate limit so high it never interferes."""
    return Settings(
        host=HOST,
        port=free_port(),
        data_dir=data_dir,
        admin_key=mint_secret(),
        rate_limit_rps=1e9,
        rate_limit_burst=10**9,
    )


async def _wait_listening(port: int, serving: asyncio.Task[Any]) -> None:
    for _ in range(1200):
        if serving.done():
            serving.result()  # raises what stopped the server
            raise RuntimeError(f"the server for port {port} stopped before listening")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listens on port {port}")


async def _seed(app: RozServer, admin_key: str) -> tuple[str, str, str]:
    """A read-only API key and one realistic environment in the bootstrap tenant."""
    pool = app.database.pool
    admin = await ApiKeyRepository(pool).authenticate(admin_key)
    if admin is None:
        raise RuntimeError("the bootstrap admin key does not authenticate")
    new_key = validate_new_key("bench-reader", READER_SCOPES, None, now=datetime.now(UTC))
    _, secret = await ApiKeyRepository(pool).create(admin.tenant_id, new_key)
    policy = await SafetyPolicyRepository(pool).create(
        admin.tenant_id,
        SafetyPolicyDraft(name="bench-cell-limits", limits=Limits(max_linear_velocity=1.5)),
    )
    environment = await EnvironmentRepository(pool).create(
        admin.tenant_id,
        EnvironmentDraft(
            name="bench-warehouse-cell-3",
            description="Two arms and a conveyor; used by the benchmark.",
            kind=EnvironmentKind.HARDWARE,
            allowed_tools=("move_arm", "open_gripper", "close_gripper", "camera.snapshot"),
            safety_policy_ids=(policy.id,),
            config={"max_speed_mps": 1.5, "zones": ["pick", "pack"], "lights": {"on": True}},
        ),
    )
    # Hosts name their environment; the environment reads them back as host_ids.
    for arm in ("bench-arm-left", "bench-arm-right"):
        await HostRepository(pool).create(
            admin.tenant_id, HostDraft(name=arm, environment_id=environment.id)
        )
    async with pool.connection() as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
    version = str(row[0]) if row else "unknown"
    return secret, str(environment.id), version


def _stop_on_stdin_close_or_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stdin = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(stdin, 4096):
            loop.remove_reader(stdin)
            stop.set()

    loop.add_reader(stdin, readable)


async def serve(data_dir: Path) -> None:
    settings = bench_settings(data_dir)
    assert settings.admin_key is not None
    app = RozServer(settings)
    stop = asyncio.Event()
    _stop_on_stdin_close_or_signal(stop)
    roz = asyncio.create_task(
        hypercorn_serve(app.asgi, hypercorn_config(settings), shutdown_trigger=stop.wait)
    )
    await _wait_listening(settings.port, roz)  # the lifespan (database) is up before the bind

    grpcio = grpc.aio.server()
    grpcio.add_generic_rpc_handlers((app.registry.generic_handler(),))
    grpcio_port = grpcio.add_insecure_port(f"{HOST}:0")
    await grpcio.start()

    handwritten_settings = dataclasses.replace(settings, port=free_port())
    handwritten = asyncio.create_task(
        hypercorn_serve(
            HandwrittenEnvironmentEndpoint(app.database.pool),
            hypercorn_config(handwritten_settings),
            shutdown_trigger=stop.wait,
        )
    )
    await _wait_listening(handwritten_settings.port, handwritten)

    api_key, environment_id, postgres_version = await _seed(app, settings.admin_key)
    endpoints = Endpoints(
        roz_port=settings.port,
        grpcio_port=grpcio_port,
        handwritten_port=handwritten_settings.port,
        api_key=api_key,
        environment_id=environment_id,
        postgres_version=postgres_version,
    )
    print(endpoints.to_line(), flush=True)

    await stop.wait()
    await grpcio.stop(grace=1)
    await asyncio.gather(handwritten, roz)


def main() -> None:
    # WARNING: no access log line per request on any side (the hand-written one has none).
    configure_logging("WARNING", "text")
    # Load tools drop their connections at the end of a run; that is not worth a line each.
    logging.getLogger("hypercorn.error").setLevel(logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    # pgserver asks platformdirs for a runtime directory it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    data_dir = Path(tempfile.mkdtemp(prefix="roz-bench-"))
    try:
        asyncio.run(serve(data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
