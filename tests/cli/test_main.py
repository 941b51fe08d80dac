"""The `roz` command without a server to talk to: usage, exit codes, not being logged in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roz_cli import __version__
from roz_cli.config import Credentials, StoredKey, load_credentials, save_credentials
from roz_cli.main import main
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
    assert main(["whoami"]) == 1
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
    assert main(argv) == 1
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
    assert main(["whoami", "--server", server]) == 1
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
