"""Two `roz-server serve` processes on one database: a command created through one reaches its
robot on the other, takeover works across them, a robot whose server is SIGKILLed mid-work
reconnects to the other and gets every command once in effect, and a dead server's robots are
marked OFFLINE by the survivor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from roz.v1 import robot_link_pb2 as pb

from roz_robot import Outcome, Progress, RobotClient
from server.domain.api_keys import mint_secret
from tests.e2e.conftest import Roz, _create_database, _drop_database, _run
from tests.e2e.test_operations import serving
from tests.support.forwarder import forwarding
from tests.support.robot import Robot


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]

    @property
    def target(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.target.split(":")
        return host, int(port)


@dataclass
class Pair:
    a: Server
    b: Server
    key: str

    def rest(self, server: Server, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(
            method,
            server.url + path,
            headers={"authorization": f"Bearer {self.key}"},
            timeout=30,
            **kwargs,
        )
        assert response.status_code < 300, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def robot(self, server: Server) -> tuple[str, str]:
        """A new host and its robot key, made through `server`."""
        host = self.rest(server, "POST", "/api/v1/hosts", json={"name": f"r-{uuid.uuid4().hex}"})
        made = self.rest(
            server, "POST", "/api/v1/auth-keys", json={"name": "robot", "host_id": host["id"]}
        )
        return str(host["id"]), str(made["secret"])

    def command(self, server: Server, host_id: str, **params: Any) -> str:
        body = {"host_id": host_id, "type": "wave", "params": params}
        return str(self.rest(server, "POST", "/api/v1/commands", json=body)["id"])


def eventually(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time given")
        time.sleep(0.05)


@pytest.fixture
def pair(roz: Roz, roz_dir: Path) -> Iterator[Pair]:
    owner = roz.app.database.owner_dsn
    dsn = _run(_create_database(owner))
    key = mint_secret()
    settings = {
        "DATABASE_URL": dsn,
        "ROZ_ADMIN_KEY": key,
        "ROZ_ROBOT_PULSE_SECONDS": "0.5",
        "ROZ_SWEEP_INTERVAL_SECONDS": "0.5",
        "ROZ_ROBOT_HEARTBEAT_SECONDS": "0.5",
        "ROZ_ROBOT_PRESENCE_WINDOW_SECONDS": "3",
        "ROZ_ROBOT_KEEPALIVE_SECONDS": "1",
        "ROZ_RATE_LIMIT_RPS": "10000",
        "ROZ_RATE_LIMIT_BURST": "10000",
    }
    try:
        with (
            serving(roz_dir / "a", **settings) as (a_url, a),
            serving(roz_dir / "b", **settings) as (b_url, b),
        ):
            yield Pair(Server(a_url, a), Server(b_url, b), key)
    finally:
        _run(_drop_database(owner, dsn))


def test_a_command_created_through_one_process_reaches_a_robot_on_the_other(pair: Pair) -> None:
    host_id, secret = pair.robot(pair.a)
    with Robot(pair.b.target, secret) as robot:
        robot.welcome()
        command_id = pair.command(pair.a, host_id)
        delivery = robot.delivery()
        assert delivery.command.id == command_id
        robot.ack(delivery.sequence)
        eventually(
            lambda: "acknowledge_time" in pair.rest(pair.a, "GET", f"/api/v1/commands/{command_id}")
        )
        assert pair.rest(pair.a, "GET", f"/api/v1/hosts/{host_id}")["status"] == "STATUS_ONLINE"


def test_a_stream_on_the_other_process_takes_over(pair: Pair) -> None:
    host_id, secret = pair.robot(pair.a)
    first = Robot(pair.a.target, secret)
    try:
        first.welcome()
        with Robot(pair.b.target, secret) as second:
            second.welcome()
            assert first.ended() == grpc.StatusCode.ABORTED
            command_id = pair.command(pair.a, host_id)
            assert second.delivery().command.id == command_id
    finally:
        first.cut()


class RobotThread:
    """A roz_robot client on a thread of its own, counting what it executes."""

    def __init__(self, server: str, key: str, state_dir: Path) -> None:
        self.executed: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self.client = RobotClient(server, key, state_dir=state_dir, on_command=self._run)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._running = asyncio.run_coroutine_threadsafe(self.client.run(), self._loop)

    async def _run(self, command: Any, progress: Progress) -> Outcome:
        self.executed[command.id] += 1
        await asyncio.sleep(0.05)
        return Outcome(ok=True, result={"done": command.id})

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.stop(), self._loop).result(30)
        self._running.result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def test_a_robot_whose_server_is_killed_gets_every_command_once_from_the_other(
    pair: Pair, roz_dir: Path
) -> None:
    host_id, secret = pair.robot(pair.b)
    # Behind a balancer that sends each connection to A while A is up, else to B.
    with forwarding([pair.a.address, pair.b.address]) as balancer:
        robot = RobotThread(f"127.0.0.1:{balancer.port}", secret, roz_dir / "robot")
        try:
            eventually(
                lambda: (
                    pair.rest(pair.b, "GET", f"/api/v1/hosts/{host_id}")["status"]
                    == "STATUS_ONLINE"
                )
            )
            ids = [pair.command(pair.b, host_id, n=n) for n in range(10)]
            eventually(lambda: sum(robot.executed.values()) >= 3)
            os.kill(pair.a.process.pid, signal.SIGKILL)  # mid-work, acks and reports in flight
            pair.a.process.wait(10)
            ids += [pair.command(pair.b, host_id, n=n) for n in range(10, 20)]

            def finished() -> bool:
                states = [pair.rest(pair.b, "GET", f"/api/v1/commands/{i}")["state"] for i in ids]
                return all(state == "STATE_COMPLETED" for state in states)

            eventually(finished, seconds=60)
        finally:
            robot.stop()
    assert set(robot.executed) == set(ids)
    assert max(robot.executed.values()) == 1, robot.executed.most_common(3)
    assert balancer.connections >= 2  # it did reconnect


def test_the_survivor_marks_a_dead_processs_robots_offline(pair: Pair) -> None:
    host_id, secret = pair.robot(pair.a)
    robot = Robot(pair.a.target, secret)
    try:
        robot.welcome()
        os.kill(pair.a.process.pid, signal.SIGKILL)
        pair.a.process.wait(10)

        def host() -> dict[str, Any]:
            found: dict[str, Any] = pair.rest(pair.b, "GET", f"/api/v1/hosts/{host_id}")
            return found

        eventually(lambda: host()["status"] == "STATUS_OFFLINE")
        changes = pair.rest(pair.b, "GET", f"/api/v1/hosts/{host_id}/status-changes")
        assert changes["status_changes"][0]["reason"] == "robot silent past the presence window"
    finally:
        robot.cut()


def test_sigterm_drains_robots_to_the_other_process_without_going_offline(
    pair: Pair, roz_dir: Path
) -> None:
    host_id, secret = pair.robot(pair.b)
    with forwarding([pair.a.address, pair.b.address]) as balancer:
        robot = RobotThread(f"127.0.0.1:{balancer.port}", secret, roz_dir / "robot")
        try:
            eventually(lambda: robot.client.connected)
            first_link = robot.client.link_id
            pair.a.process.send_signal(signal.SIGTERM)  # the drain message goes out first
            eventually(lambda: robot.client.connected and robot.client.link_id != first_link)
            assert pair.a.process.wait(30) == 0
            command_id = pair.command(pair.b, host_id)
            eventually(
                lambda: (
                    pair.rest(pair.b, "GET", f"/api/v1/commands/{command_id}")["state"]
                    == "STATE_COMPLETED"
                )
            )
        finally:
            robot.stop()

    # Newest first: registered, online across the move, offline when the robot stopped.
    def statuses() -> list[str]:
        changes = pair.rest(pair.b, "GET", f"/api/v1/hosts/{host_id}/status-changes")
        return [change["to_status"] for change in changes["status_changes"]]

    eventually(lambda: statuses() == ["STATUS_OFFLINE", "STATUS_ONLINE", "STATUS_OFFLINE"])


def test_an_estop_engaged_through_one_process_reaches_a_robot_on_the_other(pair: Pair) -> None:
    host_id, secret = pair.robot(pair.a)
    with Robot(pair.b.target, secret) as robot:
        robot.welcome()
        pair.rest(pair.a, "POST", f"/api/v1/hosts/{host_id}/estop", json={"reason": "drill"})
        estop = robot.receive("estop", timeout=5).estop
        assert (estop.stopped, estop.host.epoch, estop.host.reason) == (True, 1, "drill")
        robot.send(estop_ack=pb.EstopAck(host_epoch=1))
        eventually(
            lambda: pair.rest(pair.a, "GET", f"/api/v1/hosts/{host_id}/estop")["acknowledgement"][
                "acknowledged"
            ]
        )
        pair.rest(pair.a, "POST", f"/api/v1/hosts/{host_id}/estop/clear", json={"reason": "ok"})
        cleared = robot.receive("estop", timeout=5).estop
        assert (cleared.stopped, cleared.host.epoch) == (False, 2)
