"""Client-logic tests of the device login loop: what the CLI decides on each answer.

These drive the loop through httpx.MockTransport with scripted answers in the shapes the API
documents; they test the client's decisions only (how long it waits, when it stops, what it
says). That the server really answers this way is tests/cli/test_login_live.py's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs

import httpx
import pytest

from roz_cli import __version__
from roz_cli.client import ApiError, RozClient, http_client, parse_retry_after
from roz_cli.login import DENIED, EXPIRED, LoginFailed, device_login

SERVER = "http://roz.test"
SECRET = "roz_sk_" + "s" * 43

Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


def device_code(**overrides: object) -> httpx.Response:
    body = {
        "device_code": "dc-1",
        "user_code": "ABCD-EFGH",
        "verification_uri": f"{SERVER}/device",
        "verification_uri_complete": f"{SERVER}/device?user_code=ABCD-EFGH",
        "expires_in": 900,
        "interval": 5,
    }
    body.update(overrides)
    return httpx.Response(200, json=body)


def oauth_error(error: str, status: int = 400, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": error, "error_description": f"about {error}"}, headers=headers
    )


def token() -> httpx.Response:
    return httpx.Response(200, json={"access_token": SECRET, "token_type": "Bearer", "scope": ""})


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


@dataclass
class Script:
    """Scripted answers to the token endpoint, and a clock that only sleeping advances."""

    code: httpx.Response = field(default_factory=device_code)
    answers: list[Answer] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    now: float = 1000.0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/api/v1/device/code":
            return self.code
        assert request.url.path == "/api/v1/device/token"
        answer = self.answers.pop(0)
        return answer if isinstance(answer, httpx.Response) else answer(request)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def login(self, scopes: tuple[str, ...] = (), opened: list[str] | None = None) -> str:
        def open_browser(url: str) -> bool:
            assert opened is not None
            opened.append(url)
            return True

        with http_client(SERVER, transport=httpx.MockTransport(self.handle)) as http:
            return device_login(
                RozClient(http, SERVER),
                client_name="roz CLI on laptop",
                scopes=scopes,
                say=self.said.append,
                open_browser=open_browser if opened is not None else None,
                sleep=self.sleep,
                clock=lambda: self.now,
            )

    @property
    def token_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/api/v1/device/token"]


@pytest.fixture
def script() -> Script:
    return Script()


def test_pending_keeps_polling_at_the_interval_until_the_key_comes(script: Script) -> None:
    pending = oauth_error("authorization_pending")
    script.answers = [pending, pending, pending, token()]
    assert script.login() == SECRET
    assert script.sleeps == [5, 5, 5, 5]


def test_each_poll_is_the_rfc_8628_token_request(script: Script) -> None:
    script.answers = [oauth_error("authorization_pending"), token()]
    script.login()
    for request in script.token_requests:
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert parse_qs(request.content.decode()) == {
            "grant_type": ["urn:ietf:params:oauth:grant-type:device_code"],
            "device_code": ["dc-1"],
            "client_id": ["roz-cli"],
        }
        assert "authorization" not in request.headers


def test_slow_down_adds_five_seconds_to_every_later_poll(script: Script) -> None:
    pending = oauth_error("authorization_pending")
    script.answers = [pending, oauth_error("slow_down"), pending, oauth_error("slow_down")]
    script.answers += [pending, pending, token()]
    script.login()
    assert script.sleeps == [5, 5, 10, 10, 15, 15, 15]


def test_a_denied_login_stops_with_a_message(script: Script) -> None:
    script.answers = [oauth_error("authorization_pending"), oauth_error("access_denied")]
    with pytest.raises(LoginFailed) as failure:
        script.login()
    assert failure.value.message == DENIED == "the login was denied"
    assert len(script.token_requests) == 2


def test_an_expired_code_stops_with_a_message(script: Script) -> None:
    script.answers = [oauth_error("expired_token")]
    with pytest.raises(LoginFailed) as failure:
        script.login()
    assert failure.value.message == EXPIRED
    assert "run roz login again" in EXPIRED


@pytest.mark.parametrize("error", ["invalid_grant", "invalid_request", "unsupported_grant_type"])
def test_other_refusals_stop_and_name_the_error(script: Script, error: str) -> None:
    script.answers = [oauth_error(error)]
    with pytest.raises(LoginFailed, match=f"refused the login \\({error}\\): about {error}"):
        script.login()
    assert len(script.token_requests) == 1


def test_the_loop_gives_up_when_the_code_expires_by_the_clock(script: Script) -> None:
    script.code = device_code(expires_in=12, interval=5)
    script.answers = [oauth_error("authorization_pending")] * 10
    with pytest.raises(LoginFailed, match="expired"):
        script.login()
    # It waits out the interval twice, then only the two seconds left, and polls each time.
    assert script.sleeps == [5, 5, 2]
    assert len(script.token_requests) == 3


def test_rate_limiting_waits_as_long_as_retry_after_says(script: Script) -> None:
    script.answers = [
        oauth_error("authorization_pending"),
        httpx.Response(
            429, json={"code": 8, "message": "too many requests"}, headers={"Retry-After": "17"}
        ),
        oauth_error("authorization_pending"),
        token(),
    ]
    assert script.login() == SECRET
    assert script.sleeps == [5, 5, 17, 5]
    assert any("429" in line and "17 s" in line for line in script.said)


def test_a_retry_after_shorter_than_the_interval_does_not_speed_polling_up(script: Script) -> None:
    script.answers = [oauth_error("slow_down", status=429, **{"Retry-After": "1"}), token()]
    script.login()
    assert script.sleeps == [5, 10]


def test_network_errors_are_retried_with_backoff(script: Script) -> None:
    script.answers = [unreachable, unreachable, unreachable, oauth_error("authorization_pending")]
    script.answers += [token()]
    assert script.login() == SECRET
    assert script.sleeps == [5, 5, 10, 20, 5]
    retries = [line for line in script.said if "trying again" in line]
    assert len(retries) == 3
    assert "cannot reach http://roz.test" in retries[0]


def test_server_errors_are_retried_and_the_backoff_is_capped(script: Script) -> None:
    bad_gateway = httpx.Response(502, text="<html>bad gateway</html>")
    script.answers = [*(bad_gateway for _ in range(6)), token()]
    assert script.login() == SECRET
    assert script.sleeps == [5, 5, 10, 20, 40, 60, 60]
    assert "the server answered 502 (HTTP 502 Bad Gateway)" in script.said[-1]


def test_the_code_request_names_the_client_and_scopes(script: Script) -> None:
    script.answers = [token()]
    script.login(scopes=("tasks:read", "tasks:write"))
    request = script.requests[0]
    assert request.method == "POST"
    assert request.headers["user-agent"] == f"roz-cli/{__version__}"
    assert httpx.Response(200, content=request.content).json() == {
        "client_name": "roz CLI on laptop",
        "client_id": "roz-cli",
        "scope": "tasks:read tasks:write",
    }


def test_without_scopes_the_request_leaves_scope_to_the_server(script: Script) -> None:
    script.answers = [token()]
    script.login()
    assert "scope" not in httpx.Response(200, content=script.requests[0].content).json()


def test_the_user_is_told_where_to_enter_which_code(script: Script) -> None:
    script.answers = [token()]
    opened: list[str] = []
    script.login(opened=opened)
    assert script.said[0] == "Open http://roz.test/device and enter the code ABCD-EFGH"
    assert "http://roz.test/device?user_code=ABCD-EFGH" in script.said[1]
    assert "15 minutes" in script.said[-1]
    assert opened == ["http://roz.test/device?user_code=ABCD-EFGH"]
    assert all(SECRET not in line for line in script.said)


def test_a_refused_code_request_shows_the_servers_description(script: Script) -> None:
    script.code = oauth_error("invalid_scope")
    with pytest.raises(ApiError, match="about invalid_scope") as failure:
        script.login()
    assert failure.value.status == 400
    assert failure.value.error == "invalid_scope"


def test_a_server_without_device_login_says_so(script: Script) -> None:
    script.code = httpx.Response(404, json={"code": 5, "message": "no such route"})
    with pytest.raises(ApiError, match=r"http://roz\.test does not offer device login"):
        script.login()


def test_a_google_rpc_status_error_shows_its_message() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": 16, "message": "the API key was revoked"})

    with (
        http_client(SERVER, transport=httpx.MockTransport(handle)) as http,
        pytest.raises(ApiError, match=r"^the API key was revoked$") as failure,
    ):
        RozClient(http, SERVER).get_caller(SECRET)
    assert failure.value.status == 401
    assert failure.value.error is None


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30") == 30
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:42 GMT", now=now) == 42
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_redirect_is_not_followed_but_named() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "https://roz.test/api/v1/caller"})

    with (
        http_client(SERVER, transport=httpx.MockTransport(handle)) as http,
        pytest.raises(ApiError, match=r"redirects to https://roz\.test/api/v1/caller") as failure,
    ):
        RozClient(http, SERVER).get_caller(SECRET)
    assert failure.value.status == 301
