"""E-stops over a real listener, with grpcio robots and REST operators: the latch and its epochs,
delivery ahead of queued work, the welcome of a robot that was away, acknowledgements, what an
engage ends and what it holds, the refusals, the clear's stronger scope, environments, a robot's
own e-stop, and tenancy."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from psycopg import AsyncConnection
from roz.v1 import commands_pb2
from roz.v1 import robot_link_pb2 as pb

from server.domain.commands import CommandDraft
from server.storage.commands import CommandRepository
from tests.e2e.conftest import Roz
from tests.e2e.test_commands import new_key, rest
from tests.e2e.test_robot_link import Fleet, eventually, report

RUNNING = commands_pb2.Command.STATE_RUNNING
PENDING = commands_pb2.Command.STATE_PENDING
FAILED = commands_pb2.Command.STATE_FAILED


@pytest.fixture
def fleet(roz: Roz) -> Fleet:
    return Fleet(roz)


def call(fleet: Fleet, method: str, path: str, key: str = "", **kwargs: Any) -> Any:
    """A REST call that may fail: the response itself."""
    with fleet.roz.rest(key or fleet.key) as client:
        return client.request(method, path, **kwargs)


def engage(fleet: Fleet, path: str, reason: str = "drill") -> dict[str, Any]:
    made: dict[str, Any] = rest(
        fleet.roz, fleet.key, "POST", f"{path}/estop", json={"reason": reason}
    )
    return made


def clear(fleet: Fleet, path: str, reason: str = "all clear") -> dict[str, Any]:
    made: dict[str, Any] = rest(
        fleet.roz, fleet.key, "POST", f"{path}/estop/clear", json={"reason": reason}
    )
    return made


def tenant_of(fleet: Fleet, host_id: str) -> uuid.UUID:
    """The tenant of a host, as the database owner reads it."""

    async def read() -> uuid.UUID:
        dsn = fleet.roz.app.database.owner_dsn
        async with await AsyncConnection.connect(dsn) as conn:
            cursor = await conn.execute("SELECT tenant_id FROM roz.hosts WHERE id = %s", (host_id,))
            row = await cursor.fetchone()
        assert row is not None
        return uuid.UUID(str(row[0]))

    tenant: uuid.UUID = fleet.roz.listener.call(read())
    return tenant


def refused_reason(response: Any) -> str:
    """The ErrorInfo reason of a refused REST call."""
    details = response.json()["details"]
    (info,) = [d for d in details if d["@type"].endswith("ErrorInfo")]
    return str(info["reason"])


# -- the latch, as operators see it ---------------------------------------------------------


def test_an_engage_is_latched_numbered_and_shown_until_a_clear(fleet: Fleet) -> None:
    host_id, _ = fleet.robot()
    before = fleet.get(f"/api/v1/hosts/{host_id}/estop")
    assert before["stopped"] is False
    assert before["host"]["epoch"] == "0"

    engaged = engage(fleet, f"/api/v1/hosts/{host_id}", "arm left its cell")
    assert engaged["stopped"] is True
    latch = engaged["host"]
    assert (latch["engaged"], latch["epoch"], latch["reason"]) == (True, "1", "arm left its cell")
    assert latch["source"] == "SOURCE_OPERATOR"
    assert latch["actor"]  # the operator's key id
    assert engaged["acknowledgement"]["connected"] is False
    assert engaged["acknowledgement"]["acknowledged"] is False

    again = engage(fleet, f"/api/v1/hosts/{host_id}", "second press")
    assert (again["host"]["epoch"], again["host"]["reason"]) == ("2", "second press")
    assert fleet.get(f"/api/v1/hosts/{host_id}/estop") == again

    cleared = clear(fleet, f"/api/v1/hosts/{host_id}", "checked the cell")
    assert cleared["stopped"] is False
    assert (cleared["host"]["engaged"], cleared["host"]["epoch"]) == (False, "3")
    # Clearing a clear latch changes nothing.
    assert clear(fleet, f"/api/v1/hosts/{host_id}")["host"]["epoch"] == "3"


def test_new_work_for_a_stopped_host_is_refused_naming_the_estop(fleet: Fleet) -> None:
    environment_id = fleet.environment()
    host_id, _ = fleet.robot(environment_id)
    engage(fleet, f"/api/v1/hosts/{host_id}", "maintenance in the cell")
    for body in (
        {"command": {"host_id": host_id, "type": "wave"}},
        {"command": {"host_id": host_id, "type": "wave"}, "validate_only": True},
    ):
        with fleet.roz.rest(fleet.key) as client:
            response = client.post("/api/v1/commands", json=body["command"])
        assert response.status_code == 400
        assert refused_reason(response) == "ESTOP_ENGAGED"
        assert "maintenance in the cell" in response.json()["message"]
    response = call(
        fleet,
        "POST",
        "/api/v1/tasks",
        json={"prompt": "tidy", "environment_id": environment_id, "host_id": host_id},
    )
    assert response.status_code == 400
    assert refused_reason(response) == "ESTOP_ENGAGED"
    assert fleet.get(f"/api/v1/commands?host_id={host_id}")["commands"] == []

    clear(fleet, f"/api/v1/hosts/{host_id}")
    assert fleet.command(host_id)["state"] == "STATE_PENDING"


def test_clearing_needs_the_stronger_scope_and_every_request_a_reason(fleet: Fleet) -> None:
    host_id, _ = fleet.robot()
    writer, _ = new_key(fleet.roz, fleet.key, "hosts:write")
    reader, _ = new_key(fleet.roz, fleet.key, "hosts:read")
    path = f"/api/v1/hosts/{host_id}/estop"
    assert call(fleet, "POST", path, reader, json={"reason": "x"}).status_code == 403
    assert call(fleet, "POST", path, writer, json={"reason": "writer engages"}).status_code == 200
    assert call(fleet, "GET", path, reader).status_code == 200
    refused = call(fleet, "POST", f"{path}/clear", writer, json={"reason": "writer clears"})
    assert refused.status_code == 403
    assert fleet.get(path)["stopped"] is True

    for body in ({}, {"reason": "  "}, {"reason": "x" * 1025}):
        response = call(fleet, "POST", f"{path}/clear", json=body)
        assert response.status_code == 400, body
        violations = [
            v["field"]
            for d in response.json()["details"]
            if d["@type"].endswith("BadRequest")
            for v in d["field_violations"]
        ]
        assert violations == ["reason"]
    assert fleet.get(path)["host"]["epoch"] == "1"  # nothing was changed by the refusals


def test_another_tenants_host_or_environment_is_not_found(fleet: Fleet) -> None:
    host_id, _ = fleet.robot()
    environment_id = fleet.environment()
    other = Fleet(fleet.roz, "other")
    for path in (f"/api/v1/hosts/{host_id}", f"/api/v1/environments/{environment_id}"):
        assert call(other, "GET", f"{path}/estop").status_code == 404
        assert call(other, "POST", f"{path}/estop", json={"reason": "x"}).status_code == 404
        assert call(other, "POST", f"{path}/estop/clear", json={"reason": "x"}).status_code == 404
        assert fleet.get(f"{path}/estop").get("stopped", False) is False
    assert call(fleet, "GET", "/api/v1/hosts/not-a-uuid/estop").status_code == 400
    missing = call(fleet, "POST", f"/api/v1/hosts/{uuid.uuid4()}/estop", json={"reason": "x"})
    assert missing.status_code == 404


# -- robots ---------------------------------------------------------------------------------


def test_an_engage_overtakes_a_thousand_queued_deliveries(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    roz = fleet.roz
    tenant = tenant_of(fleet, host_id)
    with fleet.connect(secret, small_window=True) as robot:
        robot.welcome()
        robot.pause()  # reads one more message, then lets the server's window fill

        async def queue_many() -> None:
            commands = CommandRepository(roz.app.database.pool)
            for _ in range(1000):
                draft = CommandDraft(host_id=host_id, type="wave", params={})
                await commands.create(tenant, draft, actor=None)

        roz.listener.call(queue_many(), timeout=120)
        engage(fleet, f"/api/v1/hosts/{host_id}", "stop everything")
        robot.resume()
        sequences = []
        while True:
            response = robot.receive("delivery", "estop")
            if response.WhichOneof("message") == "estop":
                break
            sequences.append(response.delivery.sequence)
        assert response.estop.stopped
        assert len(sequences) < 1000  # it came ahead of what was still queued
        robot.nothing_for(1.0)  # and nothing is sent while the host is stopped
        robot.send(estop_ack=pb.EstopAck(host_epoch=1))

        # What the robot had in hand was ended; what was never sent is held, PENDING.
        states = [c["state"] for c in _all_commands(fleet, host_id)]
        assert states.count("STATE_FAILED") >= len(sequences)
        held = states.count("STATE_PENDING")
        assert held > 0
        assert states.count("STATE_FAILED") + held == 1000

        clear(fleet, f"/api/v1/hosts/{host_id}")
        assert not robot.receive("estop").estop.stopped
        resumed = robot.delivery()
        assert resumed.sequence == sequences[-1] + 1  # from where it was held


def _all_commands(fleet: Fleet, host_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = ""
    while True:
        page = fleet.get(f"/api/v1/commands?host_id={host_id}&page_size=500&page_token={token}")
        found += page["commands"]
        token = page.get("next_page_token", "")
        if not token:
            return found


def test_a_robot_offline_at_the_engage_latches_it_from_its_welcome(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    made = fleet.command(host_id)  # numbered, never sent
    engage(fleet, f"/api/v1/hosts/{host_id}", "night shift")
    with fleet.connect(secret) as robot:
        welcome = robot.welcome()
        assert welcome.estop.stopped
        assert (welcome.estop.host.epoch, welcome.estop.host.reason) == (1, "night shift")
        robot.nothing_for(0.5)  # the command is held
        assert fleet.get(f"/api/v1/hosts/{host_id}/estop")["acknowledgement"] == {
            "connected": True,
            "acknowledged": False,
            "host_epoch": "0",
            "environment_epoch": "0",
        }
        robot.send(estop_ack=pb.EstopAck(host_epoch=1))
        eventually(
            lambda: fleet.get(f"/api/v1/hosts/{host_id}/estop")["acknowledgement"]["acknowledged"]
        )
        clear(fleet, f"/api/v1/hosts/{host_id}")
        assert not robot.receive("estop").estop.stopped
        delivery = robot.delivery()
        assert (delivery.command.id, delivery.command.state) == (made["id"], PENDING)


def test_an_engage_ends_running_work_and_nothing_starts_until_a_clear(fleet: Fleet) -> None:
    environment_id = fleet.environment()
    host_id, secret = fleet.robot(environment_id)
    made = fleet.command(host_id)
    task = rest(
        fleet.roz,
        fleet.key,
        "POST",
        "/api/v1/tasks",
        json={"prompt": "sweep", "environment_id": environment_id, "host_id": host_id},
    )
    rest(
        fleet.roz,
        fleet.key,
        "POST",
        f"/api/v1/tasks/{task['id']}/transition",
        json={"state": "STATE_QUEUED"},
    )
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.delivery()  # the command
        robot.delivery()  # the task
        robot.send(**report(made["id"], RUNNING, "r1"))
        assert robot.receive("report_result").report_result.applied
        engage(fleet, f"/api/v1/hosts/{host_id}", "person in the cell")
        assert robot.receive("estop").estop.stopped
        # Too late to start: the robot's RUNNING is refused, and so is an operator's.
        robot.send(
            task_report=pb.TaskReport(
                task_id=task["id"], state=task_state("RUNNING"), report_id="t1"
            )
        )
        late = robot.receive("report_result").report_result
        assert not late.applied
    command = fleet.get(f"/api/v1/commands/{made['id']}")
    assert command["state"] == "STATE_FAILED"
    assert command["transitions"][-1]["reason"] == "E-STOP: person in the cell"
    stopped_task = fleet.get(f"/api/v1/tasks/{task['id']}")
    assert stopped_task["state"] == "STATE_SAFETY_STOPPED"
    assert stopped_task["result"] == "E-STOP: person in the cell"

    response = call(
        fleet,
        "POST",
        f"/api/v1/commands/{made['id']}/transition",
        json={"state": "STATE_RUNNING"},
    )
    assert response.status_code == 400  # FAILED is final; the e-stop's reason stays
    clear(fleet, f"/api/v1/hosts/{host_id}")
    # Clearing restores permission, not motion: what the e-stop ended stays ended.
    assert fleet.get(f"/api/v1/commands/{made['id']}")["state"] == "STATE_FAILED"


def task_state(name: str) -> int:
    from roz.v1 import tasks_pb2

    return int(tasks_pb2.Task.State.Value(f"STATE_{name}"))


def test_an_environment_estop_stops_every_host_in_it(fleet: Fleet) -> None:
    environment_id = fleet.environment()
    (first, first_secret), (second, second_secret) = (
        fleet.robot(environment_id),
        fleet.robot(environment_id),
    )
    outside, outside_secret = fleet.robot()
    running = fleet.command(first)
    elsewhere = fleet.command(outside)
    with fleet.connect(first_secret) as one, fleet.connect(second_secret) as two:
        one.welcome()
        two.welcome()
        one.delivery()
        one.send(**report(running["id"], RUNNING, "r1"))
        assert one.receive("report_result").report_result.applied
        with fleet.connect(outside_secret) as third:
            third.welcome()
            third.delivery()
            third.send(**report(elsewhere["id"], RUNNING, "r2"))
            assert third.receive("report_result").report_result.applied
        engaged = engage(fleet, f"/api/v1/environments/{environment_id}", "fire drill")
        ended = fleet.get(f"/api/v1/commands/{running['id']}")
        assert (ended["state"], ended["transitions"][-1]["reason"]) == (
            "STATE_FAILED",
            "E-STOP: fire drill",
        )
        assert fleet.get(f"/api/v1/commands/{elsewhere['id']}")["state"] == "STATE_RUNNING"
        assert engaged["latch"]["epoch"] == "1"
        assert sorted(h["host_id"] for h in engaged["hosts"]) == sorted([first, second])
        assert all(h["stopped"] for h in engaged["hosts"])
        for robot in (one, two):
            estop = robot.receive("estop").estop
            assert estop.stopped
            assert (estop.environment.epoch, estop.environment.reason) == (1, "fire drill")
            assert estop.environment_id == environment_id
        one.send(estop_ack=pb.EstopAck(environment_epoch=1))

        def acknowledged() -> dict[str, bool]:
            hosts = fleet.get(f"/api/v1/environments/{environment_id}/estop")["hosts"]
            return {h["host_id"]: h["acknowledgement"]["acknowledged"] for h in hosts}

        eventually(lambda: acknowledged() == {first: True, second: False})
        refused = call(fleet, "POST", "/api/v1/commands", json={"host_id": second, "type": "wave"})
        assert refused.status_code == 400
        assert refused_reason(refused) == "ESTOP_ENGAGED"
        assert fleet.command(outside)["state"] == "STATE_PENDING"  # not in the environment

        # A host's own latch holds through the environment's clear.
        engage(fleet, f"/api/v1/hosts/{second}", "its own reason")
        assert two.receive("estop").estop.host.engaged
        clear(fleet, f"/api/v1/environments/{environment_id}")
        assert not one.receive("estop").estop.stopped
        still = two.receive("estop").estop
        assert still.stopped
        assert (still.host.engaged, still.environment.engaged) == (True, False)


def test_a_robot_raises_its_own_estop_and_the_server_latches_it(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.send(estop_raise=pb.EstopRaise(source=2, reason=""))  # its button, no words
        estop = robot.receive("estop").estop
        assert estop.stopped
        assert estop.host.source == 2
        assert estop.host.reason == "raised by the robot (robot button)"
        robot.send(estop_raise=pb.EstopRaise(source=1, reason="pretending"))  # OPERATOR
        assert robot.ended() == grpc.StatusCode.INVALID_ARGUMENT
    shown = fleet.get(f"/api/v1/hosts/{host_id}/estop")
    assert (shown["host"]["source"], shown["host"]["epoch"]) == ("SOURCE_ROBOT_BUTTON", "1")


def test_an_acknowledgement_of_an_estop_never_sent_ends_the_stream(fleet: Fleet) -> None:
    _, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        robot.send(estop_ack=pb.EstopAck(host_epoch=7))
        assert robot.ended() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the last e-stop sent was 0/0" in robot.details()


@pytest.mark.parametrize("latch", ["host", "environment"])
def test_a_start_racing_an_engage_never_leaves_a_command_running(fleet: Fleet, latch: str) -> None:
    """Each round, an operator moves a PENDING command to RUNNING while another engages the
    host's latch, or its environment's: the command ends FAILED (started first, ended by the
    engage) or stays PENDING (refused)."""
    environment_id = fleet.environment()
    host_id, _ = fleet.robot(environment_id)
    roz = fleet.roz
    tenant = tenant_of(fleet, host_id)

    async def round_() -> str:
        from server.domain.commands import CommandState
        from server.domain.estop import Source, Target, TargetKind
        from server.storage.estops import EstopRepository

        pool = roz.app.database.pool
        commands, estops = CommandRepository(pool), EstopRepository(pool)
        target = (
            Target(TargetKind.HOST, uuid.UUID(host_id))
            if latch == "host"
            else Target(TargetKind.ENVIRONMENT, uuid.UUID(environment_id))
        )
        made = await commands.create(
            tenant, CommandDraft(host_id=host_id, type="wave", params={}), actor=None
        )
        await asyncio.gather(
            commands.transition(tenant, made.id, CommandState.RUNNING, actor=None),
            estops.engage(tenant, target, reason="race", source=Source.OPERATOR, actor=None),
            return_exceptions=True,
        )
        state = (await commands.get(tenant, made.id)).state.name
        await estops.clear(tenant, target, reason="next round", actor=None)
        return state

    outcomes = {roz.listener.call(round_()) for _ in range(20)}
    assert outcomes <= {"FAILED", "PENDING"}


def test_a_pending_command_cannot_be_started_by_an_operator_while_stopped(fleet: Fleet) -> None:
    host_id, _ = fleet.robot()
    made = fleet.command(host_id)
    engage(fleet, f"/api/v1/hosts/{host_id}", "hold")
    response = call(
        fleet,
        "POST",
        f"/api/v1/commands/{made['id']}/transition",
        json={"state": "STATE_RUNNING"},
    )
    assert response.status_code == 400
    assert refused_reason(response) == "ESTOP_ENGAGED"
    assert fleet.get(f"/api/v1/commands/{made['id']}")["state"] == "STATE_PENDING"  # held


def test_engages_acknowledgements_and_clears_are_in_the_audit_trail(fleet: Fleet) -> None:
    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        engage(fleet, f"/api/v1/hosts/{host_id}", "audit me")
        robot.receive("estop")
        robot.send(estop_ack=pb.EstopAck(host_epoch=1))
        robot.send(estop_ack=pb.EstopAck(host_epoch=1))  # a repeat is not a new event
        eventually(
            lambda: fleet.get(f"/api/v1/hosts/{host_id}/estop")["acknowledgement"]["acknowledged"]
        )
        clear(fleet, f"/api/v1/hosts/{host_id}", "done")
    events = fleet.get(f"/api/v1/audit-events?host_id={host_id}&page_size=100")["audit_events"]
    estops = [e for e in events if e["kind"].startswith("estop.")]
    kinds = sorted(e["kind"] for e in estops)
    assert kinds == ["estop.acknowledged", "estop.cleared", "estop.engaged"]
    engaged = next(e for e in estops if e["kind"] == "estop.engaged")
    assert engaged["detail"]["reason"] == "audit me"
    assert engaged["detail"]["epoch"] == 1
    acknowledged = next(e for e in estops if e["kind"] == "estop.acknowledged")
    assert acknowledged["actor"]["host_id"] == host_id  # the robot's own key


def test_the_notification_carries_the_latch_and_the_longest_reason_fits(fleet: Fleet) -> None:
    """The notification carries the latch itself: 1,024 four-byte characters fit in it."""
    from server.domain.estop import MAX_REASON_LENGTH, Latch, Source, Target, TargetKind
    from server.storage.estops import parse_payload, payload

    reason = "🛑" * MAX_REASON_LENGTH
    target = Target(TargetKind.ENVIRONMENT, uuid.uuid4())
    latch = Latch(engaged=True, epoch=3, reason=reason, source=Source.ROBOT_GUARD, actor=None)
    text = payload(uuid.uuid4(), target, latch)
    assert len(text.encode()) < 8000  # NOTIFY's limit
    parsed = parse_payload(text)
    assert parsed is not None
    assert (parsed[1], parsed[2]) == (target, latch)
    assert parse_payload("not json") is None
    assert parse_payload('{"tenant": "x"}') is None

    host_id, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        engage(fleet, f"/api/v1/hosts/{host_id}", reason)
        assert robot.receive("estop").estop.host.reason == reason


def test_the_estop_service_answers_over_grpc_web_and_native_grpc(fleet: Fleet) -> None:
    import sonora.client
    from roz.v1 import estop_pb2, estop_pb2_grpc

    host_id, _ = fleet.robot()
    metadata = [("authorization", f"Bearer {fleet.key}")]
    with sonora.client.insecure_web_channel(fleet.roz.url) as web:
        engaged = web.unary_unary(
            "/roz.v1.EstopService/EngageHostEstop",
            estop_pb2.EngageHostEstopRequest.SerializeToString,
            estop_pb2.HostEstop.FromString,
        )(estop_pb2.EngageHostEstopRequest(host_id=host_id, reason="web"), metadata=metadata)
    assert (engaged.stopped, engaged.host.epoch, engaged.host.reason) == (True, 1, "web")
    with fleet.roz.channel() as channel:
        stub = estop_pb2_grpc.EstopServiceStub(channel)
        shown = stub.GetHostEstop(estop_pb2.GetHostEstopRequest(host_id=host_id), metadata=metadata)
        assert shown.host.epoch == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.ClearHostEstop(estop_pb2.ClearHostEstopRequest(host_id=host_id), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no reason given
