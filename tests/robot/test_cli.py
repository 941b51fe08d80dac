"""`roz-robot` without a server: arguments, the environment, defaults and exit codes."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from roz_robot import __version__
from roz_robot.cli import (
    SimulateOptions,
    _clients,
    build_parser,
    default_state_dir,
    main,
    resolve_options,
)

KEY = "roz_sk_" + "r" * 43


def options(*argv: str, **env: str) -> SimulateOptions:
    args = build_parser().parse_args(["simulate", *argv])
    return resolve_options(args, {"HOME": "/home/robot", **env})


def test_python_m_roz_robot_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roz_robot", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"roz-robot {__version__}")


def test_the_server_is_the_flag_else_the_variable_else_localhost() -> None:
    assert options("--key", KEY).server == "localhost:8080"
    assert options("--key", KEY, ROZ_SERVER="roz.lan:9000").server == "roz.lan:9000"
    flagged = options("--key", KEY, "--server", "https://roz.example.com", ROZ_SERVER="x:1")
    assert flagged.server == "https://roz.example.com"


def test_the_key_is_the_flag_else_the_variable() -> None:
    assert options(ROZ_API_KEY=KEY).key == KEY
    assert options("--key", "roz_sk_flag", ROZ_API_KEY=KEY).key == "roz_sk_flag"


def test_the_state_directory_follows_xdg() -> None:
    assert options(ROZ_API_KEY=KEY).state_dir == Path("/home/robot/.local/state/roz-robot")
    assert options(ROZ_API_KEY=KEY, XDG_STATE_HOME="/var/lib/state").state_dir == Path(
        "/var/lib/state/roz-robot"
    )
    # A relative XDG_STATE_HOME is invalid and ignored, as the specification says.
    assert options(ROZ_API_KEY=KEY, XDG_STATE_HOME="state").state_dir == Path(
        "/home/robot/.local/state/roz-robot"
    )
    assert options("--state-dir", "/srv/r1", ROZ_API_KEY=KEY).state_dir == Path("/srv/r1")
    assert default_state_dir({}) == Path.home() / ".local" / "state" / "roz-robot"


def test_one_robot_logs_every_event_and_a_fleet_only_trouble() -> None:
    one = options(ROZ_API_KEY=KEY)
    assert (one.robots, one.environment_id, one.speed, one.log_level) == (
        None,
        "",
        0.5,
        logging.INFO,
    )
    fleet = options("--robots", "20", "--environment-id", "e1", "--speed", "2", ROZ_API_KEY=KEY)
    assert (fleet.robots, fleet.environment_id, fleet.speed, fleet.log_level) == (
        20,
        "e1",
        2.0,
        logging.WARNING,
    )
    assert options("--robots", "3", "--log-level", "DEBUG", ROZ_API_KEY=KEY).log_level == (
        logging.DEBUG
    )


def test_a_simulated_robot_runs_the_scripted_agent_unless_told_not_to() -> None:
    with_agent, without = options(ROZ_API_KEY=KEY), options("--no-agent", ROZ_API_KEY=KEY)
    assert (with_agent.agent, without.agent) == (True, False)
    (client,) = asyncio.run(_clients(with_agent))
    assert client._sessions is not None
    (client,) = asyncio.run(_clients(without))
    assert client._sessions is None


@pytest.fixture
def no_roz_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ROZ_SERVER", raising=False)
    monkeypatch.delenv("ROZ_API_KEY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.mark.usefixtures("no_roz_variables")
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "roz-robot: no API key: pass --key or set ROZ_API_KEY"),
        (
            ["--environment-id", "e1"],
            {"ROZ_API_KEY": KEY},
            "roz-robot: --environment-id goes with --robots",
        ),
        (["--speed", "0"], {"ROZ_API_KEY": KEY}, "roz-robot: --speed must be a positive number"),
        (["--speed", "nan"], {"ROZ_API_KEY": KEY}, "roz-robot: --speed must be a positive number"),
        (
            ["--server", "ftp://roz"],
            {"ROZ_API_KEY": KEY},
            "roz-robot: --server: the server must be host:port or an http(s) URL",
        ),
        (
            [],
            {"ROZ_API_KEY": KEY, "ROZ_SERVER": "https://roz.example.com/v1"},
            "roz-robot: ROZ_SERVER: the server address must not contain a path",
        ),
    ],
)
def test_impossible_requests_exit_2_with_a_message(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("usage: roz-robot")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["fly"],
        ["simulate", "--robots", "0"],
        ["simulate", "--robots", "many"],
        ["simulate", "--speed", "fast"],
        ["simulate", "--log-level", "LOUD"],
    ],
)
def test_malformed_command_lines_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: roz-robot" in capsys.readouterr().err
