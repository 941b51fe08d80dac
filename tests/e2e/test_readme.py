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


def test_try_it_examples_work(roz_factory: RozFactory, roz_dir: Path) -> None:
    home = roz_dir / "home"
    roz = roz_factory(data_dir=home / ".local" / "share" / "roz", admin_key=None)
    script = "set -euo pipefail\n" + "\n".join(shell_blocks("Try it"))
    script = script.replace("localhost:8080", roz.listener.target)
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_DATA_HOME", None)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
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
