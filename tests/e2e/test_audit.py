"""The audit trail end to end: real calls over REST, native gRPC and gRPC-web and a real robot
are recorded with who and how; the trail is listed in pages with filters and verified over every
protocol, needs audit:read, shows each tenant only its own, and names a row an owner altered.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import psycopg
import pytest
import sonora.client
from google.protobuf import json_format
from roz.v1 import audit_pb2 as pb
from roz.v1 import commands_pb2, robot_link_pb2

from tests.e2e.conftest import Roz
from tests.e2e.protocols import PROTOCOLS, Rpc, call
from tests.e2e.test_commands import Cell, key_id, new_key, rest
from tests.e2e.test_robot_keys import robot_key
from tests.support.robot import Robot

SERVICE = "/roz.v1.AuditService/"
RUNNING = commands_pb2.Command.STATE_RUNNING
COMPLETED = commands_pb2.Command.STATE_COMPLETED


def events(roz: Roz, key: str, **query: Any) -> list[dict[str, Any]]:
    """Every entry matching `query`, oldest first, read page by page over REST."""
    found: list[dict[str, Any]] = []
    params = {"order_by": "sequence", "page_size": "3", **query}
    while True:
        page = rest(roz, key, "GET", "/api/v1/audit-events", params=params)
        found += page["audit_events"]
        if not page["next_page_token"]:
            return found
        params["page_token"] = page["next_page_token"]


def verify(roz: Roz, key: str) -> dict[str, Any]:
    verdict: dict[str, Any] = rest(roz, key, "GET", "/api/v1/audit-events:verify")
    return verdict


def tenant_id(roz: Roz, key: str) -> str:
    return str(rest(roz, key, "GET", "/api/v1/caller")["tenant_id"])


def command_body(host_id: str) -> dict[str, Any]:
    return {
        "host_id": host_id,
        "type": "move_to",
        "params": {"target": {"x": 0.5, "y": 0.5, "z": 0.5}},
    }


# -- who and how --------------------------------------------------------------------------------


def test_changes_are_recorded_with_the_key_the_protocol_and_the_request_id(roz: Roz) -> None:
    key = roz.new_tenant("audit")
    me = key_id(roz, key)
    cell = Cell(roz, key)
    with roz.rest(key) as client:
        response = client.post(
            "/api/v1/commands",
            json=command_body(cell.host_id),
            headers={"x-request-id": "audit-over-rest"},
        )
    assert response.status_code == 201, response.text
    by_rest = response.json()["id"]

    request = commands_pb2.CreateCommandRequest(
        command=json_format.ParseDict(command_body(cell.host_id), commands_pb2.Command())
    )
    metadata = [("authorization", f"Bearer {key}")]
    with roz.channel() as channel:
        by_grpc = channel.unary_unary(
            "/roz.v1.CommandService/CreateCommand",
            request_serializer=commands_pb2.CreateCommandRequest.SerializeToString,
            response_deserializer=commands_pb2.Command.FromString,
        )(request, metadata=[*metadata, ("x-request-id", "audit-over-grpc")], timeout=30).id
    with sonora.client.insecure_web_channel(roz.url) as web:
        by_web = web.unary_unary(
            "/roz.v1.CommandService/CreateCommand",
            commands_pb2.CreateCommandRequest.SerializeToString,
            commands_pb2.Command.FromString,
        )(request, metadata=[*metadata, ("x-request-id", "audit-over-grpc-web")], timeout=30).id
    with roz.rest(key) as client:
        by_connect = client.post(
            "/roz.v1.CommandService/CreateCommand",
            json={"command": command_body(cell.host_id)},
            headers={"x-request-id": "audit-over-connect"},
        ).json()["id"]

    created = {e["subject_id"]: e for e in events(roz, key, kind="command.created")}
    assert set(created) == {by_rest, by_grpc, by_web, by_connect}
    for command_id, protocol, request_id in [
        (by_rest, "PROTOCOL_REST", "audit-over-rest"),
        (by_grpc, "PROTOCOL_GRPC", "audit-over-grpc"),
        (by_web, "PROTOCOL_GRPC_WEB", "audit-over-grpc-web"),
        (by_connect, "PROTOCOL_CONNECT", "audit-over-connect"),
    ]:
        event = created[command_id]
        assert event["actor"] == {
            "api_key_id": me,
            "host_id": "",
            "protocol": protocol,
            "request_id": request_id,
        }
        assert (event["host_id"], event["environment_id"]) == (cell.host_id, cell.environment_id)
        assert event["detail"]["type"] == "move_to"

    # The cell's set-up is on the trail too: the policy made and attached to the environment.
    setup = [(e["kind"], e["subject_id"], e["environment_id"]) for e in events(roz, key)][:2]
    assert setup == [
        ("safety_policy.created", cell.policy_id, ""),
        ("safety_policy.attached", cell.policy_id, cell.environment_id),
    ]
    assert all(e["actor"]["api_key_id"] == me for e in events(roz, key))
    assert verify(roz, key)["intact"] is True


def test_a_robots_part_is_recorded_as_the_robots(roz: Roz) -> None:
    key = roz.new_tenant("audit-robot")
    host_id = rest(roz, key, "POST", "/api/v1/hosts", json={"name": "arm-1"})["id"]
    robot_api_key, secret = robot_key(roz, key, host_id)
    with Robot(roz.listener.target, secret) as robot:
        robot.welcome()
        made = rest(roz, key, "POST", "/api/v1/commands", json=command_body(host_id))
        delivery = robot.delivery()
        robot.ack(delivery.sequence)
        for state, report_id in [(RUNNING, "r1"), (COMPLETED, "r2")]:
            report = robot_link_pb2.CommandReport(
                command_id=made["id"], state=state, report_id=report_id
            )
            robot.send(command_report=report)
            assert robot.receive("report_result").report_result.applied

    life = events(roz, key, subject_id=made["id"])
    assert [e["kind"] for e in life] == [
        "command.created",
        "command.delivered",
        "command.acknowledged",
        "command.running",
        "command.ended",
    ]
    assert life[0]["actor"]["host_id"] == ""  # the operator's key
    for event in life[1:]:  # sent over the robot's link, and what the robot said over it
        assert event["actor"]["api_key_id"] == robot_api_key.id
        assert event["actor"]["host_id"] == host_id
        assert event["actor"]["protocol"] == "PROTOCOL_GRPC"
    assert life[-1]["detail"]["to_state"] == "completed"

    link = events(roz, key, host_id=host_id, kind="robot.connected")
    assert len(link) == 1
    assert link[0]["actor"]["host_id"] == host_id
    assert verify(roz, key)["intact"] is True


# -- access, isolation, pages -------------------------------------------------------------------


def list_rpc(**fields: Any) -> Rpc:
    query = {name: str(value) for name, value in fields.items()}
    return Rpc(
        SERVICE + "ListAuditEvents",
        pb.ListAuditEventsRequest(**fields),
        pb.ListAuditEventsResponse,
        "GET",
        "/api/v1/audit-events",
        query=query or None,
    )


def verify_rpc() -> Rpc:
    return Rpc(
        SERVICE + "VerifyAuditEvents",
        pb.VerifyAuditEventsRequest(),
        pb.VerifyAuditEventsResponse,
        "GET",
        "/api/v1/audit-events:verify",
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reading_the_trail_needs_audit_read(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("audit-scope")
    Cell(roz, key)
    without, _ = new_key(roz, key, "commands:admin", "safety-policies:admin")
    reader, _ = new_key(roz, key, "audit:read")
    host_id = rest(roz, key, "POST", "/api/v1/hosts", json={"name": "arm"})["id"]
    _, robot_secret = robot_key(roz, key, host_id)
    for rpc in (list_rpc(), verify_rpc()):
        assert call(protocol, roz, rpc, without).code == grpc.StatusCode.PERMISSION_DENIED
        assert call(protocol, roz, rpc, robot_secret).code == grpc.StatusCode.PERMISSION_DENIED
        assert call(protocol, roz, rpc, None).code == grpc.StatusCode.UNAUTHENTICATED
    listed = call(protocol, roz, list_rpc(), reader)
    assert listed.code == grpc.StatusCode.OK
    assert len(listed.response.audit_events) == 2  # type: ignore[union-attr]
    verified = call(protocol, roz, verify_rpc(), reader)
    assert verified.code == grpc.StatusCode.OK
    assert verified.response.intact  # type: ignore[union-attr]
    assert verified.response.head_sequence == 2  # type: ignore[union-attr]


def test_a_tenant_sees_only_its_own_trail(roz: Roz) -> None:
    mine, theirs = roz.new_tenant("audit-mine"), roz.new_tenant("audit-theirs")
    cell = Cell(roz, mine)
    Cell(roz, theirs)
    assert [e["sequence"] for e in events(roz, theirs)] == ["1", "2"]
    assert events(roz, theirs, host_id=cell.host_id) == []
    assert events(roz, theirs, subject_id=cell.policy_id) == []
    assert verify(roz, theirs)["head_sequence"] == "2"


def test_pages_filters_and_orders(roz: Roz) -> None:
    key = roz.new_tenant("audit-pages")
    cell = Cell(roz, key)
    for _ in range(4):
        rest(roz, key, "POST", "/api/v1/commands", json=command_body(cell.host_id))
    everything = events(roz, key)
    assert [e["sequence"] for e in everything] == [str(n) for n in range(1, 7)]
    newest = rest(roz, key, "GET", "/api/v1/audit-events", params={"page_size": "2"})
    assert [e["sequence"] for e in newest["audit_events"]] == ["6", "5"]
    assert [e["sequence"] for e in events(roz, key, after_sequence="4")] == ["5", "6"]
    assert len(events(roz, key, kind="command.created", host_id=cell.host_id)) == 4
    assert len(events(roz, key, environment_id=cell.environment_id)) == 5
    entry = everything[3]
    assert events(roz, key, start_time=entry["event_time"], end_time=everything[4]["event_time"])[
        0
    ] == entry  # fmt: skip
    with roz.rest(key) as client:
        for query in (
            {"order_by": "time"},
            {"host_id": "arm-1"},
            {"kind": "Command"},
            {"page_token": "nonsense"},
            {"after_sequence": "-1"},
        ):
            response = client.get("/api/v1/audit-events", params=query)
            assert response.status_code == 400, (query, response.text)


# -- verification -------------------------------------------------------------------------------


def owner_sql(roz: Roz, statement: str) -> None:
    """What someone with the database's owner credentials can do behind the server's back."""
    with psycopg.connect(roz.app.database.owner_dsn) as conn:
        conn.execute("ALTER TABLE roz.audit_events DISABLE TRIGGER USER")
        conn.execute(statement)
        conn.execute("ALTER TABLE roz.audit_events ENABLE TRIGGER USER")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_verification_names_the_row_altered_in_the_database(roz: Roz, protocol: str) -> None:
    key = roz.new_tenant("audit-tamper")
    cell = Cell(roz, key)
    made = rest(roz, key, "POST", "/api/v1/commands", json=command_body(cell.host_id))
    intact = call(protocol, roz, verify_rpc(), key).response
    assert intact is not None
    assert (intact.intact, intact.verified_entries, intact.broken) == (
        True,
        3,
        pb.VerifyAuditEventsResponse.BREAK_UNSPECIFIED,
    )
    (created,) = events(roz, key, subject_id=made["id"])
    assert intact.head_hash == created["hash"]

    # Someone makes the command look like another type after the fact.
    owner_sql(
        roz,
        "UPDATE roz.audit_events SET detail = jsonb_set(detail, '{type}', '\"wave\"')"
        f" WHERE tenant_id = '{tenant_id(roz, key)}' AND sequence = {created['sequence']}",
    )
    broken = call(protocol, roz, verify_rpc(), key).response
    assert broken is not None
    assert (broken.intact, broken.broken, broken.broken_sequence, broken.verified_entries) == (
        False,
        pb.VerifyAuditEventsResponse.BREAK_ALTERED,
        3,
        2,
    )
    assert "entry 3 was altered" in broken.description


def test_a_deleted_row_is_named_over_rest(roz: Roz) -> None:
    key = roz.new_tenant("audit-delete")
    cell = Cell(roz, key)
    rest(roz, key, "POST", "/api/v1/commands", json=command_body(cell.host_id))
    owner_sql(
        roz,
        f"DELETE FROM roz.audit_events WHERE tenant_id = '{tenant_id(roz, key)}' AND sequence = 2",
    )
    verdict = verify(roz, key)
    assert (verdict["intact"], verdict["broken"], verdict["broken_sequence"]) == (
        False,
        "BREAK_MISSING",
        "2",
    )
    assert verdict["head_sequence"] == "3"


def test_the_listing_shows_an_entry_with_its_hash_link(roz: Roz) -> None:
    key = roz.new_tenant("audit-links")
    cell = Cell(roz, key)
    rest(roz, key, "POST", "/api/v1/commands", json=command_body(cell.host_id))
    first, second, third = events(roz, key)
    assert first["previous_hash"] == ""
    assert (second["previous_hash"], third["previous_hash"]) == (first["hash"], second["hash"])
    assert all(len(e["hash"]) == 64 for e in (first, second, third))
    uuid.UUID(first["subject_id"])
