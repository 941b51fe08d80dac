"""roz-robot against a live roz server: the simulator runs what an operator creates over REST,
once in effect across reconnects and resends, stops on a cancellation, reports what it was
interrupted in, refuses a wrong key, and runs as the `roz-robot` command (one robot or a fleet).

Robots run in the test's own event loop (`asyncio.run` per test); the operator is httpx with a
fresh tenant's admin key; the server is the e2e tier's, with real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest

from roz_robot import LinkRefused, RobotClient
from roz_robot.record import Record
from roz_robot.simulator import SimulatedRobot
from tests.e2e.conftest import (  # noqa: F401  (the fixtures)
    Roz,
    RozFactory,
    postgres,
    roz_factory,
)
from tests.support.forwarder import Forwarder, forwarding

T = TypeVar("T")
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory) -> Roz:  # noqa: F811
    return roz_factory(rate_limit_rps=100_000.0, rate_limit_burst=100_000)


@pytest.fixture
def admin(server: Roz) -> str:
    """A fresh tenant's admin key: each test's hosts and commands are its own."""
    return server.new_tenant("robot")


class Operator:
    """What a person does over REST: hosts, robot keys, commands, and watching them."""

    def __init__(self, server: Roz, key: str) -> None:
        self.server = server
        self.http = httpx.AsyncClient(
            base_url=server.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.http.request(method, path, json=body)
        assert response.is_success, (method, path, response.status_code, response.text)
        return response.json()

    async def robot(self) -> tuple[str, str]:
        """A new host and its robot key's secret."""
        host = await self.call("POST", "/api/v1/hosts", {"name": f"arm-{uuid.uuid4().hex[:8]}"})
        key = await self.call("POST", "/api/v1/auth-keys", {"name": "arm", "host_id": host["id"]})
        return str(host["id"]), str(key["secret"])

    async def command(self, host_id: str, type_: str, **params: Any) -> str:
        body = {"host_id": host_id, "type": type_, "params": params}
        return str((await self.call("POST", "/api/v1/commands", body))["id"])

    async def get_command(self, command_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.call("GET", f"/api/v1/commands/{command_id}")
        return found

    async def command_in(self, command_id: str, *states: str) -> dict[str, Any]:
        """The command, once it is in one of `states` (polled)."""

        async def check() -> dict[str, Any] | None:
            command = await self.get_command(command_id)
            return command if command["state"] in states else None

        return await eventually(check)

    async def robot_in_environment(self) -> tuple[str, str, str]:
        """A new environment, a host in it, and the host's robot key's secret."""
        name = f"cell-{uuid.uuid4().hex[:8]}"
        environment = await self.call("POST", "/api/v1/environments", {"name": name})
        body = {"name": f"arm-{uuid.uuid4().hex[:8]}", "environment_id": environment["id"]}
        host = await self.call("POST", "/api/v1/hosts", body)
        key = await self.call("POST", "/api/v1/auth-keys", {"name": "arm", "host_id": host["id"]})
        return str(environment["id"]), str(host["id"]), str(key["secret"])

    async def queued_task(self, environment_id: str, host_id: str) -> str:
        """A task for the host, QUEUED (what makes it deliverable)."""
        body = {"prompt": "tidy the bench", "environment_id": environment_id, "host_id": host_id}
        task = await self.call("POST", "/api/v1/tasks", body)
        await self.call("POST", f"/api/v1/tasks/{task['id']}/transition", {"state": "STATE_QUEUED"})
        return str(task["id"])

    async def task_in(self, task_id: str, *states: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            task: dict[str, Any] = await self.call("GET", f"/api/v1/tasks/{task_id}")
            return task if task["state"] in states else None

        return await eventually(check)

    async def cancel(self, command_id: str) -> None:
        body = {"state": "STATE_CANCELLED", "reason": "operator pressed stop"}
        await self.call("POST", f"/api/v1/commands/{command_id}/transition", body)


async def eventually(check: Callable[[], Awaitable[T | None]], seconds: float = WAIT_SECONDS) -> T:
    deadline = time.monotonic() + seconds
    while (value := await check()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.05)
    return value


def states(command: dict[str, Any]) -> list[str]:
    return [t["to_state"].removeprefix("STATE_") for t in command["transitions"]]


def last_reason(command: dict[str, Any]) -> str:
    return str(command["transitions"][-1].get("reason", ""))


@asynccontextmanager
async def operator(server: Roz, key: str) -> AsyncIterator[Operator]:
    made = Operator(server, key)
    try:
        yield made
    finally:
        await made.http.aclose()


@asynccontextmanager
async def linked(client: RobotClient) -> AsyncIterator[RobotClient]:
    """The client running, once its first link is up; stopped (and its run checked) after."""
    run = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.wait_linked(), WAIT_SECONDS)
        yield client
    finally:
        await client.stop()
        await run  # raises whatever ended the run


def simulated(
    server: Roz, secret: str, state_dir: Path, **robot: Any
) -> tuple[RobotClient, SimulatedRobot]:
    sim = SimulatedRobot(telemetry_period=0.05, **robot)
    client = RobotClient(
        server.listener.target,
        secret,
        state_dir=state_dir,
        on_command=sim.on_command,
        on_task=sim.on_task,
        on_stop=sim.on_stop,
    )
    return client, sim


async def lose_place_and_reconnect(client: RobotClient, state_dir: Path) -> None:
    """Makes the server send everything again: the robot's record forgets which sequence it
    received (as a restored backup would) and the link is cut, so the next hello names 0."""
    record = await asyncio.to_thread(Record.open, state_dir)
    try:
        await asyncio.to_thread(record.rewind, client.host_id, 0)
    finally:
        await asyncio.to_thread(record.close)
    links = client.stats.links
    client.reconnect()
    terms = await asyncio.wait_for(client.wait_linked(after=links), WAIT_SECONDS)
    assert terms.resume_after_sequence == 0


# -- running what arrives ------------------------------------------------------------------


def test_the_simulator_completes_a_move_to_created_over_rest(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, sim = simulated(server, secret, tmp_path)
            async with linked(client):
                assert client.host_id == host_id  # the hello named none; the welcome did
                command_id = await op.command(
                    host_id, "move_to", target={"x": 0.3, "y": 0.4, "z": 0}, velocity=2.5
                )
                done = await op.command_in(command_id, "STATE_COMPLETED", "STATE_FAILED")
                assert states(done) == ["PENDING", "RUNNING", "COMPLETED"]
                assert done["result"]["position"] == pytest.approx({"x": 0.3, "y": 0.4, "z": 0})
                assert done["result"]["distance"] == pytest.approx(0.5)
                assert done["acknowledge_time"] >= done["deliver_time"]
                assert list(client.stats.executed_ids) == [command_id]
                assert sim.position.x == pytest.approx(0.3)

                # The last telemetry sample the server holds is the arrival.
                latest = server.app.robot_links.telemetry[uuid.UUID(host_id)].state
                assert latest["command_id"] == command_id
                assert latest["progress"] == 1.0

    asyncio.run(scenario())


def test_an_unknown_command_type_fails_with_a_reason(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, _ = simulated(server, secret, tmp_path)
            async with linked(client):
                unknown = await op.command(host_id, "juggle", balls=3)
                # The server checks a target's shape; a move without one is the robot's to refuse.
                invalid = await op.command(host_id, "move_to", speed="fast")
                failed = await op.command_in(unknown, "STATE_FAILED", "STATE_COMPLETED")
                assert states(failed) == ["PENDING", "RUNNING", "FAILED"]
                assert last_reason(failed) == 'unknown command type "juggle"'
                failed = await op.command_in(invalid, "STATE_FAILED", "STATE_COMPLETED")
                assert last_reason(failed) == "move_to needs params.target with numbers x, y and z"

    asyncio.run(scenario())


def test_a_task_assigned_to_the_robot_succeeds(server: Roz, admin: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            environment_id, host_id, secret = await op.robot_in_environment()
            client, _ = simulated(server, secret, tmp_path, task_seconds=0.05)
            async with linked(client):
                task_id = await op.queued_task(environment_id, host_id)
                done = await op.task_in(task_id, "STATE_SUCCEEDED", "STATE_FAILED")
                assert done["state"] == "STATE_SUCCEEDED"
                assert done["output"] == {"summary": "simulated"}
                assert list(client.stats.executed_ids) == [task_id]

    asyncio.run(scenario())


# -- once in effect ------------------------------------------------------------------------


def test_a_resent_command_is_answered_from_the_record_not_run_again(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, sim = simulated(server, secret, tmp_path)
            async with linked(client):
                command_id = await op.command(
                    host_id, "move_to", target={"x": 1, "y": 0, "z": 0}, velocity=20
                )
                await op.command_in(command_id, "STATE_COMPLETED")
                await lose_place_and_reconnect(client, tmp_path)

                async def answered() -> bool | None:
                    return client.stats.resent_from_record == 1 or None

                await eventually(answered)
                # Move the robot elsewhere: a second run of the first command would show.
                back = await op.command(host_id, "move_to", target={"x": 0, "y": 0, "z": 0})
                await op.command_in(back, "STATE_COMPLETED")
                assert list(client.stats.executed_ids) == [command_id, back]
                assert sim.position.x == 0
                first = await op.get_command(command_id)
                assert states(first) == ["PENDING", "RUNNING", "COMPLETED"]

    asyncio.run(scenario())


def test_a_task_resent_while_it_runs_is_not_started_twice(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    # A task, not a move: losing the link stops motion (the deadman), which ends a move early.
    async def scenario() -> None:
        async with operator(server, admin) as op:
            environment_id, host_id, secret = await op.robot_in_environment()
            client, _ = simulated(server, secret, tmp_path, task_seconds=2.0)
            async with linked(client):
                task_id = await op.queued_task(environment_id, host_id)
                await op.task_in(task_id, "STATE_RUNNING")
                await lose_place_and_reconnect(client, tmp_path)

                async def ignored() -> bool | None:
                    return client.stats.duplicates_ignored == 1 or None

                await eventually(ignored)
                done = await op.task_in(task_id, "STATE_SUCCEEDED", "STATE_FAILED")
                assert [t["to_state"] for t in done["transitions"]] == [
                    "STATE_PENDING",
                    "STATE_QUEUED",
                    "STATE_RUNNING",
                    "STATE_SUCCEEDED",
                ]
                assert list(client.stats.executed_ids) == [task_id]
                assert client.stats.resent_from_record == 0

    asyncio.run(scenario())


def test_a_cancellation_stops_the_motion_and_a_resend_does_not_restart_it(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, sim = simulated(server, secret, tmp_path)
            async with linked(client):
                command_id = await op.command(
                    host_id, "move_to", target={"x": 100, "y": 0, "z": 0}, velocity=1
                )
                await op.command_in(command_id, "STATE_RUNNING")
                await op.cancel(command_id)

                async def stopped() -> list[str] | None:
                    return sim.stops or None

                reasons = await eventually(stopped)
                assert reasons == [
                    f"command {command_id} cancelled: CANCELLED: operator pressed stop"
                ]
                assert client.stats.cancelled == 1
                where = sim.position.x
                assert 0 < where < 100

                await lose_place_and_reconnect(client, tmp_path)
                # A later command runs: everything before it on the link was handled.
                later = await op.command(host_id, "move_to", target={"x": 0, "y": 0, "z": 0})
                await op.command_in(later, "STATE_COMPLETED")
                assert list(client.stats.executed_ids) == [command_id, later]
                cancelled = await op.get_command(command_id)
                assert states(cancelled) == ["PENDING", "RUNNING", "CANCELLED"]

    asyncio.run(scenario())


def test_stopping_the_client_reports_what_it_was_doing_as_failed(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, sim = simulated(server, secret, tmp_path)
            async with linked(client):
                command_id = await op.command(
                    host_id, "move_to", target={"x": 100, "y": 0, "z": 0}, velocity=1
                )
                await op.command_in(command_id, "STATE_RUNNING")
            # linked() has stopped the client: motion stopped, the command reported.
            assert sim.stops == ["interrupted: the robot client stopped"]
            failed = await op.command_in(command_id, "STATE_FAILED")
            assert last_reason(failed) == "interrupted: the robot client stopped"

    asyncio.run(scenario())


def test_a_restarted_robot_resumes_where_it_left_off(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            first, _ = simulated(server, secret, tmp_path)
            async with linked(first):
                done = await op.command(host_id, "move_to", target={"x": 1, "y": 0, "z": 0})
                await op.command_in(done, "STATE_COMPLETED")
            # While the robot is away, a command waits for it.
            waiting = await op.command(host_id, "move_to", target={"x": 0, "y": 1, "z": 0})
            second, _ = simulated(server, secret, tmp_path)
            async with linked(second):
                assert second.terms is not None
                assert second.terms.resume_after_sequence == 1
                await op.command_in(waiting, "STATE_COMPLETED")
                assert list(second.stats.executed_ids) == [waiting]
                assert second.stats.resent_from_record == 0

    asyncio.run(scenario())


# -- refusals and the deadman --------------------------------------------------------------


def test_a_wrong_key_is_raised_to_the_caller(server: Roz, tmp_path: Path) -> None:
    async def scenario() -> LinkRefused:
        client = RobotClient(
            server.listener.target, "roz_sk_" + "x" * 43, state_dir=tmp_path / "state"
        )
        with pytest.raises(LinkRefused) as refused:
            await asyncio.wait_for(client.run(), WAIT_SECONDS)
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


def test_an_operator_key_is_refused_the_link(server: Roz, admin: str, tmp_path: Path) -> None:
    async def scenario() -> LinkRefused:
        client = RobotClient(server.listener.target, admin, state_dir=tmp_path / "state")
        with pytest.raises(LinkRefused) as refused:
            await asyncio.wait_for(client.run(), WAIT_SECONDS)
        return refused.value

    assert asyncio.run(scenario()).code == grpc.StatusCode.PERMISSION_DENIED


def test_a_silent_server_trips_the_deadman_once_and_the_robot_reconnects(
    roz_factory: RozFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    # The network between robot and server stops carrying anything (a partition): the robot
    # hears nothing for longer than the presence window, stops, and links again once it heals.
    server = roz_factory(
        robot_heartbeat_seconds=0.2, robot_presence_window_seconds=1.0, robot_keepalive_seconds=0.3
    )
    host, port = server.listener.target.rsplit(":", 1)

    async def scenario(network: Forwarder) -> None:
        async with operator(server, server.new_tenant("quiet")) as op:
            _, secret = await op.robot()
            sim = SimulatedRobot(telemetry_period=0.05)
            client = RobotClient(
                f"127.0.0.1:{network.port}",
                secret,
                state_dir=tmp_path,
                on_command=sim.on_command,
                on_stop=sim.on_stop,
            )
            async with linked(client):
                terms = await client.wait_linked()
                assert terms.presence_window == 1.0
                assert terms.heartbeat_interval == 0.2
                await asyncio.sleep(1.5)  # keepalives keep the link up
                assert sim.stops == []
                network.hold()

                async def stopped() -> list[str] | None:
                    return sim.stops or None

                assert await eventually(stopped) == [
                    "link lost: nothing arrived from the server within the presence window"
                ]
                network.release()
                await client.wait_linked(after=1)
                assert len(sim.stops) == 1  # once per loss

    with forwarding([(host, int(port))]) as network:
        asyncio.run(scenario(network))


# -- the roz-robot command -----------------------------------------------------------------


def roz_robot_command() -> list[str]:
    """The installed console script when there is one (as users run it), else `-m roz_robot`."""
    script = Path(sys.executable).with_name("roz-robot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "roz_robot"]


class Simulator:
    """`roz-robot simulate` in the background, its stderr read line by line as it comes."""

    def __init__(self, *args: str, key: str, state_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("ROZ_SERVER", "ROZ_API_KEY")}
        env.update({"ROZ_API_KEY": key, "XDG_STATE_HOME": str(state_dir)})
        self.process = subprocess.Popen(
            [*roz_robot_command(), "simulate", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, seconds: float = WAIT_SECONDS) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"exited before {pattern!r}: {self.seen}")
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found

    def terminate(self) -> tuple[int, list[str]]:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=WAIT_SECONDS)
        while (line := self.lines.get(timeout=WAIT_SECONDS)) is not None:
            self.seen.append(line)
        return code, self.seen

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def simulators() -> Iterator[list[Simulator]]:
    started: list[Simulator] = []
    yield started
    for simulator in started:
        simulator.kill()


def test_roz_robot_simulate_runs_commands_and_stops_cleanly_on_sigterm(
    server: Roz, admin: str, tmp_path: Path, simulators: list[Simulator]
) -> None:
    async def make_robot() -> tuple[str, str]:
        async with operator(server, admin) as op:
            return await op.robot()

    host_id, secret = asyncio.run(make_robot())
    simulator = Simulator("--server", server.url, key=secret, state_dir=tmp_path)
    simulators.append(simulator)
    simulator.wait_for(f"{host_id}: linked")

    async def move() -> dict[str, Any]:
        async with operator(server, admin) as op:
            command_id = await op.command(host_id, "move_to", target={"x": 0.1, "y": 0, "z": 0})
            return await op.command_in(command_id, "STATE_COMPLETED", "STATE_FAILED")

    done = asyncio.run(move())
    assert done["state"] == "STATE_COMPLETED"
    simulator.wait_for(f"command {done['id']} completed")
    code, lines = simulator.terminate()
    assert code == 0
    assert lines[-1] == (
        "roz-robot: stopped 1 robot: 1 commands and tasks run, 0 cancelled, "
        "0 duplicates ignored, 0 answered from the record, 1 links"
    )
    assert not any("Traceback" in line for line in lines)
    # The record is where XDG_STATE_HOME says.
    assert (tmp_path / "roz-robot" / "robot-link.sqlite3").is_file()


def test_roz_robot_simulate_makes_and_runs_a_fleet_with_an_operator_key(
    server: Roz, admin: str, tmp_path: Path, simulators: list[Simulator]
) -> None:
    simulator = Simulator(
        "--server", server.listener.target, "--robots", "3", key=admin, state_dir=tmp_path
    )
    simulators.append(simulator)
    environment_id = simulator.wait_for(r"running 3 robots in environment (\S+)")[1]

    async def one_command_each() -> list[dict[str, Any]]:
        async with operator(server, admin) as op:
            hosts = await op.call("GET", f"/api/v1/hosts?environment_id={environment_id}")
            host_ids = [host["id"] for host in hosts["hosts"]]
            assert len(host_ids) == 3

            async def all_online() -> bool | None:
                seen = [await op.call("GET", f"/api/v1/hosts/{h}") for h in host_ids]
                return all(h["status"] == "STATUS_ONLINE" for h in seen) or None

            await eventually(all_online)
            made = [
                await op.command(h, "move_to", target={"x": 0, "y": 0.1, "z": 0}) for h in host_ids
            ]
            return [await op.command_in(c, "STATE_COMPLETED", "STATE_FAILED") for c in made]

    done = asyncio.run(one_command_each())
    assert [command["state"] for command in done] == ["STATE_COMPLETED"] * 3
    code, lines = simulator.terminate()
    assert code == 0
    assert lines[-1].startswith("roz-robot: stopped 3 robots: 3 commands and tasks run")


def test_roz_robot_simulate_with_a_wrong_key_exits_1_with_a_message(
    server: Roz, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ROZ_SERVER", "ROZ_API_KEY")}
    result = subprocess.run(
        [*roz_robot_command(), "simulate", "--server", server.listener.target],
        env={**env, "ROZ_API_KEY": "roz_sk_" + "w" * 43, "XDG_STATE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("roz-robot: the server refused the link (UNAUTHENTICATED): ")
    assert "Traceback" not in result.stderr


# -- e-stops --------------------------------------------------------------------------------


def test_an_estop_halts_the_robot_mid_move_and_nothing_runs_until_a_clear(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, sim = simulated(server, secret, tmp_path)
            async with linked(client):
                assert client.estop is not None
                assert not client.estop.stopped
                long_move = await op.command(
                    host_id, "move_to", target={"x": 50, "y": 0, "z": 0}, velocity=0.5
                )
                await op.command_in(long_move, "STATE_RUNNING")
                await op.call(
                    "POST", f"/api/v1/hosts/{host_id}/estop", {"reason": "person in the cell"}
                )
                state = await asyncio.wait_for(client.wait_estop(stopped=True), WAIT_SECONDS)
                assert state.reason == "person in the cell"
                assert any("e-stop: person in the cell" in why for why in sim.stops)
                failed = await op.command_in(long_move, "STATE_FAILED")
                assert last_reason(failed) == "E-STOP: person in the cell"

                async def acknowledged() -> bool | None:
                    shown = await op.call("GET", f"/api/v1/hosts/{host_id}/estop")
                    return True if shown["acknowledgement"]["acknowledged"] else None

                await eventually(acknowledged)
                executed = client.stats.executed
                await op.call(
                    "POST", f"/api/v1/hosts/{host_id}/estop/clear", {"reason": "cell is clear"}
                )
                await asyncio.wait_for(client.wait_estop(stopped=False), WAIT_SECONDS)
                await asyncio.sleep(0.3)
                assert client.stats.executed == executed  # clearing starts nothing
                after = await op.command(host_id, "wave")
                await op.command_in(after, "STATE_COMPLETED", "STATE_FAILED")

    asyncio.run(scenario())


def test_the_robots_own_button_latches_the_hosts_estop(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with operator(server, admin) as op:
            host_id, secret = await op.robot()
            client, sim = simulated(server, secret, tmp_path)
            async with linked(client):
                await client.raise_estop("bumper pressed", source="guard")
                assert any("bumper pressed" in why for why in sim.stops)
                await asyncio.wait_for(client.wait_estop(stopped=True), WAIT_SECONDS)
                shown = await op.call("GET", f"/api/v1/hosts/{host_id}/estop")
                assert shown["host"]["source"] == "SOURCE_ROBOT_GUARD"
                assert shown["host"]["reason"] == "bumper pressed"
                response = await op.http.post(
                    "/api/v1/commands", json={"host_id": host_id, "type": "wave"}
                )
                assert response.status_code == 400

    asyncio.run(scenario())
