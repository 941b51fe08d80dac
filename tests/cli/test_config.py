"""The credentials file: where it lives, its modes, its atomic replacement, and precedence."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roz_cli.config import (
    DEFAULT_SERVER,
    ConfigError,
    Credentials,
    StoredKey,
    config_dir,
    load_credentials,
    normalise_server_url,
    resolve_api_key,
    resolve_server,
    save_credentials,
)
from roz_cli.errors import UsageError

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")

KEY = StoredKey(
    api_key="roz_sk_" + "a" * 43,
    key_id="k-1",
    key_name="roz CLI on laptop",
    key_prefix="roz_sk_aaaa",
    tenant_id="t-1",
    tenant_name="acme",
    scopes=("tasks:read", "tasks:write"),
    saved_at="2025-01-01T00:00:00Z",
)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """0022, under which a plainly created file would be world-readable (0644)."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("http://localhost:8080/", "http://localhost:8080"),
        ("HTTPS://Roz.Example.COM", "https://roz.example.com"),
        ("  http://roz.example.com:9000//  ", "http://roz.example.com:9000"),
        ("https://example.com/roz/", "https://example.com/roz"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
    ],
)
def test_server_urls_are_normalised(given: str, normal: str) -> None:
    assert normalise_server_url(given) == normal


@pytest.mark.parametrize(
    "bad",
    [
        "localhost:8080",
        "roz.example.com",
        "ftp://roz.example.com",
        "http://",
        "http://user:secret@roz.example.com",
        "http://roz.example.com/?x=1",
        "http://roz.example.com:99999",
        "http://roz.example.com:port",
    ],
)
def test_malformed_server_urls_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="--server"):
        normalise_server_url(bad, source="--server")


def test_no_file_means_no_credentials(tmp_path: Path) -> None:
    assert load_credentials(tmp_path / "absent") == Credentials()


def test_credentials_survive_a_round_trip(tmp_path: Path) -> None:
    credentials = Credentials().with_key("http://localhost:8080", KEY)
    save_credentials(tmp_path, credentials)
    assert load_credentials(tmp_path) == credentials


def test_the_file_has_the_documented_structure(tmp_path: Path) -> None:
    path = save_credentials(tmp_path, Credentials().with_key("https://roz.example.com", KEY))
    assert json.loads(path.read_text()) == {
        "default_server": "https://roz.example.com",
        "servers": {
            "https://roz.example.com": {
                "api_key": KEY.api_key,
                "key_id": "k-1",
                "key_name": "roz CLI on laptop",
                "key_prefix": "roz_sk_aaaa",
                "tenant_id": "t-1",
                "tenant_name": "acme",
                "scopes": ["tasks:read", "tasks:write"],
                "saved_at": "2025-01-01T00:00:00Z",
            }
        },
    }


@posix_only
@pytest.mark.usefixtures("usual_umask")
def test_a_new_directory_is_0700_and_the_file_0600(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "roz"
    path = save_credentials(directory, Credentials().with_key(DEFAULT_SERVER, KEY))
    assert path == directory / "credentials.json"
    assert mode(directory) == 0o700
    assert mode(path) == 0o600


@posix_only
@pytest.mark.usefixtures("usual_umask")
def test_the_secret_is_never_readable_by_others_even_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, str]] = []
    real_replace = os.replace

    def spying_replace(source: str | Path, target: str | Path) -> None:
        seen.append((Path(source).name, mode(Path(source)), Path(source).read_text()))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spying_replace)
    save_credentials(tmp_path, Credentials().with_key(DEFAULT_SERVER, KEY))
    [(name, temporary_mode, content)] = seen
    assert name != "credentials.json"
    assert temporary_mode == 0o600
    assert KEY.api_key in content  # complete before it gets its name


@posix_only
@pytest.mark.usefixtures("usual_umask")
def test_rewriting_a_too_open_file_leaves_it_0600(tmp_path: Path) -> None:
    path = save_credentials(tmp_path, Credentials().with_key(DEFAULT_SERVER, KEY))
    path.chmod(0o644)
    save_credentials(tmp_path, load_credentials(tmp_path).without_key(DEFAULT_SERVER))
    assert mode(path) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = Credentials().with_key(DEFAULT_SERVER, KEY)
    path = save_credentials(tmp_path, old)
    before = path.read_bytes()

    def failing_replace(source: str | Path, target: str | Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(ConfigError, match="No space left on device"):
        save_credentials(tmp_path, Credentials())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials.json"]


def test_a_save_leaves_only_the_credentials_file(tmp_path: Path) -> None:
    save_credentials(tmp_path, Credentials().with_key(DEFAULT_SERVER, KEY))
    save_credentials(tmp_path, Credentials().with_key("https://roz.example.com", KEY))
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_a_damaged_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"credentials\.json is damaged"):
        load_credentials(tmp_path)


def test_an_entry_without_a_key_is_damage(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text('{"servers": {"http://h": {"key_id": "x"}}}')
    with pytest.raises(ConfigError, match="no api_key"):
        load_credentials(tmp_path)


def test_logging_in_makes_the_server_the_default_and_logging_out_forgets_it() -> None:
    both = Credentials().with_key("https://a.example", KEY).with_key("https://b.example", KEY)
    assert both.default_server == "https://b.example"
    assert set(both.servers) == {"https://a.example", "https://b.example"}
    after = both.without_key("https://b.example")
    assert after.default_server is None
    assert set(after.servers) == {"https://a.example"}
    assert both.without_key("https://a.example").default_server == "https://b.example"


def test_the_config_directory_comes_from_roz_config_dir(tmp_path: Path) -> None:
    assert config_dir({"ROZ_CONFIG_DIR": str(tmp_path)}) == tmp_path


@pytest.mark.skipif(sys.platform != "linux", reason="XDG applies on Linux")
def test_the_config_directory_defaults_to_the_users_xdg_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_dir({}) == tmp_path / "roz"


STORED = Credentials().with_key("https://stored.example", KEY)


def test_the_server_flag_wins_over_everything() -> None:
    env = {"ROZ_SERVER": "https://env.example"}
    assert resolve_server("https://flag.example/", env, STORED) == "https://flag.example"


def test_roz_server_wins_over_the_stored_default() -> None:
    env = {"ROZ_SERVER": "HTTPS://Env.Example/"}
    assert resolve_server(None, env, STORED) == "https://env.example"


def test_a_malformed_roz_server_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError, match="ROZ_SERVER"):
        resolve_server(None, {"ROZ_SERVER": "env.example"}, STORED)


def test_the_stored_default_then_localhost() -> None:
    assert resolve_server(None, {}, STORED) == "https://stored.example"
    assert resolve_server(None, {}, Credentials()) == "http://localhost:8080"


def test_roz_api_key_wins_over_the_stored_key() -> None:
    env = {"ROZ_API_KEY": "roz_sk_from_env"}
    assert resolve_api_key("https://stored.example", env, STORED) == "roz_sk_from_env"
    assert resolve_api_key("https://stored.example", {}, STORED) == KEY.api_key
    assert resolve_api_key("https://other.example", {}, STORED) is None
