"""The `roz-server` command: `serve`, and `admin create-tenant NAME` for operators."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import warnings
from collections.abc import Sequence

from gateway.serving import serve as serve_asgi
from server.app import RozServer
from server.listener import hypercorn_config
from server.logs import configure_logging
from server.settings import Settings, SettingsError
from server.storage.bootstrap import create_tenant
from server.storage.database import Database

log = logging.getLogger("roz.server")


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down the way Kubernetes expects.

    Readiness goes off at once while the port keeps serving for ROZ_DRAIN_SECONDS (so load
    balancers stop sending first; a second signal cuts this short); then no new connections,
    every HTTP/2 connection is told GOAWAY, calls in flight get ROZ_SHUTDOWN_GRACE_SECONDS and
    the rest end with UNAVAILABLE (RozServer.drain).
    """
    server = RozServer(settings)
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    drained: list[asyncio.Task[None]] = []

    async def shutdown_trigger() -> None:
        signum = await signals.get()
        await server.start_draining()
        log.info(
            "%s: not ready any more; still serving for %ss while load balancers stop sending",
            signal.Signals(signum).name,
            settings.drain_seconds,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.drain_seconds):
                await signals.get()  # a second signal: no more waiting
        log.info(
            "shutting down: no new connections; calls in flight get %ss",
            settings.shutdown_grace_seconds,
        )
        # Hypercorn stops accepting as soon as this returns and waits for open connections
        # (up to its graceful_timeout, set beyond our grace); the drain ends the stragglers.
        drained.append(asyncio.create_task(server.drain(settings.shutdown_grace_seconds)))

    _collect_less_often()
    await serve_asgi(
        server.asgi,
        hypercorn_config(settings),
        shutdown_trigger=shutdown_trigger,
    )
    for task in drained:
        await task
    log.info("stopped")


def _collect_less_often() -> None:
    """The cyclic garbage collector, tuned for a server holding thousands of streams.

    With CPython's default thresholds (700, 10, 10) a process holding 1,000 robot links ran a
    full collection every second or two under load, each 180-280 ms with the event loop stopped
    and nothing collected (measured with a gc callback during the e-stop bench): every robot
    waited behind it. What lives as long as the process (modules, descriptors, the app) is
    moved out of the collector's sight first; young collections then run every 100,000 net
    allocations, so that short-lived messages die by reference counting before they are ever
    promoted. The same bench ran one full collection in its whole e-stop phase instead of
    dozens. Cyclic garbage waits a little longer to be freed; reference counting is unchanged.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


async def admin_create_tenant(settings: Settings, name: str) -> str:
    database = Database(database_url=settings.database_url, data_dir=settings.data_dir)
    async with database:
        _, secret = await create_tenant(database.owner_dsn, name)
    return secret


def main(argv: Sequence[str] | None = None) -> int:
    # pgserver asks platformdirs for a runtime directory it does not need for a data directory.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    parser = argparse.ArgumentParser(prog="roz-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve REST, gRPC-web and gRPC on one port")
    admin = commands.add_parser("admin", help="operator tasks").add_subparsers(
        dest="admin_command", required=True
    )
    tenant = admin.add_parser("create-tenant", help="add a tenant; prints its admin key last")
    tenant.add_argument("name")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"roz-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        asyncio.run(serve(settings))
        return 0
    try:
        secret = asyncio.run(admin_create_tenant(settings, args.name))
    except Exception as exc:  # a clear line for the operator, not a traceback
        print(f"roz-server: could not create tenant {args.name!r}: {exc}", file=sys.stderr)
        return 1
    print(f"tenant {args.name!r} created; its admin API key (shown once):")
    print(secret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
