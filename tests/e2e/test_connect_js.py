"""roz from connect-es: tests/js/connect.mjs, a Node client with the descriptors loaded at run time
from a FileDescriptorSet, over the Connect protocol (JSON, binary over HTTP/2, GET, a watch, an
error with details) and over gRPC-web (binary and JSON)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2

from tests.e2e.conftest import Roz
from tests.e2e.test_robot_link_js import JS, REPO, node_or_skip, proto_dirs

TIMEOUT_SECONDS = 60


def descriptor_set(out: Path) -> Path:
    """roz's protos as `buf build` writes them (imports included), plus the error details'
    file, which no roz proto imports but every client decoding details needs."""
    # A workspace of its own: our buf.yaml and protos, googleapis' from the installed package
    # (what `make third_party` copies), so the test needs no make step.
    googleapis = Path(proto_dirs().split(os.pathsep)[1])
    workspace = out / "workspace"
    (workspace / "third_party" / "google").mkdir(parents=True)
    (workspace / "third_party" / "google" / "api").symlink_to(googleapis / "google" / "api")
    (workspace / "proto").symlink_to(REPO / "proto")
    (workspace / "buf.yaml").write_bytes((REPO / "buf.yaml").read_bytes())
    built = out / "roz.binpb"
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "buf"), "build", "-o", str(built)],
        cwd=workspace,
        check=True,
        capture_output=True,
        env={**os.environ, "BUF_CACHE_DIR": str(out / "cache")},
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(built.read_bytes())
    present = {file.name for file in files.file}
    for module in (error_details_pb2.DESCRIPTOR.dependencies[0], error_details_pb2.DESCRIPTOR):
        if module.name not in present:
            proto = descriptor_pb2.FileDescriptorProto()
            module.CopyToProto(proto)
            files.file.append(proto)
    built.write_bytes(files.SerializeToString())
    return built


def run_client(roz: Roz, descriptors: Path) -> dict[str, dict[str, Any]]:
    node = node_or_skip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROZ_")}
    env.update(
        ROZ_URL=roz.url, ROZ_API_KEY=roz.new_tenant("connect-es"), ROZ_DESCRIPTORS=str(descriptors)
    )
    result = subprocess.run(
        [node, str(JS / "connect.mjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    return {step.pop("step"): step for step in steps}


@pytest.fixture
def steps(roz: Roz, tmp_path: Path) -> dict[str, dict[str, Any]]:
    node_or_skip()
    if not (JS / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        missing = "tests/js: run `make install` (@connectrpc/connect-node is missing)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return run_client(roz, descriptor_set(tmp_path))


def test_connect_es_speaks_connect_and_grpc_web_to_roz(steps: dict[str, dict[str, Any]]) -> None:
    assert steps["create"]["allowedTools"] == ["camera", "gripper"]
    assert steps["create"]["wire"] == {
        "method": "POST",
        "contentType": "application/json",
        "encoding": None,
    }
    assert steps["get_binary"]["name"] == "connect-es-cell"
    assert steps["get_http_get"]["name"] == "connect-es-cell"
    assert steps["get_http_get"]["wire"] == {
        "method": "GET",
        "contentType": None,
        "encoding": "json",
    }

    error = steps["error_connect"]
    assert error["code"] == "InvalidArgument"
    assert error["fields"] == ["id"]  # read through ConnectError.findDetails(BadRequest)

    watch = steps["watch"]
    assert watch["states"][0] == "STATE_PENDING"
    assert watch["states"][-1] == "STATE_CANCELLED"  # and the stream ended by itself
    assert "task.ended" in watch["changes"]

    for name in ("grpc_web_binary", "grpc_web_json"):
        assert steps[name]["name"] == "connect-es-cell"
        assert steps[name]["error"]["code"] == "InvalidArgument"
        assert steps[name]["error"]["fields"] == ["id"]
        assert steps[name]["error"]["message"] == error["message"]
