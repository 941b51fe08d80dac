"""The README's examples run as written against a live server (only host and port differ)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import RozFactory

ROOT = Path(__file__).resolve().parents[2]


def shell_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL)


def run_as_user(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The script in bash, as a user whose home is `home` (where the admin key was saved)."""
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_DATA_HOME", None)
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_try_it_examples_work(roz_dir: Path, roz_factory_per_test: RozFactory) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    script = "set -euo pipefail\n" + "\n".join(shell_blocks("Try it"))
    script = script.replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '{"status":"ok"}' in out
    assert '"name":"lab-arm"' in out
    assert '"kind":"KIND_HARDWARE"' in out
    assert '"secret":"roz_sk_' in out
    assert "roz.v1.EnvironmentService" in out  # grpcurl list
    assert "rpc GetEnvironment" in out  # grpcurl describe of a method
    assert '"SERVING"' in out
    listed, _ = json.JSONDecoder().raw_decode(out, out.index('{"environments"'))
    assert listed["environments"][0]["allowed_tools"] == ["camera", "gripper"]


@pytest.mark.parametrize("section", ["The two commands"])
def test_readme_names_the_two_commands(section: str) -> None:
    blocks = shell_blocks(section)
    assert any("make run" in b and "make test" in b for b in blocks)


def test_whole_flow_runs_as_written(roz_dir: Path, roz_factory_per_test: RozFactory) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    script = (
        "set -euo pipefail\n"
        "export ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n"
        + "\n".join(
            f"{block}\necho '<<<END OF BLOCK>>>'" for block in shell_blocks("The whole flow")
        )
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    rest, grpcurl = result.stdout.split("<<<END OF BLOCK>>>")[:2]
    decoder = json.JSONDecoder()
    answers = []
    position = 0
    while (start := rest.find("{", position)) != -1:
        answer, position = decoder.raw_decode(rest, start)
        answers.append(answer)
    host, running, completed, refused, *tasks, metrics = answers
    assert host["status"] == "STATUS_ONLINE"
    assert (running["state"], completed["state"]) == ("STATE_RUNNING", "STATE_COMPLETED")
    assert completed["applied_policies"][0]["version"] == 1
    assert refused["code"] == 9  # FAILED_PRECONDITION
    reasons = {d["reason"] for d in refused["details"]}
    assert reasons == {"SAFETY_LIMIT_EXCEEDED", "OUTSIDE_WORKSPACE"}
    assert [t["state"] for t in tasks] == ["STATE_QUEUED", "STATE_RUNNING", "STATE_SUCCEEDED"]
    counts = {c["state"]: c["count"] for c in metrics["state_counts"]}
    assert counts["STATE_SUCCEEDED"] == "1"
    assert metrics["total"] == "1"
    assert '"state": "STATE_COMPLETED"' in grpcurl  # GetCommand and ListCommands
    assert '"prompt": "count the parts"' in grpcurl
    assert '"STATE_PENDING"' in grpcurl  # the metrics now count the new task


def test_the_robot_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("A robot on the link")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + block
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    command = json.loads(result.stdout.strip().splitlines()[-1])
    assert command["state"] == "STATE_COMPLETED"
    assert command["result"]["distance"] == 1.5
    assert command["deliver_time"] <= command["acknowledge_time"]
    assert [t["to_state"] for t in command["transitions"]] == [
        "STATE_PENDING",
        "STATE_RUNNING",
        "STATE_COMPLETED",
    ]
    # The simulator's log, on its stderr: the delivery, and the move's end.
    assert "delivery 1: command" in result.stderr
    assert command["id"] in result.stderr


def test_device_login_by_hand_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    blocks = shell_blocks("Device login")
    assert len(blocks) == 1
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + blocks[0]
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert '"user_code":"' in out
    assert '{"error":"authorization_pending"' in out
    token, _ = json.JSONDecoder().raw_decode(out, out.index('{"access_token"'))
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "tasks:read"
    assert token["access_token"].startswith("roz_sk_")


def test_the_estop_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("E-stop")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + block
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    engaged, shown, refused, cleared = (
        json.loads(line) for line in result.stdout.strip().splitlines()
    )
    assert (engaged["stopped"], engaged["host"]["epoch"]) == (True, "1")
    assert shown["acknowledgement"]["acknowledged"] is True
    assert refused["code"] == 9  # FAILED_PRECONDITION
    assert "person in the cell" in refused["message"]
    assert (cleared["stopped"], cleared["host"]["epoch"]) == (False, "2")
    assert "e-stop engaged: person in the cell" in result.stderr  # the robot's log


def test_the_audit_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("Audit trail")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + block
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.strip().splitlines()
    command, listed, verdict = (json.loads(line) for line in lines[:3])
    (created,) = listed["audit_events"]
    assert (created["kind"], created["subject_id"]) == ("command.created", command["id"])
    assert created["actor"]["protocol"] == "PROTOCOL_REST"
    assert created["actor"]["request_id"] == "audit-demo-1"
    assert (verdict["intact"], verdict["head_sequence"]) == (True, created["sequence"])
    assert lines[3].endswith("is intact: 1 entry.")
    assert lines[4] == f"Head: {created['sequence']}:{created['hash']}"


def test_the_live_views_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("Live views")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n"
        f"cd {roz_dir}\n" + block
    ).replace("localhost:8080", roz.listener.target)
    script = script.replace(".venv/bin/grpcurl", str(ROOT / ".venv/bin/grpcurl"))
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    data = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    ids = [int(line[4:]) for line in out.splitlines() if line.startswith("id: ")]
    assert len(ids) == len(data)
    assert ids == sorted(ids)
    assert data[0]["host"]["estop"]["stopped"] is False
    kinds = [d["change"]["kind"] for d in data[1:]]
    assert kinds == ["command.created", "estop.engaged"]
    grpc_out = out[out.index("}", out.rindex("data: ")) :]
    assert '"kind": "command.ended"' in grpc_out
    assert '"state": "STATE_CANCELLED"' in grpc_out


def test_the_command_line_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("Command line (`roz`)")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n"
        f"cd {roz_dir}\n" + block
    ).replace("localhost:8080", roz.listener.target)
    script = script.replace(".venv/bin/roz ", f"{ROOT}/.venv/bin/roz ")
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    out, err = result.stdout, result.stderr
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert "arm-7" in out.splitlines()[1]
    assert "labels:\n  site: lab\n" in out  # the host as YAML
    assert "PENDING" in out  # the approved command's row
    assert out.count("exit ") == 2
    assert "exit 1" in out
    assert "exit 2" in out
    assert "SAFETY_LIMIT_EXCEEDED" in err
    assert "host.name: name is required" in err
    succeeded, _ = json.JSONDecoder().raw_decode(out, out.index('{\n  "id"'))
    assert (succeeded["state"], succeeded["result"]) == ("STATE_SUCCEEDED", "12 parts")
    # The watch's table: the task as it was, then each change and the task after it.
    watched = out[out.index("SEQUENCE") :].splitlines()[1:-1]
    events = [line.split()[2] for line in watched]
    assert events == ["task", "task.queued", "task", "task.running", "task", "task.ended", "task"]
    assert watched[-1].split()[3] == succeeded["id"]
    assert watched[-1].endswith("SUCCEEDED 12 parts")
    assert out.rstrip().endswith("['12 parts']")


def test_the_triggers_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("Triggers")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + block
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    preview, first, again, history = (
        json.loads(line) for line in result.stdout.strip().splitlines()
    )
    assert len(preview["fires"]) == 3
    assert all("T09:30:00+0" in fire["local_time"] for fire in preview["fires"])
    assert first["fire"]["outcome"] == "OUTCOME_CREATED"
    assert first["fire"]["task_id"]
    assert first["duplicate"] is False
    assert again["duplicate"] is True
    assert again["fire"]["id"] == first["fire"]["id"]
    (fire,) = history["fires"]
    assert (fire["event_type"], fire["event_state"]) == ("task.ended", "failed")
    assert fire["outcome"] == "OUTCOME_CREATED"


def test_the_agent_sessions_walkthrough_runs_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("Agent sessions")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + block
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    over_grpc, over_rest, session = (
        json.loads(line) for line in result.stdout.strip().splitlines()
    )
    assert over_grpc == [
        "session_started",
        "user_message",
        "turn_started",
        "text_delta",
        "text_delta",
        "text_delta",
        "action_requested",
        "approval_requested",
        "action_finished",
        "session_completed",
    ]
    assert over_rest[:8] == over_grpc[:8]
    assert over_rest[8:11] == ["approval_resolved", "action_started", "action_finished"]
    assert over_rest[-2:] == ["turn_finished", "session_completed"]
    assert set(over_rest[11:-2]) == {"text_delta"}
    assert session["state"] == "STATE_ENDED"
    assert session["turn_count"] == 1
    assert int(session["output_tokens"]) > 0


def test_the_openapi_examples_run_as_written(roz_factory: RozFactory) -> None:
    roz = roz_factory()
    (block,) = shell_blocks("API reference (OpenAPI)")
    script = ("set -euo pipefail\n" + block).replace("localhost:8080", roz.listener.target)
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert "DELETE /api/v1/environments/{id} environments:write" in lines
    assert "POST /api/v1/environments environments:write" in lines
    assert "GET /api/v1/environments/{id} environments:read" in lines
    assert lines[-1] == "304"


def test_the_connect_examples_run_as_written(
    roz_dir: Path, roz_factory_per_test: RozFactory
) -> None:
    home = roz_dir / "home"
    roz = roz_factory_per_test(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    (block,) = shell_blocks("The Connect protocol and gRPC-web JSON")
    script = (
        "set -euo pipefail\nexport ROZ_API_KEY=$(cat ~/.local/share/roz/admin-key)\n" + block
    ).replace("localhost:8080", roz.listener.target)
    result = run_as_user(script, home)
    assert result.returncode == 0, result.stderr + result.stdout
    decoder = json.JSONDecoder()
    answers, position = [], 0
    while (start := result.stdout.find("{", position)) != -1:
        answer, position = decoder.raw_decode(result.stdout, start)
        answers.append(answer)
    created, listed, refused = answers
    assert (created["name"], created["allowed_tools"]) == ("connect-cell", ["camera"])
    assert [e["id"] for e in listed["environments"]] == [created["id"]]
    assert refused["code"] == "invalid_argument"
    assert refused["details"][0]["type"] == "google.rpc.BadRequest"
