"""The robot side of the robot link: a client that holds a robot's stream to the control plane
and runs what arrives on it exactly once in effect, and a simulated robot built on it.

The public surface is `RobotClient`, the types its handlers use, and an agent's side of
sessions (`Agent`, `AgentSession`); everything else is private to the package. Like `roz_cli`,
it imports nothing of the server: only the generated `roz.v1` modules, grpcio and protobuf.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__version__: str
try:
    __version__ = version("roz-server")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from roz_robot.agent import Agent, AgentSession, SessionEnded, UpdateRefused
from roz_robot.client import LinkRefused, LinkStats, LinkTerms, RobotClient
from roz_robot.work import (
    CommandHandler,
    Outcome,
    Progress,
    StopHook,
    TaskHandler,
)

__all__ = [
    "Agent",
    "AgentSession",
    "CommandHandler",
    "LinkRefused",
    "LinkStats",
    "LinkTerms",
    "Outcome",
    "Progress",
    "RobotClient",
    "SessionEnded",
    "StopHook",
    "TaskHandler",
    "UpdateRefused",
    "__version__",
]
