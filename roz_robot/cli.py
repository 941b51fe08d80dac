"""The `roz-robot` command: `roz-robot simulate` runs one simulated robot (as the host its key is
bound to) or, with --robots N and an operator's key, a whole simulated fleet in one process; each
robot answers its sessions with the scripted agent unless --no-agent.

Progress goes to stderr as log lines. Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 refused
(a wrong or revoked key, a fleet that cannot be made), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from roz_robot import __version__
from roz_robot.client import LinkRefused, RobotClient
from roz_robot.endpoint import InvalidServer, parse_server
from roz_robot.fleet import FleetError, create_fleet
from roz_robot.scripted_agent import ScriptedAgent
from roz_robot.simulator import DEFAULT_SPEED, SimulatedRobot

# The same variables and default as the `roz` CLI (roz_cli/config.py), read here on their own:
# a robot imports nothing of the CLI.
SERVER_ENV = "ROZ_SERVER"
API_KEY_ENV = "ROZ_API_KEY"
DEFAULT_SERVER = "localhost:8080"
STATE_DIR_NAME = "roz-robot"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("roz_robot")


class UsageError(Exception):
    """The command line or the environment asks for something impossible."""


@dataclass(frozen=True)
class SimulateOptions:
    server: str
    key: str
    state_dir: Path
    # None: one robot, the host the key is bound to. N: a fleet made with an operator key.
    robots: int | None
    environment_id: str
    speed: float
    # Whether each robot runs the scripted agent in its host's sessions.
    agent: bool
    log_level: int


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = resolve_options(args, os.environ)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        say(f"roz-robot: {exc}")
        return EXIT_USAGE
    configure_logging(options.log_level)
    try:
        return asyncio.run(simulate(options))
    except LinkRefused as exc:
        say(f"roz-robot: the server refused the link ({exc.code.name}): {exc.details}")
        return EXIT_FAILURE
    except FleetError as exc:
        say(f"roz-robot: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roz-robot",
        description="The robot side of roz: holds a robot's link to the control plane.",
    )
    parser.add_argument("--version", action="version", version=f"roz-robot {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    simulate_ = commands.add_parser(
        "simulate",
        help="run a simulated robot (or a fleet of them) that executes what the server sends",
        description=(
            "Runs a simulated robot: move_to commands move it at --speed, tasks succeed after "
            "a moment, anything else fails. In a session, its scripted agent answers each "
            "message by proposing a small move_to. With --robots N, creates N hosts and robot "
            "keys with an operator key and runs them all in this process."
        ),
        epilog=(
            f"The server is --server, else ${SERVER_ENV}, else {DEFAULT_SERVER}: host:port or "
            f"http(s)://host[:port]. The key is --key, else ${API_KEY_ENV} (prefer the "
            "variable: a command line is visible to other users). The state directory is "
            f"--state-dir, else $XDG_STATE_HOME/{STATE_DIR_NAME}, else "
            f"~/.local/state/{STATE_DIR_NAME}."
        ),
    )
    simulate_.add_argument("--server", metavar="S", help="the roz server")
    simulate_.add_argument(
        "--key", metavar="K", help="the API key (a robot key, or with --robots an operator key)"
    )
    simulate_.add_argument(
        "--state-dir", metavar="D", type=Path, help="where the robot keeps what it has done"
    )
    simulate_.add_argument(
        "--robots", metavar="N", type=_positive_int, help="create and run N simulated robots"
    )
    simulate_.add_argument(
        "--environment-id",
        metavar="E",
        default="",
        help="with --robots: the environment of the new hosts (default: a new one)",
    )
    simulate_.add_argument(
        "--speed",
        metavar="M_PER_S",
        type=float,
        default=DEFAULT_SPEED,
        help=f"how fast move_to moves without a velocity param (default {DEFAULT_SPEED} m/s)",
    )
    simulate_.add_argument(
        "--no-agent",
        dest="agent",
        action="store_false",
        help="run no agent: session events are acknowledged and ignored",
    )
    simulate_.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING"),
        help="default INFO for one robot, WARNING for a fleet",
    )
    simulate_.set_defaults(command="simulate")
    return parser


def resolve_options(args: argparse.Namespace, env: Mapping[str, str]) -> SimulateOptions:
    """The options a command line and an environment ask for; UsageError if impossible."""
    server = args.server or env.get(SERVER_ENV) or DEFAULT_SERVER
    source = "--server" if args.server else SERVER_ENV if env.get(SERVER_ENV) else "the default"
    try:
        parse_server(server)
    except InvalidServer as exc:
        raise UsageError(f"{source}: {exc}") from None
    key = args.key or env.get(API_KEY_ENV) or ""
    if not key:
        raise UsageError(f"no API key: pass --key or set {API_KEY_ENV}")
    if args.environment_id and args.robots is None:
        raise UsageError("--environment-id goes with --robots")
    if not (math.isfinite(args.speed) and args.speed > 0):
        raise UsageError(f"--speed must be a positive number of m/s, not {args.speed}")
    level = args.log_level or ("INFO" if args.robots is None else "WARNING")
    return SimulateOptions(
        server=server,
        key=key,
        state_dir=args.state_dir or default_state_dir(env),
        robots=args.robots,
        environment_id=args.environment_id,
        speed=args.speed,
        agent=args.agent,
        log_level=getattr(logging, level),
    )


def default_state_dir(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/roz-robot, else ~/.local/state/roz-robot (the XDG default)."""
    base = env.get("XDG_STATE_HOME")
    if base and Path(base).is_absolute():  # the spec says to ignore a relative one
        return Path(base) / STATE_DIR_NAME
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "state" / STATE_DIR_NAME


def configure_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def simulate(options: SimulateOptions) -> int:
    """Runs the robots until Ctrl-C or SIGTERM; raises LinkRefused or FleetError."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    try:
        making = asyncio.create_task(_clients(options))
        await asyncio.wait({making, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not making.done():
            making.cancel()
            await asyncio.gather(making, return_exceptions=True)
            say("roz-robot: stopped before the robots were running")
            return EXIT_OK
        clients = making.result()
        runs = [asyncio.create_task(client.run()) for client in clients]
        try:
            await asyncio.wait({stopping, *runs}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await asyncio.gather(*(client.stop() for client in clients))
        failed = [run.exception() for run in runs if run.done() and not run.cancelled()]
        for exc in failed:
            if exc is not None:
                raise exc
        say(_summary(clients))
        return EXIT_OK
    finally:
        stopping.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _clients(options: SimulateOptions) -> list[RobotClient]:
    client_name = f"roz-robot/{__version__} (simulator)"
    if options.robots is None:
        robot = SimulatedRobot(speed=options.speed)
        log.info("simulating one robot against %s (state in %s)", options.server, options.state_dir)
        return [
            RobotClient(
                options.server,
                options.key,
                state_dir=options.state_dir,
                on_command=robot.on_command,
                on_task=robot.on_task,
                on_stop=robot.on_stop,
                agent=ScriptedAgent(robot) if options.agent else None,
                client_name=client_name,
            )
        ]
    rest_url = parse_server(options.server).rest_url
    say(f"roz-robot: creating {options.robots} simulated robots on {rest_url}")
    fleet = await create_fleet(
        rest_url, options.key, options.robots, environment_id=options.environment_id
    )
    say(f"roz-robot: running {len(fleet.hosts)} robots in environment {fleet.environment_id}")
    clients = []
    for host in fleet.hosts:
        robot = SimulatedRobot(speed=options.speed)
        clients.append(
            RobotClient(
                options.server,
                host.key,
                state_dir=options.state_dir / "fleet" / host.host_id,
                host_id=host.host_id,
                on_command=robot.on_command,
                on_task=robot.on_task,
                on_stop=robot.on_stop,
                agent=ScriptedAgent(robot) if options.agent else None,
                client_name=client_name,
            )
        )
    return clients


def _summary(clients: Sequence[RobotClient]) -> str:
    executed = sum(c.stats.executed for c in clients)
    duplicates = sum(c.stats.duplicates_ignored for c in clients)
    from_record = sum(c.stats.resent_from_record for c in clients)
    cancelled = sum(c.stats.cancelled for c in clients)
    links = sum(c.stats.links for c in clients)
    robots = f"{len(clients)} robot{'s' if len(clients) != 1 else ''}"
    return (
        f"roz-robot: stopped {robots}: {executed} commands and tasks run, {cancelled} cancelled, "
        f"{duplicates} duplicates ignored, {from_record} answered from the record, {links} links"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
