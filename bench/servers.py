"""The servers under test, in one process of their own: `python -m bench.servers`.

On one event loop, sharing one RozServer (and so one database pool and one interceptor chain):
- roz's port: Hypercorn serving `RozServer.asgi` with the production listener configuration;
- the gRPC comparator: `grpc.aio.server()` given `registry.generic_handler()`, the very same
  wrapped servicers;
- the REST comparator: Hypercorn, configured the same, serving the hand-written endpoint.

The database is an embedded PostgreSQL in a temporary ROZ_DATA_DIR. Once everything listens and
the fixtures exist (through the repositories, as the API writes them: two API keys, an
environment with its hosts for the reads and the tasks, and a second one under two safety
policies, with one host, for the commands), one line (Endpoints) goes to stdout; the process
then serves until its stdin closes or it receives SIGTERM/SIGINT, and removes the data
directory. The bulk rows (100k tasks, pools of commands) are written by the load side itself,
over the owner connection the line names (bench/dataset.py).
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

from bench.handwritten import HandwrittenEnvironmentEndpoint
from gateway.serving import serve as hypercorn_serve
from server.app import RozServer
from server.domain.api_keys import mint_secret, validate_new_key
from server.domain.environments import EnvironmentDraft, EnvironmentKind
from server.domain.hosts import HostDraft
from server.domain.safety_policies import Box, Limits, Point, Prism, SafetyPolicyDraft, Workspace
from server.listener import hypercorn_config
from server.logs import configure_logging
from server.settings import Settings
from server.storage.api_keys import ApiKeyRepository
from server.storage.environments import EnvironmentRepository
from server.storage.hosts import HostRepository
from server.storage.safety_policies import SafetyPolicyRepository

HOST = "127.0.0.1"
READER_SCOPES = ("environments:read",)
# Creates and moves commands, lists tasks: what a robot fleet's dispatcher holds.
WRITER_SCOPES = ("commands:write", "tasks:read")
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
    # The commands and tasks scenarios (bench/commands.py, bench/tasks.py).
    tenant_id: str
    writer_key: str
    writer_key_id: str
    environment_tools: list[str]
    host_ids: list[str]  # the hosts of environment_id: tasks run on them
    command_host_id: str  # in an environment under the two policies below
    command_policies: list[tuple[str, int]]  # (id, version), in the environment's order
    # For bulk rows and clean-up between runs, never for requests (bench/dataset.py).
    owner_dsn: str
    server_pid: int  # whose memory the soak reads (bench/soak.py)

    def to_line(self) -> str:
        return READY + json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_line(cls, line: str) -> Endpoints | None:
        """The endpoints, if this stdout line announces them."""
        if not line.startswith(READY):
            return None
        fields = json.loads(line[len(READY) :])
        fields["command_policies"] = [tuple(pair) for pair in fields["command_policies"]]
        return cls(**fields)


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


@dataclass(frozen=True)
class _Fixtures:
    api_key: str
    environment_id: str
    postgres_version: str
    tenant_id: str
    writer_key: str
    writer_key_id: str
    environment_tools: list[str]
    host_ids: list[str]
    command_host_id: str
    command_policies: list[tuple[str, int]]


# What a command must stay within on the command cell: two policies, both checked every time.
COMMAND_CELL_POLICIES = (
    SafetyPolicyDraft(
        name="bench-arm-limits",
        description="Speed, force and reach of the arms on the packing line.",
        limits=Limits(max_linear_velocity=1.5, max_acceleration=3.0, max_force=60.0),
        workspace=Workspace(boxes=(Box(Point(-1.0, -1.0, 0.0), Point(1.0, 1.0, 1.5)),)),
        denied_command_types=("self_destruct", "firmware.flash"),
        approval_command_types=("maintenance.home",),
    ),
    SafetyPolicyDraft(
        name="bench-line-rules",
        description="What the packing line allows, and where people walk.",
        limits=Limits(max_payload=5.0),
        workspace=Workspace(
            prisms=(
                Prism(
                    vertices=(
                        Point(-1.2, -1.2, 0),
                        Point(1.2, -1.2, 0),
                        Point(1.2, 0.8, 0),
                        Point(0.0, 1.4, 0),
                        Point(-1.2, 0.8, 0),
                    ),
                    min_z=0.0,
                    max_z=2.0,
                ),
            )
        ),
        allowed_command_types=("move_to", "grip", "release", "camera.snapshot"),
    ),
)


async def _seed(app: RozServer, admin_key: str) -> _Fixtures:
    """Keys, environments, hosts and policies in the bootstrap tenant, through the repositories."""
    pool = app.database.pool
    admin = await ApiKeyRepository(pool).authenticate(admin_key)
    if admin is None:
        raise RuntimeError("the bootstrap admin key does not authenticate")
    tenant = admin.tenant_id
    now = datetime.now(UTC)
    _, secret = await ApiKeyRepository(pool).create(
        tenant, validate_new_key("bench-reader", READER_SCOPES, None, now=now)
    )
    writer, writer_secret = await ApiKeyRepository(pool).create(
        tenant, validate_new_key("bench-dispatcher", WRITER_SCOPES, None, now=now)
    )
    policies = SafetyPolicyRepository(pool)
    policy = await policies.create(
        tenant,
        SafetyPolicyDraft(name="bench-cell-limits", limits=Limits(max_linear_velocity=1.5)),
    )
    environment = await EnvironmentRepository(pool).create(
        tenant,
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
    hosts = [
        await HostRepository(pool).create(
            tenant, HostDraft(name=arm, environment_id=environment.id)
        )
        for arm in ("bench-arm-left", "bench-arm-right")
    ]
    command_policies = [await policies.create(tenant, draft) for draft in COMMAND_CELL_POLICIES]
    command_cell = await EnvironmentRepository(pool).create(
        tenant,
        EnvironmentDraft(
            name="bench-packing-line-1",
            description="One arm under two safety policies; the commands benchmark drives it.",
            kind=EnvironmentKind.HARDWARE,
            allowed_tools=("move_to", "grip", "release"),
            safety_policy_ids=tuple(p.id for p in command_policies),
        ),
    )
    command_host = await HostRepository(pool).create(
        tenant, HostDraft(name="bench-packer-arm", environment_id=command_cell.id)
    )
    async with pool.connection() as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
    return _Fixtures(
        api_key=secret,
        environment_id=str(environment.id),
        postgres_version=str(row[0]) if row else "unknown",
        tenant_id=str(tenant),
        writer_key=writer_secret,
        writer_key_id=str(writer.id),
        environment_tools=list(environment.allowed_tools),
        host_ids=[str(host.id) for host in hosts],
        command_host_id=str(command_host.id),
        command_policies=[(str(p.id), p.version) for p in command_policies],
    )


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

    fixtures = await _seed(app, settings.admin_key)
    endpoints = Endpoints(
        roz_port=settings.port,
        grpcio_port=grpcio_port,
        handwritten_port=handwritten_settings.port,
        owner_dsn=app.database.owner_dsn,
        server_pid=os.getpid(),
        **dataclasses.asdict(fixtures),
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
