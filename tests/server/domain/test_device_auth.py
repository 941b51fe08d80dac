"""The device flow's pure rules: what a poll answers, what an approval grants, guess limits."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.domain.device_auth import (
    USER_CODE_ALPHABET,
    DeviceFlowError,
    GuessLimiter,
    OAuthError,
    PolledAuthorization,
    PollOutcome,
    State,
    check_grant_type,
    decide_poll,
    format_user_code,
    granted_scopes,
    key_name,
    mint_user_code,
    validate_device_request,
)
from server.domain.errors import InvalidArgument, PermissionDenied, ResourceExhausted

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PENDING = PolledAuthorization(
    id=uuid.uuid4(),
    state=State.PENDING,
    expire_time=NOW + timedelta(minutes=15),
    interval_seconds=5,
    last_poll_time=None,
    client_name="cli",
    tenant_id=None,
    approver_key_id=None,
    approver_usable=False,
    granted_scopes=frozenset(),
)
APPROVED = dataclasses.replace(
    PENDING,
    state=State.APPROVED,
    tenant_id=uuid.uuid4(),
    approver_key_id=uuid.uuid4(),
    approver_usable=True,
    granted_scopes=frozenset({"tasks:read"}),
)


def _error(found: PolledAuthorization | None, now: datetime = NOW) -> OAuthError:
    decision = decide_poll(found, now)
    assert decision.outcome is PollOutcome.ANSWER
    assert decision.error is not None
    return decision.error.error


def test_each_state_answers_as_rfc_8628_says() -> None:
    assert _error(None) is OAuthError.INVALID_GRANT
    assert _error(dataclasses.replace(APPROVED, state=State.CONSUMED)) is OAuthError.INVALID_GRANT
    assert _error(PENDING) is OAuthError.AUTHORIZATION_PENDING
    assert _error(dataclasses.replace(PENDING, state=State.DENIED)) is OAuthError.ACCESS_DENIED
    assert _error(PENDING, PENDING.expire_time) is OAuthError.EXPIRED_TOKEN
    assert _error(APPROVED, APPROVED.expire_time) is OAuthError.EXPIRED_TOKEN
    assert decide_poll(APPROVED, NOW).outcome is PollOutcome.GRANT
    revoked = dataclasses.replace(APPROVED, approver_usable=False)
    assert _error(revoked) is OAuthError.ACCESS_DENIED


def test_a_poll_inside_the_interval_slows_down_by_five_seconds() -> None:
    polled = dataclasses.replace(PENDING, last_poll_time=NOW - timedelta(seconds=4.9))
    decision = decide_poll(polled, NOW)
    assert decision.error is not None
    assert decision.error.error is OAuthError.SLOW_DOWN
    assert decision.interval_seconds == 10
    assert decision.last_poll_time == NOW
    on_time = dataclasses.replace(PENDING, last_poll_time=NOW - timedelta(seconds=5))
    assert _error(on_time) is OAuthError.AUTHORIZATION_PENDING
    # An approved login is collected at once, however fast the poll.
    assert decide_poll(dataclasses.replace(APPROVED, last_poll_time=NOW), NOW).outcome is (
        PollOutcome.GRANT
    )


def test_an_approval_defaults_to_the_request_then_to_the_approver() -> None:
    admin = frozenset({"admin"})
    assert granted_scopes(frozenset({"tasks:read"}), admin, None) == {"tasks:read"}
    assert granted_scopes(frozenset(), frozenset({"hosts:write"}), None) == {"hosts:write"}
    assert granted_scopes(frozenset({"tasks:read", "hosts:read"}), admin, ["hosts:read"]) == {
        "hosts:read"
    }


def test_an_approval_never_widens_the_request_nor_exceeds_the_approver() -> None:
    with pytest.raises(InvalidArgument):
        granted_scopes(frozenset({"tasks:read"}), frozenset({"admin"}), ["tasks:write"])
    with pytest.raises(PermissionDenied):
        granted_scopes(frozenset({"tasks:write"}), frozenset({"tasks:read"}), None)
    with pytest.raises(InvalidArgument):
        granted_scopes(frozenset(), frozenset({"admin"}), ["nonsense"])


def test_requests_are_validated_as_oauth_errors() -> None:
    assert validate_device_request("tasks:read  hosts:read", " my  cli ", "").scopes == {
        "tasks:read",
        "hosts:read",
    }
    assert validate_device_request("", " my  cli ", "").client_name == "my cli"
    with pytest.raises(DeviceFlowError) as unknown:
        validate_device_request("tasks:read fly", "", "")
    assert unknown.value.error is OAuthError.INVALID_SCOPE
    with pytest.raises(DeviceFlowError) as control:
        validate_device_request("", "bad\x00name", "")
    assert control.value.error is OAuthError.INVALID_REQUEST
    with pytest.raises(DeviceFlowError) as grant:
        check_grant_type("password")
    assert grant.value.error is OAuthError.UNSUPPORTED_GRANT_TYPE
    check_grant_type("")


def test_user_codes_use_the_rfc_alphabet_and_show_with_a_dash() -> None:
    code = mint_user_code()
    assert len(code) == 8
    assert set(code) <= set(USER_CODE_ALPHABET)
    assert format_user_code("BCDFGHJK") == "BCDF-GHJK"


def test_key_names_carry_the_device_and_the_date_within_the_name_limit() -> None:
    assert key_name("roz CLI on lab", NOW) == "roz CLI on lab (device login 2026-12-01)"
    assert key_name("", NOW) == "a device (device login 2026-12-01)"
    assert len(key_name("x" * 200, NOW)) == 128


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_guesses_are_limited_per_client_and_overall_over_a_sliding_window() -> None:
    clock = _Clock()
    limiter = GuessLimiter(per_client=2, overall=3, window_seconds=60, clock=clock)
    limiter.failed(["a"])
    limiter.failed(["a"])
    with pytest.raises(ResourceExhausted) as limited:
        limiter.check(["a"])
    assert limited.value.retry_after_seconds == 60
    limiter.check(["b"])
    limiter.failed(["b"])
    with pytest.raises(ResourceExhausted):
        limiter.check(["c"])  # three wrong guesses in all
    clock.now += 60
    limiter.check(["a"])
    limiter.check(["c"])
