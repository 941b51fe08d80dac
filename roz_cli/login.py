"""The device login (RFC 8628) as the CLI runs it: show the code, then poll as the server says.

Pure decisions over a RozClient: the clock, the sleep and the output are parameters, so the
client-logic tests run the loop without waiting, and the real command waits for real.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from roz_cli.client import ApiError, DeviceCode, RozClient, ServerUnreachable
from roz_cli.errors import CliError

AUTHORIZATION_PENDING = "authorization_pending"
SLOW_DOWN = "slow_down"
ACCESS_DENIED = "access_denied"
EXPIRED_TOKEN = "expired_token"  # noqa: S105  # an OAuth error code, not a secret
# RFC 8628 §3.5: on slow_down the interval grows by 5 seconds for all later polls.
SLOW_DOWN_SECONDS = 5
# Transient failures (network, 5xx, 429 without Retry-After) back off from the interval to this.
MAX_BACKOFF_SECONDS = 60.0

DENIED = "the login was denied"
EXPIRED = "the code expired before it was approved; run roz login again"

Say = Callable[[str], None]
Sleep = Callable[[float], None]
Clock = Callable[[], float]
OpenBrowser = Callable[[str], bool]


class LoginFailed(CliError):
    """The login ended without a key: denied, expired, or refused by the server."""


def device_login(
    client: RozClient,
    *,
    client_name: str,
    scopes: Sequence[str],
    say: Say,
    open_browser: OpenBrowser | None = None,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
) -> str:
    """Runs the whole login and returns the new API key (the secret; never print it)."""
    code = client.request_device_code(client_name, scopes)
    say(f"Open {code.verification_uri} and enter the code {code.user_code}")
    if code.verification_uri_complete:
        say(f"  (or open {code.verification_uri_complete})")
    if open_browser is not None and open_browser(
        code.verification_uri_complete or code.verification_uri
    ):
        say("Opened the page in your browser.")
    say(f"Waiting for approval; the code expires in {_duration(code.expires_in)}. Ctrl-C stops.")
    return poll_for_api_key(client, code, say=say, sleep=sleep, clock=clock)


def poll_for_api_key(
    client: RozClient, code: DeviceCode, *, say: Say, sleep: Sleep, clock: Clock
) -> str:
    """Polls the token endpoint until the user decides or the code expires."""
    deadline = clock() + code.expires_in
    interval = float(code.interval)
    wait = interval
    failures = 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise LoginFailed(EXPIRED)
        sleep(min(wait, remaining))
        try:
            return client.request_device_token(code.device_code)
        except ServerUnreachable as exc:
            failures += 1
            wait = _backoff(interval, failures)
            say(f"{exc.message}; trying again in {wait:g} s")
        except ApiError as exc:
            if exc.error == SLOW_DOWN:
                interval += SLOW_DOWN_SECONDS
            if exc.error in (AUTHORIZATION_PENDING, SLOW_DOWN):
                failures = 0
                wait = max(interval, exc.retry_after or 0.0)
            elif exc.transient:
                failures += 1
                wait = (
                    max(interval, exc.retry_after)
                    if exc.retry_after is not None
                    else _backoff(interval, failures)
                )
                say(f"the server answered {exc.status} ({exc.message}); trying again in {wait:g} s")
            else:
                raise LoginFailed(_refusal(exc)) from None


def _refusal(exc: ApiError) -> str:
    if exc.error == ACCESS_DENIED:
        return DENIED
    if exc.error == EXPIRED_TOKEN:
        return EXPIRED
    reason = exc.error or f"HTTP {exc.status}"
    if exc.message == reason:
        return f"the server refused the login: {reason}"
    return f"the server refused the login ({reason}): {exc.message}"


def _backoff(interval: float, failures: int) -> float:
    """The interval, then 2, 4, 8 … times it, up to a minute (or the interval if longer)."""
    return min(interval * 2.0 ** min(failures - 1, 16), max(MAX_BACKOFF_SECONDS, interval))


def _duration(seconds: int) -> str:
    if seconds >= 120:
        return f"{round(seconds / 60)} minutes"
    return f"{seconds} seconds"
