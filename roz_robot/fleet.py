"""A fleet of simulated robots made over the REST API: an environment (unless one is given), N
hosts in it and a robot key for each, created with an operator's key.

The only module of the package that speaks HTTP; the robots themselves use the robot link.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from roz_robot import __version__

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Hosts and keys created at once; enough to make a hundred robots in a few seconds.
CONCURRENCY = 8


class FleetError(Exception):
    """The fleet could not be made; the message is for the user."""


@dataclass(frozen=True)
class SimulatedHost:
    host_id: str
    name: str
    # The robot key's secret: the only copy (the server keeps a hash).
    key: str


@dataclass(frozen=True)
class Fleet:
    environment_id: str
    hosts: list[SimulatedHost]


async def create_fleet(
    rest_url: str,
    operator_key: str,
    count: int,
    *,
    environment_id: str = "",
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Fleet:
    """Creates `count` hosts (in `environment_id`, else in a new "simulated-…" environment) and a
    robot key for each. `on_progress` is told how many robots are ready so far."""
    headers = {"authorization": f"Bearer {operator_key}", "user-agent": f"roz-robot/{__version__}"}
    label = secrets.token_hex(4)
    async with httpx.AsyncClient(
        base_url=rest_url, headers=headers, timeout=TIMEOUT, transport=transport
    ) as http:
        if not environment_id:
            created = await _post(
                http, "/api/v1/environments", {"name": f"simulated-{label}"}, "an environment"
            )
            environment_id = str(created["id"])
        limit = asyncio.Semaphore(CONCURRENCY)
        ready = 0

        async def one(n: int) -> SimulatedHost:
            nonlocal ready
            async with limit:
                name = f"sim-{label}-{n}"
                host = await _post(
                    http,
                    "/api/v1/hosts",
                    {"name": name, "environment_id": environment_id, "capabilities": ["arm"]},
                    f"host {name}",
                )
                key = await _post(
                    http,
                    "/api/v1/auth-keys",
                    {"name": f"sim-{n}", "host_id": host["id"]},
                    f"a robot key for {name}",
                )
                ready += 1
                if on_progress is not None:
                    on_progress(ready)
                return SimulatedHost(host_id=str(host["id"]), name=name, key=str(key["secret"]))

        hosts = await asyncio.gather(*(one(n) for n in range(1, count + 1)))
    return Fleet(environment_id=environment_id, hosts=list(hosts))


async def _post(http: httpx.AsyncClient, path: str, body: dict[str, Any], what: str) -> Any:
    try:
        response = await http.post(path, json=body)
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach {http.base_url}: {exc}") from None
    if response.is_success:
        try:
            return response.json()
        except ValueError:
            raise FleetError(f"creating {what}: the server answered with no JSON") from None
    message = _error_message(response)
    if response.status_code in (401, 403):
        raise FleetError(
            f"creating {what} was refused ({response.status_code}: {message}); --robots needs an "
            "operator key with the scopes environments:write, hosts:write, commands:write and "
            "tasks:write, not a robot key"
        )
    raise FleetError(f"creating {what} failed ({response.status_code}: {message})")


def _error_message(response: httpx.Response) -> str:
    """The google.rpc.Status message the REST API answers errors with, else the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(body)[:200]
