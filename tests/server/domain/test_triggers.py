"""Triggers' rules without I/O: Standard Webhooks verification (the specification's test vector,
tampering, skew, rotation), what events match, and what a valid trigger is."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.domain.errors import InvalidArgument, Unauthenticated
from server.domain.schedules import Schedule
from server.domain.triggers import (
    WEBHOOK_SIGNATURE_INVALID,
    EventCondition,
    EventDraft,
    EventType,
    TriggerDraft,
    TriggerEvent,
    TriggerKind,
    check_overlap,
    new_webhook_secret,
    verify_delivery,
)

# The Standard Webhooks specification's published test vector.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SIGNED_AT = datetime.fromtimestamp(STAMP, tz=UTC)


def headers(
    signature: str = SIGNATURE, stamp: str = str(STAMP), msg_id: str = MSG_ID
) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}


def refusal(body: bytes, given: dict[str, str], secrets: list[str], now: datetime) -> str:
    with pytest.raises(Unauthenticated) as refused:
        verify_delivery(body, given, secrets, now)
    assert refused.value.reason == WEBHOOK_SIGNATURE_INVALID
    return refused.value.message


def test_the_specifications_test_vector_verifies() -> None:
    delivery = verify_delivery(BODY, headers(), [SECRET], SIGNED_AT + timedelta(seconds=10))
    assert (delivery.id, delivery.timestamp) == (MSG_ID, SIGNED_AT)


def test_any_of_several_offered_signatures_may_match_and_any_current_secret() -> None:
    other = new_webhook_secret()
    offered = f"v1,{base64.b64encode(b'x' * 32).decode()} {SIGNATURE}"
    assert verify_delivery(BODY, headers(offered), [other, SECRET], SIGNED_AT).id == MSG_ID


@pytest.mark.parametrize(
    ("body", "given", "secrets", "said"),
    [
        (b'{"test": 2432232315}', headers(), [SECRET], "does not match"),
        (BODY, headers(), [new_webhook_secret()], "does not match"),
        (BODY, headers(), [], "does not match"),
        (BODY, headers(SIGNATURE.replace("v1,", "v1a,")), [SECRET], "does not match"),
        (BODY, headers(msg_id="msg_other"), [SECRET], "does not match"),
        (BODY, headers(stamp=str(STAMP + 1)), [SECRET], "does not match"),
        (BODY, headers(stamp="1614265330.0"), [SECRET], "Unix time"),
        (BODY, {"webhook-id": MSG_ID}, [SECRET], "missing"),
        (BODY, headers(msg_id="has space"), [SECRET], "webhook-id"),
    ],
)
def test_what_does_not_verify_is_refused(
    body: bytes, given: dict[str, str], secrets: list[str], said: str
) -> None:
    assert said in refusal(body, given, secrets, SIGNED_AT)


@pytest.mark.parametrize(
    "skew", [timedelta(minutes=-5, seconds=-1), timedelta(minutes=5, seconds=1)]
)
def test_a_timestamp_more_than_five_minutes_from_the_clock_is_refused(skew: timedelta) -> None:
    assert "five minutes" in refusal(BODY, headers(), [SECRET], SIGNED_AT + skew)
    # Just inside the window, either way, it verifies.
    inside = SIGNED_AT + (
        skew - timedelta(seconds=1) if skew > timedelta(0) else skew + timedelta(seconds=1)
    )
    assert verify_delivery(BODY, headers(), [SECRET], inside).id == MSG_ID


def test_new_secrets_are_32_random_bytes_in_the_whsec_form() -> None:
    made = {new_webhook_secret() for _ in range(100)}
    assert len(made) == 100
    for secret in made:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


def test_a_rotations_overlap_is_bounded() -> None:
    assert check_overlap(None) == timedelta(hours=24)
    assert check_overlap(timedelta(0)) == timedelta(0)
    for bad in (timedelta(seconds=-1), timedelta(days=7, seconds=1)):
        with pytest.raises(InvalidArgument):
            check_overlap(bad)


def event(type_: EventType, state: str = "", host: uuid.UUID | None = None) -> TriggerEvent:
    return TriggerEvent(1, uuid.uuid4(), type_, uuid.uuid4(), state, host, 0)


def test_an_event_condition_matches_its_type_its_states_and_its_host() -> None:
    host = uuid.uuid4()
    failed_here = EventCondition(EventType.TASK_ENDED, ("failed",), host)
    assert failed_here.matches(event(EventType.TASK_ENDED, "failed", host))
    assert not failed_here.matches(event(EventType.TASK_ENDED, "succeeded", host))
    assert not failed_here.matches(event(EventType.TASK_ENDED, "failed", uuid.uuid4()))
    assert not failed_here.matches(event(EventType.COMMAND_ENDED, "failed", host))
    anything = EventCondition(EventType.HOST_OFFLINE)
    assert anything.matches(event(EventType.HOST_OFFLINE, "offline", uuid.uuid4()))
    assert anything.matches(event(EventType.HOST_OFFLINE, "offline", None))


def test_a_valid_trigger_has_one_condition_and_a_valid_task_template() -> None:
    env = uuid.uuid4()
    fields = TriggerDraft(
        name=" nightly ",
        environment_id=str(env),
        task_prompt="inspect",
        schedule=Schedule("0 3 * * *", "Europe/Berlin"),
    ).validate()
    assert (fields.kind, fields.name, fields.template.environment_id) == (
        TriggerKind.SCHEDULE,
        "nightly",
        env,
    )
    assert not fields.explicit_timeout
    with pytest.raises(InvalidArgument) as refused:
        TriggerDraft(
            name="",
            environment_id="nope",
            task_prompt="",
            task_timeout=timedelta(days=2),
            webhook=True,
            event=EventDraft("task.ended", ("exploded",)),
        ).validate()
    fields_named = {v.field for v in refused.value.violations}
    assert fields_named == {
        "trigger.name",
        "trigger.environment_id",
        "trigger.task_prompt",
        "trigger.task_timeout",
        "trigger",
    }
