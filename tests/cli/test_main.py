"""The `roz` command without a server to talk to: usage, exit codes, not being logged in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from roz_cli import __version__
from roz_cli.config import Credentials, StoredKey, load_credentials, save_credentials
from roz_cli.main import main
from roz_cli.resources import RESOURCES
from tests.support.server import free_port

SECRET = "roz_sk_" + "z" * 43


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config directory, and none of the user's own roz variables."""
    directory = tmp_path / "config"
    monkeypatch.setenv("ROZ_CONFIG_DIR", str(directory))
    monkeypatch.delenv("ROZ_SERVER", raising=False)
    monkeypatch.delenv("ROZ_API_KEY", raising=False)
    return directory


def test_python_m_roz_cli_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roz_cli", "--version"], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"roz {__version__}")


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.usefixtures("config")
def test_whoami_without_a_key_says_how_to_log_in(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROZ_SERVER", "https://roz.example.com/")
    assert main(["whoami"]) == 3
    assert capsys.readouterr().err == (
        "roz: not logged in to https://roz.example.com; run roz login\n"
    )


@pytest.mark.usefixtures("config")
@pytest.mark.parametrize(
    "argv",
    [["whoami"], ["device", "approve", "ABCD-EFGH"], ["device", "deny", "ABCD-EFGH"], ["logout"]],
)
def test_commands_that_need_a_key_fail_without_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 3
    assert "not logged in to http://localhost:8080" in capsys.readouterr().err


@pytest.mark.usefixtures("config")
@pytest.mark.parametrize("command", ["login", "logout", "whoami"])
def test_a_malformed_server_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--server", "roz.example.com"]) == 2
    assert "--server must look like https://host[:port]" in capsys.readouterr().err


@pytest.mark.usefixtures("config")
def test_an_unreachable_server_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROZ_API_KEY", SECRET)
    server = f"http://127.0.0.1:{free_port()}"
    assert main(["whoami", "--server", server]) == 5
    out, err = capsys.readouterr()
    assert err.startswith(f"roz: cannot reach {server}")
    assert err.count("\n") == 1
    assert SECRET not in out + err


def test_logout_from_an_unreachable_server_forgets_the_key_and_says_it_may_still_work(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    key = StoredKey(api_key=SECRET, key_id="k-42", key_name="laptop", key_prefix="roz_sk_zzzz")
    save_credentials(config, Credentials().with_key(server, key))
    assert main(["logout"]) == 1
    out, err = capsys.readouterr()
    assert load_credentials(config) == Credentials()
    assert f"removed the key for {server} here, but could not revoke it" in err
    assert "k-42" in err
    assert SECRET not in out + err


RESOURCE_VERBS = [
    (resource.name, verb)
    for resource in RESOURCES
    for verb in (
        "list",
        "get",
        "create",
        *(move.verb for move in resource.moves),
        *(["transition"] if resource.states else []),
        *(["watch"] if resource.watch else []),
    )
]


@pytest.mark.parametrize(("resource", "verb"), RESOURCE_VERBS)
def test_every_resource_verb_has_help_with_examples(
    resource: str, verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([resource, verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: roz {resource} {verb}" in out
    assert f"  roz {resource} {verb}" in out  # an example of itself
    assert "--output" in out
    assert "4    not found" in out  # the exit codes


def test_the_top_help_lists_the_resources_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for resource in RESOURCES:
        assert f"    {resource.name}" in out
    assert "exit codes:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hosts", "create", "--label", "novalue"], "--label takes KEY=VALUE"),
        (["commands", "create", "--params", "[1]"], "--params must be a JSON object"),
        (["tasks", "create", "--timeout", "soon"], "--timeout takes a duration"),
        (["hosts", "list", "--page-size", "0"], "--page-size must be at least 1"),
        (["hosts", "create", "--from-file", "/nonexistent/host.yaml"], "cannot read"),
    ],
)
@pytest.mark.usefixtures("config")
def test_bad_values_are_usage_errors_before_any_request(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No server listens there: a request would exit 5, not 2.
    monkeypatch.setenv("ROZ_SERVER", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ROZ_API_KEY", SECRET)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("config")
def test_a_resource_command_without_a_key_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hosts", "list"]) == 3
    assert capsys.readouterr().err == "roz: not logged in to http://localhost:8080; run roz login\n"


@pytest.mark.usefixtures("config")
def test_an_unreachable_server_exits_5_in_the_chosen_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROZ_API_KEY", SECRET)
    server = f"http://127.0.0.1:{free_port()}"
    assert main(["tasks", "get", "x", "--server", server, "-o", "json"]) == 5
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["message"].startswith(f"cannot reach {server}")
