"""`roz login`, `whoami`, `logout` and `device` as a user runs them, against a live roz server.

The CLI runs as its own process (the installed `roz` script) with a private config directory;
the approver is a real API client (httpx with a tenant's admin key, or `roz device`). The server
polls at one-second intervals so a login takes a second or two of real waiting.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (  # noqa: F401  (the fixtures)
    Roz,
    RozFactory,
    postgres,
    roz_factory,
)
from tests.e2e.test_device_page import chromium, on_page  # noqa: F401  (the fixture)

USER_CODE = re.compile(r"enter the code (\S+)")
NAME = "roz CLI in the live test"


def roz_command() -> list[str]:
    """The installed console script when there is one (as users run it), else `-m roz_cli`."""
    script = Path(sys.executable).with_name("roz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "roz_cli"]


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory) -> Roz:  # noqa: F811
    return roz_factory(
        device_poll_interval_seconds=1, rate_limit_rps=100_000.0, rate_limit_burst=100_000
    )


@pytest.fixture
def admin(server: Roz) -> str:
    """A fresh tenant's admin key, so keys and guess limits never leak between tests."""
    return server.new_tenant("cli")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "roz-config"


def environment(config: Path, **extra: str) -> dict[str, str]:
    """The user's environment without roz's variables or a display, plus a private config."""
    dropped = {"ROZ_SERVER", "ROZ_API_KEY", "ROZ_CONFIG_DIR", "DISPLAY", "WAYLAND_DISPLAY"}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    return {**env, "ROZ_CONFIG_DIR": str(config), **extra}


def roz(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*roz_command(), *args],
        env=environment(config, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class LoginProcess:
    """`roz login` running in the background, its stderr read line by line as it comes."""

    def __init__(self, config: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [*roz_command(), "login", "--no-browser", *args],
            env=environment(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def user_code(self) -> str:
        while (line := self._lines.get(timeout=30)) is not None:
            if match := USER_CODE.search(line):
                return match.group(1)
        pytest.fail(f"roz login ended without showing a code: {''.join(self._stderr)}")

    def finish(self) -> tuple[int, str, str]:
        """Waits for the exit; returns the exit code, stdout and stderr."""
        assert self.process.stdout is not None
        code = self.process.wait(timeout=60)  # stdout is a few lines: the pipe never fills
        stdout = self.process.stdout.read()
        self._reader.join(10)
        return code, stdout, "".join(self._stderr)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_login(config: Path) -> Iterator[Any]:
    started: list[LoginProcess] = []

    def start(*args: str) -> LoginProcess:
        started.append(LoginProcess(config, *args))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def post(server: Roz, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.rest(key) as http:
        return http.post(path, json=body)


def caller(server: Roz, key: str) -> httpx.Response:
    with server.rest(key) as http:
        return http.get("/api/v1/caller")


def stored(config: Path) -> dict[str, Any]:
    return json.loads((config / "credentials.json").read_text())  # type: ignore[no-any-return]


@dataclass
class Login:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def logged_in(server: Roz, admin: str, start_login: Any) -> Login:
    """`roz login` on the live server, approved through the API by the tenant's admin."""
    login = start_login("--server", server.url + "/", "--name", NAME, "--scope", "tasks:read")
    code = login.user_code()
    approved = post(server, admin, "/api/v1/device/approve", {"user_code": code})
    assert approved.status_code == 200, approved.text
    return Login(*login.finish())


def test_login_stores_a_working_key_that_only_the_user_can_read(
    server: Roz, admin: str, config: Path, logged_in: Login
) -> None:
    assert logged_in.exit_code == 0, logged_in.stderr
    credentials = config / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    document = stored(config)
    assert document["default_server"] == server.url
    entry = document["servers"][server.url]
    answer = caller(server, entry["api_key"])
    assert answer.status_code == 200, answer.text
    key = answer.json()["api_key"]
    assert (key["id"], key["name"], key["scopes"]) == (
        entry["key_id"],
        entry["key_name"],
        ["tasks:read"],
    )
    assert key["name"].startswith(NAME)  # the server may add to the name the login asked for
    assert answer.json()["tenant_id"] == caller(server, admin).json()["tenant_id"]


def test_login_says_where_and_who_but_never_shows_the_key(
    server: Roz, admin: str, config: Path, logged_in: Login
) -> None:
    tenant = caller(server, admin).json()["tenant_name"]
    entry = stored(config)["servers"][server.url]
    name, prefix = entry["key_name"], entry["key_prefix"]
    assert logged_in.stdout == (
        f"Logged in to {server.url} as key {name} ({prefix}…) of tenant {tenant}\n"
    )
    assert f"Open {server.url}/device and enter the code " in logged_in.stderr
    assert f"{server.url}/device?user_code=" in logged_in.stderr
    assert entry["api_key"] not in logged_in.stdout + logged_in.stderr


def test_whoami_shows_the_stored_key(server: Roz, config: Path, logged_in: Login) -> None:
    entry = stored(config)["servers"][server.url]
    text = roz(config, "whoami")  # the default server is the one logged in to
    assert text.returncode == 0, text.stderr
    assert f"Server:   {server.url}\n" in text.stdout
    assert (
        f"Key:      {entry['key_name']} (id {entry['key_id']}, {entry['key_prefix']}…)\n"
        in text.stdout
    )
    assert "Scopes:   tasks:read\n" in text.stdout
    assert entry["api_key"] not in text.stdout + text.stderr

    as_json = roz(config, "whoami", "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["server"] == server.url
    assert document["key_source"] == "credentials file"
    assert document["tenant_id"] == entry["tenant_id"]
    assert document["api_key"]["id"] == entry["key_id"]
    assert document["api_key"]["scopes"] == ["tasks:read"]


def test_logout_revokes_the_key_and_forgets_it(server: Roz, config: Path, logged_in: Login) -> None:
    entry = stored(config)["servers"][server.url]
    key = entry["api_key"]
    result = roz(config, "logout")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"Logged out of {server.url}: revoked key {entry['key_name']} ({entry['key_prefix']}…)\n"
    )
    assert caller(server, key).status_code == 401
    assert stored(config) == {"default_server": None, "servers": {}}
    after = roz(config, "whoami", "--server", server.url)
    assert (after.returncode, after.stderr) == (
        3,
        f"roz: not logged in to {server.url}; run roz login\n",
    )


def test_logout_of_an_already_revoked_key_still_forgets_it(
    server: Roz, config: Path, logged_in: Login
) -> None:
    key = stored(config)["servers"][server.url]["api_key"]
    with server.rest(key) as http:
        assert http.delete("/api/v1/caller/api-key").status_code == 204
    result = roz(config, "logout", "--server", server.url)
    assert result.returncode == 0, result.stderr
    assert "no longer accepted" in result.stdout
    assert stored(config)["servers"] == {}


def test_a_denied_login_exits_1_and_says_so(
    server: Roz, admin: str, config: Path, start_login: Any
) -> None:
    login = start_login("--server", server.url)
    denied = post(server, admin, "/api/v1/device/deny", {"user_code": login.user_code()})
    assert denied.status_code == 200, denied.text
    exit_code, stdout, stderr = login.finish()
    assert exit_code == 1
    assert stderr.endswith("roz: the login was denied\n")
    assert stdout == ""
    assert not (config / "credentials.json").exists()


def test_roz_device_approve_grants_the_scopes_asked_for(
    server: Roz, admin: str, config: Path, tmp_path: Path, start_login: Any
) -> None:
    login = start_login("--server", server.url, "--scope", "tasks:read hosts:read")
    code = login.user_code()
    approver = roz(
        tmp_path / "approver",
        "device",
        "approve",
        code.lower(),
        "--server",
        server.url,
        "--scope",
        "tasks:read",
        ROZ_API_KEY=admin,
    )
    assert approver.returncode == 0, approver.stderr
    assert approver.stdout == f"Approved {code} on {server.url} with scopes tasks:read\n"
    exit_code, _, stderr = login.finish()
    assert exit_code == 0, stderr
    key = stored(config)["servers"][server.url]
    assert key["scopes"] == ["tasks:read"]
    assert caller(server, key["api_key"]).json()["api_key"]["scopes"] == ["tasks:read"]


def test_roz_device_deny_ends_the_login(
    server: Roz, admin: str, tmp_path: Path, start_login: Any
) -> None:
    login = start_login("--server", server.url)
    code = login.user_code()
    denier = roz(
        tmp_path / "approver", "device", "deny", code, "--server", server.url, ROZ_API_KEY=admin
    )
    assert (denier.returncode, denier.stdout) == (0, f"Denied {code} on {server.url}\n")
    exit_code, _, stderr = login.finish()
    assert (exit_code, stderr.splitlines()[-1]) == (1, "roz: the login was denied")


def test_approving_an_unknown_code_shows_the_servers_message(
    server: Roz, admin: str, tmp_path: Path
) -> None:
    result = roz(
        tmp_path / "approver",
        "device",
        "approve",
        "BCDF-GHJK",
        "--server",
        server.url,
        ROZ_API_KEY=admin,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("roz: could not approve BCDF-GHJK: ")
    assert len(result.stderr.splitlines()) == 1


@pytest.fixture
def sigint_not_ignored() -> Iterator[None]:
    """Children inherit an ignored SIGINT (a shell ignores it for what it starts in the
    background, e.g. a CI run under `&`), and Python then leaves it ignored: Ctrl-C could not be
    tried. A handler here is reset to the default in the child at exec."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_not_ignored")
def test_ctrl_c_stops_a_waiting_login_with_130(server: Roz, start_login: Any) -> None:
    login = start_login("--server", server.url)
    login.user_code()
    login.process.send_signal(signal.SIGINT)  # as Ctrl-C sends it
    exit_code, stdout, stderr = login.finish()
    assert (exit_code, stdout) == (130, "")
    assert stderr.endswith("roz: interrupted\n")
    assert "Traceback" not in stderr


def test_roz_login_is_approved_in_a_real_browser(
    server: Roz,
    admin: str,
    config: Path,
    start_login: Any,
    chromium: Any,  # noqa: F811
) -> None:
    """The whole issue in one test: the CLI waits, a person approves in Chromium, the CLI's own
    poll collects the key."""
    login = start_login("--server", server.url, "--name", "browser-approved CLI")
    code = login.user_code()
    chromium.get(f"{server.url}/device?user_code={code}")
    chromium.find_element("id", "api_key").send_keys(admin)
    chromium.find_element("css selector", "form[action='/device/session'] button").click()
    on_page(chromium, "browser-approved CLI")
    chromium.find_element("css selector", "button[value='approve']").click()
    on_page(chromium, "Approved: the device now has access.")

    exit_code, stdout, stderr = login.finish()
    assert exit_code == 0, stderr
    assert "Logged in to" in stdout
    entry = stored(config)["servers"][server.url]
    assert caller(server, entry["api_key"]).status_code == 200
