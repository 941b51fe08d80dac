"""The robot link from outside Python: tests/js/robot.mjs, a robot written with grpc-js and the
protos loaded at run time, connects to a real server, runs a command and reports its result."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import pytest
from google.api import http_pb2

from tests.e2e.conftest import Roz
from tests.e2e.test_robot_link import Fleet

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "tests" / "js"
WAIT_SECONDS = 30  # the robot gives up after 20 s of its own


def node_or_skip() -> str:
    """The node binary, with the robot's locked modules; CI fails without them, a laptop skips."""
    node = shutil.which("node")
    if node is not None and (JS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return node
    missing = "node is not on PATH" if node is None else "tests/js: run `make install`"
    if os.environ.get("CI") == "true":
        pytest.fail(missing)
    pytest.skip(missing)


def proto_dirs() -> str:
    """Our protos, and googleapis' from the installed googleapis-common-protos: the source the
    Makefile copies into third_party/, read in place so the test needs no make step."""
    googleapis = Path(http_pb2.__file__).parents[2]
    assert (googleapis / "google" / "api" / "annotations.proto").is_file(), googleapis
    return os.pathsep.join([str(REPO / "proto"), str(googleapis)])


class NodeRobot:
    """robot.mjs as a process: its JSON lines on stdout, read as they come."""

    def __init__(self, node: str, target: str, key: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROZ_")}
        env.update(ROZ_TARGET=target, ROZ_API_KEY=key, ROZ_PROTO_DIRS=proto_dirs())
        self.process = subprocess.Popen(
            [node, str(JS / "robot.mjs")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.events.put(json.loads(line))
        self.events.put(None)

    def next_event(self) -> dict[str, Any]:
        event = self.events.get(timeout=WAIT_SECONDS)
        if event is None:
            raise AssertionError(f"the robot exited early: {self.finish()}")
        self.seen.append(event)
        return event

    def finish(self) -> tuple[int, str]:
        """Waits for the exit; its code and stderr. Every event before it is in `seen`."""
        code = self.process.wait(WAIT_SECONDS)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        while (event := self.events.get(timeout=WAIT_SECONDS)) is not None:
            self.seen.append(event)
        return code, stderr

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)


@pytest.fixture
def node() -> str:
    return node_or_skip()


@pytest.fixture
def fleet(roz: Roz) -> Fleet:
    return Fleet(roz, "js")


def test_a_grpc_js_robot_runs_a_command_and_reports_its_result(node: str, fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    robot = NodeRobot(node, fleet.roz.listener.target, secret)
    try:
        welcome = robot.next_event()
        assert (welcome["event"], welcome["host_id"]) == ("welcome", host_id)

        made = fleet.command(host_id, "move_to", target={"x": 1, "y": 2, "z": 0})
        code, stderr = robot.finish()
        assert code == 0, stderr
    finally:
        robot.stop()

    assert [e["event"] for e in robot.seen] == [
        "welcome",
        "delivery",
        "report_result",
        "report_result",
        "ended",
    ]
    delivery = robot.seen[1]
    assert (delivery["sequence"], delivery["command_id"], delivery["type"]) == (
        "1",
        made["id"],
        "move_to",
    )
    results = [(e["applied"], e["state"]) for e in robot.seen[2:4]]
    assert results == [(True, "STATE_RUNNING"), (True, "STATE_COMPLETED")]
    assert robot.seen[-1]["code"] == 0  # the robot left and the server closed the stream with OK

    seen = fleet.get(f"/api/v1/commands/{made['id']}")
    assert seen["state"] == "STATE_COMPLETED"
    assert seen["result"] == {"by": "grpc-js"}
    assert seen["deliver_time"] <= seen["acknowledge_time"]
    assert [t["to_state"] for t in seen["transitions"]] == [
        "STATE_PENDING",
        "STATE_RUNNING",
        "STATE_COMPLETED",
    ]


def test_a_grpc_js_robot_with_a_wrong_key_is_turned_away_and_exits_1(
    node: str, fleet: Fleet
) -> None:
    robot = NodeRobot(node, fleet.roz.listener.target, "roz_sk_not_a_key")
    try:
        code, stderr = robot.finish()
    finally:
        robot.stop()
    assert code == 1
    assert "stream failed: 16 " in stderr  # UNAUTHENTICATED, as grpc-js numbers it
    assert robot.seen == []
