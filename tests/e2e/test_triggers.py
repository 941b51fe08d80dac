"""Triggers over a real listener: the resource over REST and gRPC, schedules fired on a clock the
test moves (DST, misfires, the preview equal to what fires), signed webhook deliveries (replays,
tampering, skew, rotation), events from the outbox (each kind, the loop guard), and tenancy."""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from roz.v1 import robot_link_pb2 as link_pb
from roz.v1 import triggers_pb2, triggers_pb2_grpc
from standardwebhooks.webhooks import Webhook

from server.storage.triggers import schedule_overview
from tests.e2e.conftest import Roz, RozFactory, TestClock, roz_servers
from tests.e2e.protocols import PROTOCOLS, Rpc
from tests.e2e.protocols import call as call_over
from tests.e2e.test_commands import new_key, rest
from tests.e2e.test_robot_link import Fleet, eventually


def call(roz: Roz, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with roz.rest(key) as client:
        return client.request(method, path, **kwargs)


def environment(roz: Roz, key: str) -> str:
    body = {"name": f"cell-{uuid.uuid4().hex[:8]}"}
    return str(rest(roz, key, "POST", "/api/v1/environments", json=body)["id"])


def schedule_trigger(
    roz: Roz, key: str, environment_id: str, cron: str, **schedule: Any
) -> dict[str, Any]:
    body = {
        "name": f"every-{uuid.uuid4().hex[:6]}",
        "environment_id": environment_id,
        "task_prompt": "inspect the cell",
        "schedule": {"cron": cron, **schedule},
    }
    made: dict[str, Any] = rest(roz, key, "POST", "/api/v1/triggers", json=body)
    return made


def fires(roz: Roz, key: str, trigger_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    token = ""
    while True:
        page = rest(
            roz,
            key,
            "GET",
            f"/api/v1/triggers/{trigger_id}/fires",
            params={"page_size": 100, "page_token": token},
        )
        listed += page.get("fires", [])
        token = page.get("next_page_token", "")
        if not token:
            return listed


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def violations(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    found: dict[str, str] = {}
    for detail in body.get("details", []):
        for violation in detail.get("field_violations", []):
            found[violation["field"]] = violation["description"]
    return found


# The resource -------------------------------------------------------------------------------


def test_a_schedule_trigger_is_created_read_listed_changed_and_deleted(roz: Roz) -> None:
    key = roz.new_tenant("triggers")
    env = environment(roz, key)
    made = schedule_trigger(roz, key, env, "30 9 * * 1-5", time_zone="Europe/Berlin")
    assert made["enabled"] is True
    assert made["schedule"]["time_zone"] == "Europe/Berlin"
    assert made["schedule"]["misfire_policy"] == "MISFIRE_POLICY_RUN_LATEST"
    assert made["schedule"]["description"]
    next_fire = utc(made["next_fire_time"])
    local = next_fire.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 30, True)

    got = rest(roz, key, "GET", f"/api/v1/triggers/{made['id']}")
    assert got == made
    listed = rest(roz, key, "GET", "/api/v1/triggers")["triggers"]
    assert [t["id"] for t in listed] == [made["id"]]

    off = rest(
        roz,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        params={"update_mask": "enabled"},
        json={"enabled": False},
    )
    assert off["enabled"] is False
    assert "next_fire_time" not in off
    assert off["name"] == made["name"]
    on = rest(
        roz,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        params={"update_mask": "enabled,schedule"},
        json={"enabled": True, "schedule": {"cron": "0 12 * * *"}},
    )
    assert on["schedule"]["cron"] == "0 12 * * *"
    assert on["schedule"]["time_zone"] == ""
    assert utc(on["next_fire_time"]).hour == 12

    assert call(roz, key, "DELETE", f"/api/v1/triggers/{made['id']}").status_code == 204
    assert call(roz, key, "GET", f"/api/v1/triggers/{made['id']}").status_code == 404


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        ({"schedule": {"cron": "61 * * * *"}}, "trigger.schedule.cron"),
        ({"schedule": {"cron": "0 0 30 2 *"}}, "trigger.schedule.cron"),
        (
            {"schedule": {"cron": "* * * * *", "time_zone": "Mars/Olympus"}},
            "trigger.schedule.time_zone",
        ),
        (
            {"schedule": {"cron": "* * * * *", "max_catchup_runs": 101}},
            "trigger.schedule.max_catchup_runs",
        ),
        (
            {"schedule": {"cron": "* * * * *", "catchup_window": "691200s"}},
            "trigger.schedule.catchup_window",
        ),
        ({}, "trigger"),
        ({"schedule": {"cron": "* * * * *"}, "webhook": {}}, "trigger"),
        ({"event": {"type": "task.exploded"}}, "trigger.event.type"),
        ({"event": {"type": "task.ended", "states": ["completed"]}}, "trigger.event.states[0]"),
        ({"webhook": {}, "task_prompt": ""}, "trigger.task_prompt"),
        ({"webhook": {}, "task_timeout": "0.5s"}, "trigger.task_timeout"),
        ({"webhook": {}, "name": ""}, "trigger.name"),
        ({"webhook": {}, "environment_id": str(uuid.uuid4())}, "trigger.environment_id"),
        ({"webhook": {}, "host_id": str(uuid.uuid4())}, "trigger.host_id"),
    ],
)
def test_a_trigger_that_is_not_valid_is_refused_on_its_field_and_nothing_is_stored(
    roz: Roz, trigger: dict[str, Any], field: str
) -> None:
    key = roz.new_tenant("invalid")
    body = {"name": "t", "environment_id": environment(roz, key), "task_prompt": "p"} | trigger
    if "schedule" in body and "webhook" in body:
        body["webhook"] = {}
    response = call(roz, key, "POST", "/api/v1/triggers", json=body)
    assert response.status_code == 400, response.text
    assert field in violations(response), response.text
    assert "psycopg" not in response.text
    assert rest(roz, key, "GET", "/api/v1/triggers").get("triggers", []) == []


def test_another_tenants_trigger_is_not_found_and_scopes_are_enforced(roz: Roz) -> None:
    owner = roz.new_tenant("owner")
    other = roz.new_tenant("other")
    made = schedule_trigger(roz, owner, environment(roz, owner), "* * * * *")
    path = f"/api/v1/triggers/{made['id']}"
    assert call(roz, other, "GET", path).status_code == 404
    assert call(roz, other, "DELETE", path).status_code == 404
    assert call(roz, other, "GET", f"{path}/fires").status_code == 404
    assert call(roz, other, "GET", f"{path}:preview").status_code == 404
    assert rest(roz, other, "GET", "/api/v1/triggers").get("triggers", []) == []
    # Another tenant's environment looks like none at all.
    body = {
        "name": "x",
        "environment_id": made["environment_id"],
        "task_prompt": "p",
        "webhook": {},
    }
    response = call(roz, other, "POST", "/api/v1/triggers", json=body)
    assert response.status_code == 400
    assert "trigger.environment_id" in violations(response)

    reader, _ = new_key(roz, owner, "triggers:read")
    assert call(roz, reader, "GET", path).status_code == 200
    assert call(roz, reader, "DELETE", path).status_code == 403
    writer, _ = new_key(roz, owner, "triggers:write")
    hook = rest(
        roz,
        owner,
        "POST",
        "/api/v1/triggers",
        json=body | {"environment_id": made["environment_id"]},
    )
    rotate = call(
        roz, writer, "POST", f"/api/v1/triggers/{hook['id']}:rotateWebhookSecret", json={}
    )
    assert rotate.status_code == 403
    assert call(roz, writer, "DELETE", path).status_code == 204


def test_an_environment_or_host_a_trigger_uses_cannot_be_deleted_under_it(roz: Roz) -> None:
    fleet = Fleet(roz, "in-use")
    env = fleet.environment()
    host_id, _ = fleet.robot(env)
    body = {
        "name": "h",
        "environment_id": env,
        "host_id": host_id,
        "task_prompt": "p",
        "webhook": {},
    }
    made = rest(roz, fleet.key, "POST", "/api/v1/triggers", json=body)
    refused = call(roz, fleet.key, "DELETE", f"/api/v1/hosts/{host_id}")
    assert refused.status_code == 400
    assert "HOST_IN_USE" in refused.text
    rest(roz, fleet.key, "DELETE", f"/api/v1/triggers/{made['id']}")
    assert call(roz, fleet.key, "DELETE", f"/api/v1/hosts/{host_id}").status_code == 204


def test_a_triggers_kind_never_changes(roz: Roz) -> None:
    key = roz.new_tenant("kinds")
    made = schedule_trigger(roz, key, environment(roz, key), "* * * * *")
    response = call(
        roz,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        params={"update_mask": "event"},
        json={"event": {"type": "host.online"}},
    )
    assert response.status_code == 400
    assert "update_mask" in violations(response)
    whole = call(
        roz,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        json={
            "name": "n",
            "environment_id": made["environment_id"],
            "task_prompt": "p",
            "webhook": {},
        },
    )
    assert whole.status_code == 400
    assert rest(roz, key, "GET", f"/api/v1/triggers/{made['id']}") == made


def test_triggers_over_native_grpc(roz: Roz) -> None:
    key = roz.new_tenant("grpc")
    env = environment(roz, key)
    metadata = (("authorization", f"Bearer {key}"),)
    with roz.channel() as channel:
        stub = triggers_pb2_grpc.TriggerServiceStub(channel)
        made = stub.CreateTrigger(
            triggers_pb2.CreateTriggerRequest(
                trigger=triggers_pb2.Trigger(
                    name="hook", environment_id=env, task_prompt="p", webhook=triggers_pb2.Webhook()
                )
            ),
            metadata=metadata,
        )
        assert made.webhook.secret.startswith("whsec_")
        assert made.webhook.url.endswith(f"/api/v1/triggers/{made.id}/webhook")
        body = b'{"ref": "main"}'
        stamp = datetime.now(UTC)
        signature = Webhook(made.webhook.secret).sign("msg_grpc", stamp, body)
        receipt = stub.DeliverWebhook(
            triggers_pb2.DeliverWebhookRequest(
                trigger_id=made.id, body={"data": body, "content_type": "application/json"}
            ),
            metadata=(
                ("webhook-id", "msg_grpc"),
                ("webhook-timestamp", str(int(stamp.timestamp()))),
                ("webhook-signature", signature),
            ),
        )
        assert receipt.fire.outcome == triggers_pb2.TriggerFire.OUTCOME_CREATED
        assert not receipt.duplicate
        with pytest.raises(grpc.RpcError) as refused:
            stub.DeliverWebhook(
                triggers_pb2.DeliverWebhookRequest(trigger_id=made.id, body={"data": body}),
                metadata=(
                    ("webhook-id", "msg_grpc2"),
                    ("webhook-timestamp", str(int(stamp.timestamp()))),
                    ("webhook-signature", signature),
                ),
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


# Schedules, on a clock the test moves ---------------------------------------------------------


@pytest.fixture(scope="module")
def clocked() -> Iterator[tuple[Roz, TestClock]]:
    """A server of this module's own on a clock the tests move, stopped with the module (the
    session's servers and their connections add up)."""
    clock = TestClock()
    clock.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with roz_servers() as start:
        yield start(clock=clock, rate_limit_rps=100_000.0, rate_limit_burst=100_000), clock


def fire_at(server: Roz, moment: datetime) -> None:
    """The scheduler at `moment` (the server's clock moved there), as every process's loop
    runs it."""
    clock = server.app.clock
    assert isinstance(clock, TestClock)
    clock.now = moment
    # The server's own loop may hold some of them (it sees the clock move too): until none is
    # due, whoever fires them.
    for _ in range(500):
        server.listener.call(server.app.firing.fire_schedules(moment))
        due, _ = server.listener.call(schedule_overview(server.app.database.pool, moment))
        if not due:
            return
        time.sleep(0.02)
    raise AssertionError(f"triggers still due at {moment}")


def test_a_schedule_fires_once_per_time_and_its_tasks_know_their_trigger(
    clocked: tuple[Roz, TestClock],
) -> None:
    server, clock = clocked
    key = server.new_tenant("cron")
    made = schedule_trigger(server, key, environment(server, key), "*/5 * * * *")
    first = utc(made["next_fire_time"])
    assert first > clock.now
    assert fires(server, key, made["id"]) == []
    fire_at(server, first - timedelta(seconds=1))
    assert fires(server, key, made["id"]) == []
    fire_at(server, first)
    fire_at(server, first)  # again, and from "another process": nothing twice
    fire_at(server, first + timedelta(seconds=30))
    (fire,) = fires(server, key, made["id"])
    assert fire["outcome"] == "OUTCOME_CREATED"
    assert fire["source"] == "SOURCE_SCHEDULE"
    assert utc(fire["scheduled_time"]) == first
    task = rest(server, key, "GET", f"/api/v1/tasks/{fire['task_id']}")
    assert task["trigger_id"] == made["id"]
    assert task["trigger_fire_id"] == fire["id"]
    assert task["prompt"] == "inspect the cell"
    assert task["environment_id"] == made["environment_id"]
    after = rest(server, key, "GET", f"/api/v1/triggers/{made['id']}")
    assert utc(after["next_fire_time"]) == first + timedelta(minutes=5)
    assert utc(after["last_fire_time"]) == first


def test_the_preview_is_what_fires_across_a_dst_change(clocked: tuple[Roz, TestClock]) -> None:
    server, clock = clocked
    key = server.new_tenant("dst")
    made = schedule_trigger(
        server, key, environment(server, key), "30 2 * * *", time_zone="America/New_York"
    )
    start = datetime(2027, 3, 11, 12, 0, tzinfo=UTC)  # 2027-03-14 is spring-forward day
    preview = rest(
        server,
        key,
        "GET",
        f"/api/v1/triggers/{made['id']}:preview",
        params={"count": 6, "after": start.isoformat().replace("+00:00", "Z")},
    )["fires"]
    times = [utc(f["fire_time"]) for f in preview]
    locals_ = [f["local_time"] for f in preview]
    # 02:30 does not exist on 2027-03-14: it fires once, at 03:00, the end of the gap.
    assert locals_[2].startswith("2027-03-14T03:00:00-04:00"), locals_
    assert [t.date() for t in times] == sorted({t.date() for t in times})
    # Re-plan from `start`, then step through: what fires is exactly the preview.
    rest(
        server,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        params={"update_mask": "enabled"},
        json={"enabled": False},
    )
    clock.now = start
    rest(
        server,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        params={"update_mask": "enabled"},
        json={"enabled": True},
    )
    moment = start
    while moment < times[-1] + timedelta(hours=1):
        moment += timedelta(minutes=20)
        fire_at(server, moment)
    fired = sorted(utc(f["scheduled_time"]) for f in fires(server, key, made["id"]))
    assert fired == times


@pytest.mark.parametrize(
    ("policy", "expected_created", "expected_missed"),
    [
        ("MISFIRE_POLICY_SKIP", 0, 3),
        ("MISFIRE_POLICY_RUN_LATEST", 1, 2),
        ("MISFIRE_POLICY_RUN_ALL", 3, 0),
    ],
)
def test_times_missed_while_no_server_ran_follow_the_misfire_policy(
    clocked: tuple[Roz, TestClock], policy: str, expected_created: int, expected_missed: int
) -> None:
    server, _ = clocked
    key = server.new_tenant("misfire")
    made = schedule_trigger(
        server, key, environment(server, key), "0 * * * *", misfire_policy=policy
    )
    first = utc(made["next_fire_time"])
    # No server for three hours: the hourly times first, +1h, +2h were missed.
    fire_at(server, first + timedelta(hours=2, minutes=30))
    listed = fires(server, key, made["id"])
    created = [f for f in listed if f["outcome"] == "OUTCOME_CREATED"]
    missed = [f for f in listed if f["outcome"] == "OUTCOME_MISSED"]
    assert len(created) == expected_created
    assert sum(f["missed_count"] for f in missed) == expected_missed
    if policy == "MISFIRE_POLICY_RUN_LATEST":
        assert utc(created[0]["scheduled_time"]) == first + timedelta(hours=2)
    after = rest(server, key, "GET", f"/api/v1/triggers/{made['id']}")
    assert utc(after["next_fire_time"]) == first + timedelta(hours=3)


def test_run_all_is_capped_and_bounded_by_its_window(clocked: tuple[Roz, TestClock]) -> None:
    server, _ = clocked
    key = server.new_tenant("capped")
    made = schedule_trigger(
        server,
        key,
        environment(server, key),
        "0 * * * *",
        misfire_policy="MISFIRE_POLICY_RUN_ALL",
        catchup_window="604800s",
        max_catchup_runs=100,
    )
    first = utc(made["next_fire_time"])
    now = first + timedelta(days=9)
    fire_at(server, now)
    listed = fires(server, key, made["id"])
    created = [f for f in listed if f["outcome"] == "OUTCOME_CREATED"]
    missed = [f for f in listed if f["outcome"] == "OUTCOME_MISSED"]
    assert len(created) == 100, (listed[:3], made)
    assert all(now - utc(f["scheduled_time"]) <= timedelta(days=7) for f in created)
    assert sum(f["missed_count"] for f in missed) == 9 * 24 + 1 - 100


def test_an_e_stopped_host_leaves_a_failed_fire_not_a_task(clocked: tuple[Roz, TestClock]) -> None:
    server, _ = clocked
    fleet = Fleet(server, "stopped")
    env = fleet.environment()
    host_id, _ = fleet.robot(env)
    rest(server, fleet.key, "POST", f"/api/v1/hosts/{host_id}/estop", json={"reason": "drill"})
    body = {
        "name": "stopped",
        "environment_id": env,
        "host_id": host_id,
        "task_prompt": "p",
        "schedule": {"cron": "* * * * *"},
    }
    made = rest(server, fleet.key, "POST", "/api/v1/triggers", json=body)
    fire_at(server, utc(made["next_fire_time"]))
    (fire,) = fires(server, fleet.key, made["id"])
    assert fire["outcome"] == "OUTCOME_FAILED"
    assert "e-stop" in fire["error"].lower() or "stopped" in fire["error"].lower()
    assert not fire.get("task_id"), fire
    assert rest(server, fleet.key, "GET", "/api/v1/tasks").get("tasks", []) == []


# Webhooks ---------------------------------------------------------------------------------------


def webhook_trigger(roz: Roz, key: str) -> dict[str, Any]:
    body = {
        "name": f"hook-{uuid.uuid4().hex[:6]}",
        "environment_id": environment(roz, key),
        "task_prompt": "deploy",
        "webhook": {},
    }
    made: dict[str, Any] = rest(roz, key, "POST", "/api/v1/triggers", json=body)
    return made


def signed(
    secret: str, body: bytes, msg_id: str | None = None, at: datetime | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
    }


def deliver(roz: Roz, trigger_id: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=roz.url, timeout=30) as client:
        return client.post(f"/api/v1/triggers/{trigger_id}/webhook", content=body, headers=headers)


def test_the_secret_is_shown_once_and_a_signed_delivery_fires_once(roz: Roz) -> None:
    key = roz.new_tenant("webhooks")
    made = webhook_trigger(roz, key)
    secret = made["webhook"]["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert (
        made["webhook"]["url"]
        == f"{roz.app.settings.base_url}/api/v1/triggers/{made['id']}/webhook"
    )
    got = rest(roz, key, "GET", f"/api/v1/triggers/{made['id']}")
    assert got["webhook"]["secret"] == ""
    assert secret not in str(rest(roz, key, "GET", "/api/v1/triggers"))

    body = b'{"ref":"refs/heads/main",  "odd spacing": true}'
    headers = signed(secret, body, "msg_1")
    first = deliver(roz, made["id"], body, headers)
    assert first.status_code == 200, first.text
    receipt = first.json()
    assert receipt.get("duplicate", False) is False
    assert receipt["fire"]["webhook_id"] == "msg_1"
    task = rest(roz, key, "GET", f"/api/v1/tasks/{receipt['fire']['task_id']}")
    assert task["prompt"] == "deploy"
    assert task["trigger_id"] == made["id"]

    again = deliver(roz, made["id"], body, signed(secret, body, "msg_1"))
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["fire"]["id"] == receipt["fire"]["id"]
    assert len(fires(roz, key, made["id"])) == 1


@pytest.mark.parametrize("tamper", ["body", "secret", "old", "future", "unsigned", "garbage"])
def test_a_delivery_that_does_not_verify_is_401_and_stores_nothing(roz: Roz, tamper: str) -> None:
    key = roz.new_tenant("tampered")
    made = webhook_trigger(roz, key)
    secret = made["webhook"]["secret"]
    body = b'{"ok": true}'
    headers = signed(secret, body)
    sent = body
    if tamper == "body":
        sent = b'{"ok": false}'
    elif tamper == "secret":
        other = "whsec_" + base64.b64encode(b"x" * 32).decode()
        headers = signed(other, body)
    elif tamper == "old":
        headers = signed(secret, body, at=datetime.now(UTC) - timedelta(minutes=6))
    elif tamper == "future":
        headers = signed(secret, body, at=datetime.now(UTC) + timedelta(minutes=6))
    elif tamper == "unsigned":
        headers = {"content-type": "application/json"}
    else:
        headers["webhook-timestamp"] = "yesterday"
    response = deliver(roz, made["id"], sent, headers)
    assert response.status_code == 401, response.text
    assert "WEBHOOK_SIGNATURE_INVALID" in response.text
    assert fires(roz, key, made["id"]) == []
    assert rest(roz, key, "GET", "/api/v1/tasks").get("tasks", []) == []


def test_a_delivery_to_no_webhook_trigger_is_404(roz: Roz) -> None:
    key = roz.new_tenant("nohook")
    scheduled = schedule_trigger(roz, key, environment(roz, key), "* * * * *")
    body = b"{}"
    secret = "whsec_" + base64.b64encode(b"y" * 32).decode()
    assert deliver(roz, scheduled["id"], body, signed(secret, body)).status_code == 404
    assert deliver(roz, str(uuid.uuid4()), body, signed(secret, body)).status_code == 404
    assert deliver(roz, "not-an-id", body, signed(secret, body)).status_code == 400


def test_a_hundred_concurrent_replays_of_one_delivery_fire_once(roz: Roz) -> None:
    key = roz.new_tenant("replays")
    made = webhook_trigger(roz, key)
    body = b'{"n": 1}'
    headers = signed(made["webhook"]["secret"], body, "msg_storm")
    with concurrent.futures.ThreadPoolExecutor(max_workers=25) as pool:
        responses = list(pool.map(lambda _: deliver(roz, made["id"], body, headers), range(100)))
    assert {r.status_code for r in responses} == {200}, [
        r.text for r in responses if r.status_code != 200
    ][:3]
    receipts = [r.json() for r in responses]
    assert sum(1 for r in receipts if not r.get("duplicate", False)) == 1
    assert len({r["fire"]["id"] for r in receipts}) == 1
    assert len(fires(roz, key, made["id"])) == 1
    assert len(rest(roz, key, "GET", "/api/v1/tasks")["tasks"]) == 1


def test_a_rotated_secret_overlaps_then_only_the_new_one_verifies(roz: Roz) -> None:
    key = roz.new_tenant("rotation")
    made = webhook_trigger(roz, key)
    old = made["webhook"]["secret"]
    rotated = rest(roz, key, "POST", f"/api/v1/triggers/{made['id']}:rotateWebhookSecret", json={})
    new = rotated["webhook"]["secret"]
    assert new != old
    assert "previous_secret_expire_time" in rotated["webhook"]
    body = b"{}"
    assert deliver(roz, made["id"], body, signed(old, body)).status_code == 200
    assert deliver(roz, made["id"], body, signed(new, body)).status_code == 200
    # A rotation with no overlap ends the previous secret (the one just "new") at once.
    latest = rest(
        roz,
        key,
        "POST",
        f"/api/v1/triggers/{made['id']}:rotateWebhookSecret",
        json={"overlap": "0s"},
    )["webhook"]["secret"]
    assert deliver(roz, made["id"], body, signed(new, body)).status_code == 401
    assert deliver(roz, made["id"], body, signed(old, body)).status_code == 401
    assert deliver(roz, made["id"], body, signed(latest, body)).status_code == 200
    too_long = call(
        roz,
        key,
        "POST",
        f"/api/v1/triggers/{made['id']}:rotateWebhookSecret",
        json={"overlap": "700000s"},
    )
    assert too_long.status_code == 400


def test_a_disabled_webhook_trigger_refuses_verified_deliveries(roz: Roz) -> None:
    key = roz.new_tenant("disabled")
    made = webhook_trigger(roz, key)
    rest(
        roz,
        key,
        "PATCH",
        f"/api/v1/triggers/{made['id']}",
        params={"update_mask": "enabled"},
        json={"enabled": False},
    )
    body = b"{}"
    response = deliver(roz, made["id"], body, signed(made["webhook"]["secret"], body))
    assert response.status_code == 400
    assert "TRIGGER_DISABLED" in response.text
    assert fires(roz, key, made["id"]) == []


# Events -------------------------------------------------------------------------------------


def event_trigger(roz: Roz, key: str, env: str, event: dict[str, Any]) -> dict[str, Any]:
    body = {
        "name": f"on-{event['type']}",
        "environment_id": env,
        "task_prompt": f"after {event['type']}",
        "event": event,
    }
    made: dict[str, Any] = rest(roz, key, "POST", "/api/v1/triggers", json=body)
    return made


def created_fires(roz: Roz, key: str, trigger_id: str) -> list[dict[str, Any]]:
    return [f for f in fires(roz, key, trigger_id) if f["outcome"] == "OUTCOME_CREATED"]


def test_a_task_ending_in_a_named_state_fires_its_trigger_once(roz: Roz) -> None:
    key = roz.new_tenant("task-events")
    env = environment(roz, key)
    made = event_trigger(roz, key, env, {"type": "task.ended", "states": ["cancelled"]})
    watched = rest(roz, key, "POST", "/api/v1/tasks", json={"prompt": "a", "environment_id": env})
    other = rest(roz, key, "POST", "/api/v1/tasks", json={"prompt": "b", "environment_id": env})
    rest(
        roz,
        key,
        "POST",
        f"/api/v1/tasks/{watched['id']}/transition",
        json={"state": "STATE_CANCELLED"},
    )
    eventually(lambda: len(created_fires(roz, key, made["id"])) == 1)
    (fire,) = fires(roz, key, made["id"])
    assert fire["event_type"] == "task.ended"
    assert fire["event_subject_id"] == watched["id"]
    assert fire["event_state"] == "cancelled"
    # A state not named, and nothing more for the first: still one fire.
    rest(
        roz, key, "POST", f"/api/v1/tasks/{other['id']}/transition", json={"state": "STATE_QUEUED"}
    )
    roz.listener.call(roz.app.firing.dispatch_events())
    assert len(fires(roz, key, made["id"])) == 1


def test_a_chain_of_triggers_firing_on_their_own_tasks_stops(roz: Roz) -> None:
    key = roz.new_tenant("loops")
    env = environment(roz, key)
    made = event_trigger(roz, key, env, {"type": "task.ended"})
    first = rest(roz, key, "POST", "/api/v1/tasks", json={"prompt": "seed", "environment_id": env})
    to_end = first["id"]
    for depth in range(1, 4):
        rest(
            roz,
            key,
            "POST",
            f"/api/v1/tasks/{to_end}/transition",
            json={"state": "STATE_CANCELLED"},
        )
        eventually(lambda d=depth: len(fires(roz, key, made["id"])) == d)  # type: ignore[misc]
        to_end = fires(roz, key, made["id"])[0]["task_id"]
    rest(roz, key, "POST", f"/api/v1/tasks/{to_end}/transition", json={"state": "STATE_CANCELLED"})
    eventually(lambda: len(fires(roz, key, made["id"])) == 4)
    last = fires(roz, key, made["id"])[0]
    assert last["outcome"] == "OUTCOME_SUPPRESSED"
    assert not last.get("task_id")
    assert len(rest(roz, key, "GET", "/api/v1/tasks")["tasks"]) == 4


def test_commands_hosts_and_e_stops_fire_their_triggers(roz: Roz) -> None:
    fleet = Fleet(roz, "events")
    env = fleet.environment()
    host_id, secret = fleet.robot(env)
    online = event_trigger(roz, fleet.key, env, {"type": "host.online", "host_id": host_id})
    offline = event_trigger(roz, fleet.key, env, {"type": "host.offline"})
    ended = event_trigger(roz, fleet.key, env, {"type": "command.ended", "states": ["cancelled"]})
    engaged = event_trigger(roz, fleet.key, env, {"type": "estop.engaged"})

    robot = fleet.connect(secret)
    try:
        robot.welcome()
        eventually(lambda: len(created_fires(roz, fleet.key, online["id"])) == 1)
        command = fleet.command(host_id)
        rest(roz, fleet.key, "DELETE", f"/api/v1/commands/{command['id']}")
        eventually(lambda: len(created_fires(roz, fleet.key, ended["id"])) == 1)
        rest(roz, fleet.key, "POST", f"/api/v1/hosts/{host_id}/estop", json={"reason": "drill"})
        eventually(lambda: len(created_fires(roz, fleet.key, engaged["id"])) == 1)
    finally:
        robot.close()
    eventually(lambda: len(created_fires(roz, fleet.key, offline["id"])) == 1)
    assert fires(roz, fleet.key, online["id"])[0]["event_subject_id"] == host_id
    assert len(fires(roz, fleet.key, online["id"])) == 1
    assert link_pb  # the robot spoke the link protocol above


def test_a_new_trigger_wakes_a_scheduler_that_would_sleep_far_longer(
    roz_factory_per_test: RozFactory,
) -> None:
    server = roz_factory_per_test(trigger_poll_seconds=60.0)
    key = server.new_tenant("wake")
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    cron = f"{due.second} {due.minute} {due.hour} * * *"
    made = schedule_trigger(server, key, environment(server, key), cron)
    assert utc(made["next_fire_time"]) == due
    # Fired at its time, not at the scheduler's next minute-long poll.
    eventually(lambda: len(fires(server, key, made["id"])) == 1, seconds=15)
    (fire,) = fires(server, key, made["id"])
    assert utc(fire["fire_time"]) - due < timedelta(seconds=2)


SERVICE = "/roz.v1.TriggerService/"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_same_trigger_calls_on_every_protocol(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant(f"proto-{protocol}")
    trigger = triggers_pb2.Trigger(
        name="every minute",
        environment_id=environment(roz, key),
        task_prompt="p",
        schedule=triggers_pb2.Schedule(cron="* * * * *", time_zone="Australia/Lord_Howe"),
    )
    made = call_over(
        protocol,
        roz,
        Rpc(
            SERVICE + "CreateTrigger",
            triggers_pb2.CreateTriggerRequest(trigger=trigger),
            triggers_pb2.Trigger,
            "POST",
            "/api/v1/triggers",
            body=json_format.MessageToDict(trigger, preserving_proto_field_name=True),
        ),
        key,
    )
    assert made.code is grpc.StatusCode.OK, made.message
    created = made.response
    assert isinstance(created, triggers_pb2.Trigger)
    assert created.schedule.time_zone == "Australia/Lord_Howe"
    assert created.HasField("next_fire_time")
    preview = call_over(
        protocol,
        roz,
        Rpc(
            SERVICE + "PreviewTrigger",
            triggers_pb2.PreviewTriggerRequest(id=created.id, count=3),
            triggers_pb2.PreviewTriggerResponse,
            "GET",
            f"/api/v1/triggers/{created.id}:preview",
            query={"count": 3},
        ),
        key,
    )
    assert preview.code is grpc.StatusCode.OK
    assert isinstance(preview.response, triggers_pb2.PreviewTriggerResponse)
    times = [f.fire_time.ToDatetime(UTC) for f in preview.response.fires]
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(minutes=1)] * 2
    missing = call_over(
        protocol,
        roz,
        Rpc(
            SERVICE + "GetTrigger",
            triggers_pb2.GetTriggerRequest(id=str(uuid.uuid4())),
            triggers_pb2.Trigger,
            "GET",
            f"/api/v1/triggers/{uuid.uuid4()}",
        ),
        key,
    )
    assert missing.code is grpc.StatusCode.NOT_FOUND


def test_any_body_is_signed_as_raw_bytes_and_an_oversized_one_is_413(
    roz_factory_per_test: RozFactory,
) -> None:
    server = roz_factory_per_test(max_body_bytes=64 * 1024)
    key = server.new_tenant("raw")
    made = webhook_trigger(server, key)
    secret = made["webhook"]["secret"]
    # Not JSON, not UTF-8: verified over its bytes all the same; nothing parses it.
    body = b"\xff\xfe not json \x00"
    headers = signed(secret, body) | {"content-type": "application/octet-stream"}
    assert deliver(server, made["id"], body, headers).status_code == 200
    big = b"x" * (64 * 1024 + 1)
    too_big = deliver(server, made["id"], big, signed(secret, big))
    assert too_big.status_code == 413
    assert len(fires(server, key, made["id"])) == 1
