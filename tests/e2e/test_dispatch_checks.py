"""The check at dispatch end to end: a robot connects after its environment's policy was
tightened, and gets the commands the policy now forbids FAILED, with the violations a create
would be refused with, in their places in its log; what is still allowed comes PENDING. An
approval within its policy's TTL is delivered. (Expiry itself is tested with a moved clock in
tests/server/storage/test_dispatch_checks.py.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf import json_format
from roz.v1 import commands_pb2

from tests.e2e.conftest import Roz
from tests.e2e.test_commands import rest
from tests.e2e.test_robot_link import RUNNING, Fleet, report

S = commands_pb2.Command


@pytest.fixture
def fleet(roz: Roz) -> Fleet:
    return Fleet(roz, "dispatch")


def guarded(fleet: Fleet, **rules: Any) -> tuple[str, dict[str, Any], str, str]:
    """A policy with `rules`, an environment bound by it, and a host there with its robot key:
    (policy id, the policy's body, host id, robot secret)."""
    body = {"name": f"cell-{uuid.uuid4().hex[:8]}", **rules}
    policy = rest(fleet.roz, fleet.key, "POST", "/api/v1/safety-policies", json=body)
    environment = rest(
        fleet.roz,
        fleet.key,
        "POST",
        "/api/v1/environments",
        json={"name": f"env-{uuid.uuid4().hex[:8]}", "safety_policy_ids": [policy["id"]]},
    )
    host_id, secret = fleet.robot(environment["id"])
    return policy["id"], body, host_id, secret


def test_a_command_a_tightened_policy_forbids_reaches_the_robot_failed(fleet: Fleet) -> None:
    policy_id, body, host_id, secret = guarded(fleet, limits={"max_linear_velocity": 2.0})
    fast = fleet.command(host_id, "move_to", velocity=1.5)
    slow = fleet.command(host_id, "move_to", velocity=0.25)
    assert (fast["state"], slow["state"]) == ("STATE_PENDING", "STATE_PENDING")
    tightened = rest(
        fleet.roz,
        fleet.key,
        "PUT",
        f"/api/v1/safety-policies/{policy_id}",
        json={**body, "limits": {"max_linear_velocity": 0.5}},
    )
    assert tightened["version"] == 2
    # What a create of the same command is refused with now.
    with fleet.roz.rest(fleet.key) as client:
        refused = client.post(
            "/api/v1/commands",
            params={"validate_only": "true"},
            json={"host_id": host_id, "type": "move_to", "params": {"velocity": 1.5}},
        )
    assert refused.status_code == 400
    at_creation = refused.json()

    with fleet.connect(secret) as robot:
        robot.welcome()
        first, second = robot.delivery(), robot.delivery()
        assert (first.sequence, first.command.id) == (1, fast["id"])
        assert first.command.state == S.STATE_FAILED
        assert (second.sequence, second.command.id) == (2, slow["id"])
        assert second.command.state == S.STATE_PENDING
        refusal = json_format.MessageToDict(first.command.result)
        assert refusal["message"] == at_creation["message"]
        assert refusal["violations"] == [
            {"reason": detail["reason"], "metadata": detail["metadata"]}
            for detail in at_creation["details"]
        ]
        assert refusal["violations"][0]["metadata"]["policy_version"] == "2"
        robot.ack(2)
        # A robot that tried to run it anyway is told it is over.
        robot.send(**report(fast["id"], RUNNING, "try"))
        answer = robot.receive("report_result").report_result
        assert answer.applied is False
        assert answer.command.state == S.STATE_FAILED
        robot.send(**report(slow["id"], RUNNING, "go"))
        assert robot.receive("report_result").report_result.applied

    seen = fleet.get(f"/api/v1/commands/{fast['id']}")
    assert seen["state"] == "STATE_FAILED"
    last = seen["transitions"][-1]
    assert (last["from_state"], last["to_state"], last["actor"]) == (
        "STATE_PENDING",
        "STATE_FAILED",
        "",
    )
    assert last["reason"] == (
        "refused at dispatch: the command violates 1 safety constraint: velocity 1.5 m/s exceeds "
        "max_linear_velocity 0.5 m/s (policy "
        f"{body['name']!r} v2)"
    )
    assert seen["result"] == refusal
    assert seen["deliver_time"]
    assert fleet.get(f"/api/v1/commands/{slow['id']}")["state"] == "STATE_RUNNING"


def test_a_command_needing_an_approval_it_never_got_is_refused_and_one_approved_in_time_is_sent(
    fleet: Fleet,
) -> None:
    policy_id, body, host_id, secret = guarded(fleet)
    unapproved = fleet.command(host_id, "grip")
    rest(
        fleet.roz,
        fleet.key,
        "PUT",
        f"/api/v1/safety-policies/{policy_id}",
        json={**body, "approval_command_types": ["grip"], "approval_ttl": "3600s"},
    )
    approved = fleet.command(host_id, "grip")
    assert approved["state"] == "STATE_AWAITING_APPROVAL"
    rest(
        fleet.roz,
        fleet.key,
        "POST",
        f"/api/v1/commands/{approved['id']}/transition",
        json={"state": "STATE_PENDING", "reason": "looks fine"},
    )

    with fleet.connect(secret) as robot:
        robot.welcome()
        first, second = robot.delivery(), robot.delivery()
    assert (first.command.id, first.command.state) == (unapproved["id"], S.STATE_FAILED)
    reason = first.command.transitions[-1].reason
    assert reason.startswith("refused at dispatch: type 'grip' now needs a person's approval")
    assert json_format.MessageToDict(first.command.result)["violations"][0]["reason"] == (
        "APPROVAL_REQUIRED"
    )
    assert (second.command.id, second.command.state) == (approved["id"], S.STATE_PENDING)
