"""`roz RESOURCE VERB` as an operator runs it, against a live roz server: list, get and create for
every resource in every output format, paging, command approvals, task transitions, both
watches (one resumed through a cut connection), and the errors with their exit codes.

The CLI runs as its own process (the installed `roz` script) with the key in $ROZ_API_KEY, as
scripts run it; what the CLI did is checked over REST with the same key.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.test_login_live import environment, roz_command
from tests.e2e.conftest import (  # noqa: F401  (the fixtures)
    Roz,
    RozFactory,
    postgres,
    roz_factory,
)
from tests.e2e.test_commands import rest

MISSING = "00000000-0000-4000-8000-000000000000"
WATCH_WAIT_SECONDS = 30.0


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory) -> Roz:  # noqa: F811
    return roz_factory(rate_limit_rps=100_000.0, rate_limit_burst=100_000)


@dataclass
class Operator:
    """One tenant's operator: runs `roz` against the server with the tenant's admin key."""

    server: Roz
    key: str
    config: Path

    def run(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        completed = subprocess.run(
            [*roz_command(), *args],
            env=environment(
                self.config, **{"ROZ_SERVER": self.server.url, "ROZ_API_KEY": self.key, **env}
            ),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(completed.returncode, completed.stdout, completed.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.code == 0, (args, result.stderr)
        return result.out

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self.ok(*args, "-o", "json", stdin=stdin))

    def created(self, resource: str, *flags: str, stdin: str | None = None) -> str:
        """The id `roz RESOURCE create … -q` prints, alone on stdout."""
        out = self.ok(resource, "create", *flags, "-q", stdin=stdin)
        (line,) = out.splitlines()
        return line

    def watch(self, *args: str, server_url: str | None = None) -> Watch:
        return Watch(
            [*roz_command(), *args],
            environment(
                self.config, ROZ_SERVER=server_url or self.server.url, ROZ_API_KEY=self.key
            ),
        )


@dataclass
class Result:
    code: int
    out: str
    err: str


class Watch:
    """`roz … watch` running in the background, its stdout read line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.err.append(line)

    def _lines(self) -> Iterator[str]:
        """Lines as they come, for at most WATCH_WAIT_SECONDS in all: checkpoints keep coming
        while nothing happens, so a wait per line alone would never end."""
        deadline = time.monotonic() + WATCH_WAIT_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the watch ended; stderr: {''.join(self.err)}")
            yield line
        pytest.fail(f"nothing expected within {WATCH_WAIT_SECONDS} s; stderr: {''.join(self.err)}")

    def line_with(self, text: str) -> str:
        """Lines until one containing `text` (which is returned); fails if the output ends."""
        for line in self._lines():
            if text in line:
                return line
        raise AssertionError("unreachable")

    def events_until(self, text: str) -> list[dict[str, Any]]:
        """`-o json` lines, parsed, up to and including the first containing `text`."""
        events = []
        for line in self._lines():
            events.append(json.loads(line))
            if text in line:
                return events
        raise AssertionError("unreachable")

    def finish(self) -> int:
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def operator(server: Roz, tmp_path: Path) -> Operator:
    """A fresh tenant, so that lists hold only what the test made."""
    return Operator(server, server.new_tenant("cli-ops"), tmp_path / "config")


@pytest.fixture
def cell(operator: Operator) -> dict[str, str]:
    """A policy (grips need approval), an environment bound by it, and a host in it."""
    policy = operator.created(
        "policies", "--name", "cell-a", "--max-linear-velocity", "0.5",
        "--approval-command-type", "grip",
    )  # fmt: skip
    env = operator.created(
        "environments", "--name", "cell-a", "--kind", "hardware", "--allowed-tool", "camera",
        "--safety-policy", policy,
    )  # fmt: skip
    host = operator.created("hosts", "--name", "arm-1", "--environment", env)
    return {"policy": policy, "environment": env, "host": host}


# -- list, get, create -------------------------------------------------------------------------


RESOURCES = {  # roz RESOURCE → its REST collection and the answer's list field
    "environments": ("/api/v1/environments", "environments"),
    "hosts": ("/api/v1/hosts", "hosts"),
    "policies": ("/api/v1/safety-policies", "safety_policies"),
    "tasks": ("/api/v1/tasks", "tasks"),
    "commands": ("/api/v1/commands", "commands"),
}
HEADERS = {
    "environments": ["ID", "NAME", "KIND", "HOSTS", "POLICIES", "CREATED"],
    "hosts": ["ID", "NAME", "STATUS", "KIND", "ENVIRONMENT", "LAST SEEN"],
    "policies": ["ID", "NAME", "VERSION", "APPROVAL", "UPDATED"],
    "tasks": ["ID", "STATE", "HOST", "PROMPT", "CREATED"],
    "commands": ["ID", "TYPE", "STATE", "HOST", "CREATED"],
}


def headers(line: str) -> list[str]:
    """A table's header line as its column names (names may hold one space: LAST SEEN)."""
    return re.split(r"\s{2,}", line.strip())


def create_one(operator: Operator, cell: dict[str, str], resource: str) -> str:
    flags = {
        "environments": ["--name", "lab", "--kind", "simulation", "--config", '{"fps": 30}'],
        "hosts": ["--name", "cam-1", "--kind", "cloud", "--capability", "camera:rgb",
                  "--label", "site=berlin", "--environment", cell["environment"]],
        "policies": ["--name", "strict", "--max-force", "20", "--denied-command-type", "throw",
                     "--approval-ttl", "10m"],
        "tasks": ["--prompt", "inspect the bin", "--environment", cell["environment"],
                  "--host", cell["host"], "--timeout", "1h30m", "--label", "shift=night"],
        "commands": ["--host", cell["host"], "--type", "move_to",
                     "--params", '{"velocity": 0.3}', "--timeout", "30s"],
    }[resource]  # fmt: skip
    return operator.created(resource, *flags)


EXPECTED = {  # what the flags above must have set, as the server stores it
    "environments": {"name": "lab", "kind": "KIND_SIMULATION", "config": {"fps": 30}},
    "hosts": {"name": "cam-1", "kind": "KIND_CLOUD", "capabilities": ["camera:rgb"],
              "labels": {"site": "berlin"}, "status": "STATUS_OFFLINE"},
    "policies": {"name": "strict", "limits": {"max_force": 20}, "version": 1,
                 "denied_command_types": ["throw"], "approval_ttl": "600s"},
    "tasks": {"prompt": "inspect the bin", "timeout": "5400s", "state": "STATE_PENDING",
              "labels": {"shift": "night"}},
    "commands": {"type": "move_to", "params": {"velocity": 0.3}, "timeout": "30s",
                 "state": "STATE_PENDING"},
}  # fmt: skip


@pytest.mark.parametrize("resource", list(RESOURCES))
def test_create_get_and_list_in_every_output_format(
    operator: Operator, cell: dict[str, str], resource: str
) -> None:
    new_id = create_one(operator, cell, resource)
    path, field = RESOURCES[resource]
    stored = rest(operator.server, operator.key, "GET", f"{path}/{new_id}")
    assert {name: stored[name] for name in EXPECTED[resource]} == EXPECTED[resource]

    # json and yaml: the server's document, unchanged.
    as_json = operator.json(resource, "get", new_id)
    assert as_json == stored
    as_yaml = yaml.safe_load(operator.ok(resource, "get", new_id, "-o", "yaml"))
    assert as_yaml == stored
    listed = operator.json(resource, "list")
    assert new_id in [item["id"] for item in listed[field]]
    assert "next_page_token" in listed
    assert yaml.safe_load(operator.ok(resource, "list", "-o", "yaml")) == listed

    # table: the headers, then a row per resource starting with its id.
    header, *rows = operator.ok(resource, "list").splitlines()
    assert headers(header) == HEADERS[resource]
    (row,) = [r for r in rows if r.startswith(new_id)]
    for value in EXPECTED[resource].values():
        if isinstance(value, str) and value.startswith(("KIND_", "STATE_", "STATUS_")):
            assert value.split("_", 1)[1] in row.split()
    got_header, got_row = operator.ok(resource, "get", new_id).splitlines()
    assert headers(got_header) == HEADERS[resource]
    assert got_row.split()[0] == new_id


def test_create_from_a_yaml_file_and_from_json_on_stdin(operator: Operator, tmp_path: Path) -> None:
    spec = tmp_path / "policy.yaml"
    spec.write_text(
        "name: cell-b\n"
        "limits: {max_linear_velocity: 0.5, max_payload: 5}\n"
        "workspace:\n"
        "  boxes:\n"
        "    - min: {x: 0, y: 0, z: 0}\n"
        "      max: {x: 2, y: 2, z: 2}\n"
        "approval_command_types: [grip]\n"
    )
    # A flag given with the file overrides the file's field.
    policy = operator.json("policies", "create", "--from-file", str(spec), "--max-payload", "3")
    assert policy["limits"] == {"max_linear_velocity": 0.5, "max_payload": 3}
    assert policy["workspace"]["boxes"][0]["max"] == {"x": 2, "y": 2, "z": 2}
    assert policy["approval_command_types"] == ["grip"]

    body = json.dumps({"name": "from-stdin", "kind": "hardware", "allowed_tools": ["camera"]})
    env_id = operator.created("environments", "--from-file", "-", stdin=body)
    stored = rest(operator.server, operator.key, "GET", f"/api/v1/environments/{env_id}")
    assert (stored["name"], stored["kind"]) == ("from-stdin", "KIND_HARDWARE")


def test_a_file_that_is_not_an_object_is_a_usage_error(operator: Operator, tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- name: a\n- name: b\n")
    result = operator.run("hosts", "create", "--from-file", str(listing))
    assert result.code == 2
    assert "must hold one object" in result.err
    assert rest(operator.server, operator.key, "GET", "/api/v1/hosts")["hosts"] == []


def test_list_all_follows_next_page_token_across_pages(operator: Operator) -> None:
    made = {operator.created("hosts", "--name", f"arm-{n}") for n in range(5)}

    first = operator.json("hosts", "list", "--page-size", "2")
    assert len(first["hosts"]) == 2
    assert first["next_page_token"]
    second = operator.json("hosts", "list", "--page-size", "2", "--page-token",
                           first["next_page_token"])  # fmt: skip
    assert not {h["id"] for h in first["hosts"]} & {h["id"] for h in second["hosts"]}

    everything = operator.json("hosts", "list", "--page-size", "2", "--all")
    assert [h["id"] for h in everything["hosts"]] == [
        h["id"] for h in rest(operator.server, operator.key, "GET", "/api/v1/hosts")["hosts"]
    ]
    assert {h["id"] for h in everything["hosts"]} == made
    assert everything["next_page_token"] == ""

    # A table of one page says on stderr how to get the next; stdout stays the rows.
    table = operator.run("hosts", "list", "--page-size", "2")
    assert table.code == 0
    assert len(table.out.splitlines()) == 3
    assert "--page-token" in table.err
    everything_table = operator.ok("hosts", "list", "--page-size", "2", "--all")
    assert len(everything_table.splitlines()) == 6


def test_list_filters(operator: Operator, cell: dict[str, str]) -> None:
    other = operator.created("hosts", "--name", "loose")
    rest(operator.server, operator.key, "PUT", f"/api/v1/hosts/{other}/status",
         json={"status": "online"})  # fmt: skip
    online = operator.json("hosts", "list", "--status", "online")
    assert [h["id"] for h in online["hosts"]] == [other]
    in_cell = operator.json("hosts", "list", "--environment", cell["environment"])
    assert [h["id"] for h in in_cell["hosts"]] == [cell["host"]]

    task = operator.created("tasks", "--prompt", "p", "--environment", cell["environment"])
    operator.created("tasks", "--prompt", "q", "--environment", cell["environment"])
    operator.ok("tasks", "transition", task, "queued")
    queued = operator.json("tasks", "list", "--state", "QUEUED")
    assert [t["id"] for t in queued["tasks"]] == [task]


# -- state moves -------------------------------------------------------------------------------


def test_commands_approve_deny_and_cancel(operator: Operator, cell: dict[str, str]) -> None:
    host = cell["host"]
    waiting = [operator.created("commands", "--host", host, "--type", "grip") for _ in range(2)]
    for command in waiting:
        assert operator.json("commands", "get", command)["state"] == "STATE_AWAITING_APPROVAL"

    approved = operator.json("commands", "approve", waiting[0], "--reason", "cell is clear")
    assert approved["state"] == "STATE_PENDING"
    assert approved["transitions"][-1]["reason"] == "cell is clear"
    denied = operator.ok("commands", "deny", waiting[1], "--reason", "person in the cell")
    assert "REJECTED" in denied.splitlines()[1].split()
    stored = rest(operator.server, operator.key, "GET", f"/api/v1/commands/{waiting[1]}")
    assert stored["state"] == "STATE_REJECTED"
    assert stored["transitions"][-1]["reason"] == "person in the cell"

    cancelled = operator.json("commands", "cancel", waiting[0])
    assert cancelled["state"] == "STATE_CANCELLED"

    # A move the state machine refuses: exit 1, the server's reason on stderr, nothing on stdout.
    again = operator.run("commands", "approve", waiting[0])
    assert (again.code, again.out) == (1, "")
    assert "from CANCELLED" in again.err
    assert "INVALID_TRANSITION" in again.err


def test_task_transition_and_cancel(operator: Operator, cell: dict[str, str]) -> None:
    task = operator.created("tasks", "--prompt", "sort", "--environment", cell["environment"])
    assert operator.json("tasks", "transition", task, "queued")["state"] == "STATE_QUEUED"
    running = operator.json("tasks", "transition", task, "RUNNING", "--reason", "picked up")
    assert running["state"] == "STATE_RUNNING"
    assert running["transitions"][-1]["reason"] == "picked up"
    done = operator.json("tasks", "transition", task, "succeeded", "--reason", "12 parts")
    assert (done["state"], done["result"]) == ("STATE_SUCCEEDED", "12 parts")

    other = operator.created("tasks", "--prompt", "idle", "--environment", cell["environment"])
    assert operator.json("tasks", "cancel", other)["state"] == "STATE_CANCELLED"

    # The watch of a task that has ended replays its history and ends: as YAML documents here.
    replay = operator.ok("tasks", "watch", task, "--after-sequence", "0", "-o", "yaml")
    documents = list(yaml.safe_load_all(replay))
    assert [d["change"]["kind"] for d in documents if "change" in d] == [
        "task.created",
        "task.queued",
        "task.running",
        "task.ended",
    ]
    assert documents[-1]["task"]["state"] == "STATE_SUCCEEDED"

    illegal = operator.run("tasks", "transition", task, "running")
    assert illegal.code == 1
    unknown = operator.run("tasks", "transition", task, "asleep")
    assert unknown.code == 2
    assert "invalid choice" in unknown.err


# -- watches -----------------------------------------------------------------------------------


def test_task_watch_prints_each_change_and_ends_with_the_task(
    operator: Operator, cell: dict[str, str]
) -> None:
    task = operator.created("tasks", "--prompt", "watch me", "--environment", cell["environment"])
    watch = operator.watch("tasks", "watch", task, "-o", "json")
    try:
        (snapshot,) = watch.events_until('"task"')
        assert snapshot["task"]["state"] == "STATE_PENDING"
        operator.ok("tasks", "transition", task, "queued")
        events = watch.events_until("STATE_QUEUED")
        assert [e["change"]["kind"] for e in events if "change" in e][-1:] == ["task.queued"]
        assert events[-1]["task"]["state"] == "STATE_QUEUED"
        operator.ok("tasks", "cancel", task)
        watch.events_until("STATE_CANCELLED")
        assert watch.finish() == 0  # the task is final: the watch ends by itself
    finally:
        watch.stop()
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(sequences)


def test_host_watch_shows_a_table_line_per_change_and_stops_on_ctrl_c(
    operator: Operator, cell: dict[str, str]
) -> None:
    host = cell["host"]
    watch = operator.watch("hosts", "watch", host)
    try:
        assert watch.line_with("SEQUENCE").split()[:4] == ["SEQUENCE", "TIME", "EVENT", "ID"]
        snapshot = watch.line_with(host)
        assert snapshot.split()[2] == "host"
        assert "OFFLINE" in snapshot
        command = operator.created("commands", "--host", host, "--type", "wave")
        line = watch.line_with("command.created")
        assert command in line.split()
        watch.process.send_signal(signal.SIGINT)
        assert watch.finish() == 130
    finally:
        watch.stop()
    assert "".join(watch.err) == "\nroz: interrupted\n"


class CuttableProxy:
    """A TCP relay to the server whose open connections the test can cut, as a network would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            connections, self.open = self.open, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(server: Roz) -> Iterator[CuttableProxy]:
    host, port = server.listener.target.rsplit(":", 1)
    relay = CuttableProxy((host, int(port)))
    yield relay
    relay.close()


def test_a_watch_resumes_after_a_dropped_connection_without_loss_or_repeat(
    operator: Operator, cell: dict[str, str], proxy: CuttableProxy
) -> None:
    host = cell["host"]
    watch = operator.watch("hosts", "watch", host, "-o", "json", server_url=proxy.url)
    try:
        # The host as it is first: a change made before the watch has begun is not one of its
        # changes, so the first command waits for it.
        before = watch.events_until(f'"id": "{host}"')
        first = operator.created("commands", "--host", host, "--type", "wave")
        before += watch.events_until(first)
        proxy.cut()
        # Made while the watch is disconnected: it must still arrive, once.
        second = operator.created("commands", "--host", host, "--type", "wave")
        after = watch.events_until(second)
    finally:
        watch.stop()
    assert any("resuming after sequence" in line for line in watch.err), watch.err
    changes = [e for e in before + after if "change" in e]
    assert [c["change"]["subject_id"] for c in changes] == [first, second]
    sequences = [int(e["sequence"]) for e in before + after]
    assert sequences == sorted(sequences)


# -- errors ------------------------------------------------------------------------------------


def test_an_invalid_create_prints_each_field_violation(operator: Operator) -> None:
    result = operator.run("hosts", "create", "--kind", "edge", "--label", "bad key!=x")
    assert result.code == 2
    assert result.out == ""
    first, *violations = result.err.splitlines()
    assert first.startswith("roz: ")
    fields = {line.strip().split(":")[0] for line in violations}
    assert {"host.name", "host.labels"} <= fields, result.err

    as_json = operator.run("hosts", "create", "--kind", "edge", "-o", "json")
    assert as_json.code == 2
    error = json.loads(as_json.err)["error"]
    assert error["code"] == 3  # INVALID_ARGUMENT
    (bad_request,) = [d for d in error["details"] if d["@type"].endswith("BadRequest")]
    assert bad_request["field_violations"][0]["field"] == "host.name"
    as_yaml = operator.run("hosts", "create", "--kind", "edge", "-o", "yaml")
    assert (as_yaml.code, yaml.safe_load(as_yaml.err)) == (2, {"error": error})
    assert rest(operator.server, operator.key, "GET", "/api/v1/hosts")["hosts"] == []


def test_a_refused_command_names_each_broken_constraint(
    operator: Operator, cell: dict[str, str]
) -> None:
    result = operator.run(
        "commands", "create", "--host", cell["host"], "--type", "move_to",
        "--params", '{"velocity": 2.0}',
    )  # fmt: skip
    assert result.code == 1  # FAILED_PRECONDITION: the request is fine, the policy says no
    assert "SAFETY_LIMIT_EXCEEDED" in result.err


@pytest.mark.parametrize("resource", list(RESOURCES))
def test_an_unknown_id_is_not_found(operator: Operator, resource: str) -> None:
    result = operator.run(resource, "get", MISSING)
    assert (result.code, result.out) == (4, "")
    assert result.err.startswith("roz: ")
    assert "not found" in result.err


def test_another_tenants_ids_are_not_found(
    operator: Operator, cell: dict[str, str], server: Roz, tmp_path: Path
) -> None:
    stranger = Operator(server, server.new_tenant("cli-stranger"), tmp_path / "stranger")
    for resource, key in (("hosts", "host"), ("environments", "environment"),
                          ("policies", "policy")):  # fmt: skip
        result = stranger.run(resource, "get", cell[key])
        assert result.code == 4, (resource, result.err)
    command = operator.created("commands", "--host", cell["host"], "--type", "grip")
    refused = stranger.run("commands", "approve", command)
    assert refused.code == 4
    assert operator.json("commands", "get", command)["state"] == "STATE_AWAITING_APPROVAL"
    watch = stranger.run("hosts", "watch", cell["host"])
    assert watch.code == 4


def test_without_a_key_or_with_a_bad_one_exits_3(operator: Operator, tmp_path: Path) -> None:
    missing = subprocess.run(
        [*roz_command(), "hosts", "list"],
        env=environment(tmp_path / "empty", ROZ_SERVER=operator.server.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3
    assert f"not logged in to {operator.server.url}; run roz login" in missing.stderr

    bad_key = "roz_sk_" + "x" * 43
    refused = operator.run("hosts", "list", ROZ_API_KEY=bad_key)
    assert (refused.code, refused.out) == (3, "")
    assert refused.err.startswith("roz: ")
    assert refused.err.endswith("run roz login\n")
    assert bad_key not in refused.err
    as_json = operator.run("hosts", "list", "-o", "json", ROZ_API_KEY=bad_key)
    assert json.loads(as_json.err)["error"]["code"] == 16  # UNAUTHENTICATED


def test_a_key_without_the_scope_exits_3(operator: Operator) -> None:
    made = rest(operator.server, operator.key, "POST", "/api/v1/auth-keys",
                json={"name": "reader", "scopes": ["hosts:read"]})  # fmt: skip
    result = operator.run("hosts", "create", "--name", "x", ROZ_API_KEY=made["secret"])
    assert result.code == 3
    assert operator.run("hosts", "list", ROZ_API_KEY=made["secret"]).code == 0


def test_a_task_created_twice_with_one_idempotency_key_is_one_task(
    operator: Operator, cell: dict[str, str]
) -> None:
    flags = ("--prompt", "once", "--environment", cell["environment"], "--idempotency-key", "k-1")
    first = operator.created("tasks", *flags)
    assert operator.created("tasks", *flags) == first
    assert [t["id"] for t in operator.json("tasks", "list")["tasks"]] == [first]
