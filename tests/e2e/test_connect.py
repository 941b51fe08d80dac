"""roz over the Connect protocol on the shared port, at the HTTP level (httpx): the same chain as
every protocol (auth, tenancy, errors with details), GET for side-effect-free methods, a watch as
a Connect server stream."""

from __future__ import annotations

import base64
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from roz.v1 import environments_pb2, environments_pb2_grpc

from tests.e2e.conftest import Roz
from tests.e2e.test_commands import rest
from tests.e2e.test_robot_link import Fleet

ENVIRONMENTS = "/roz.v1.EnvironmentService"


@pytest.fixture
def fleet(roz: Roz) -> Fleet:
    return Fleet(roz, "connect")


def connect(
    fleet: Fleet, path: str, document: Any, key: str | None = None, **headers: str
) -> httpx.Response:
    headers = {
        "content-type": "application/json",
        "connect-protocol-version": "1",
        "authorization": f"Bearer {key or fleet.key}",
        **headers,
    }
    return httpx.post(fleet.roz.url + path, json=document, headers=headers, timeout=30)


def test_a_connect_json_call_creates_and_reads_what_rest_sees(fleet: Fleet) -> None:
    made = connect(
        fleet,
        f"{ENVIRONMENTS}/CreateEnvironment",
        {"environment": {"name": "connect-cell", "allowedTools": ["camera"]}},
    )
    assert made.status_code == 200
    assert made.headers["content-type"] == "application/json"
    created = made.json()
    assert created["allowed_tools"] == ["camera"]  # proto field names out
    got = connect(fleet, f"{ENVIRONMENTS}/GetEnvironment", {"id": created["id"]}).json()
    assert got == rest(fleet.roz, fleet.key, "GET", f"/api/v1/environments/{created['id']}")


def test_get_reads_a_side_effect_free_method_from_the_query(fleet: Fleet) -> None:
    environment_id = fleet.environment()
    message = quote(json.dumps({"id": environment_id}))
    response = httpx.get(
        f"{fleet.roz.url}{ENVIRONMENTS}/GetEnvironment?connect=v1&encoding=json&message={message}",
        headers={"authorization": f"Bearer {fleet.key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["id"] == environment_id

    binary = base64.urlsafe_b64encode(
        environments_pb2.GetEnvironmentRequest(id=environment_id).SerializeToString()
    ).decode()
    response = httpx.get(
        f"{fleet.roz.url}{ENVIRONMENTS}/GetEnvironment",
        params={"connect": "v1", "encoding": "proto", "base64": "1", "message": binary},
        headers={"authorization": f"Bearer {fleet.key}"},
        timeout=30,
    )
    assert environments_pb2.Environment.FromString(response.content).id == environment_id


def test_get_on_a_method_that_changes_state_is_405(fleet: Fleet) -> None:
    response = httpx.get(
        f"{fleet.roz.url}{ENVIRONMENTS}/CreateEnvironment",
        params={"connect": "v1", "encoding": "json", "message": "{}"},
        headers={"authorization": f"Bearer {fleet.key}"},
        timeout=30,
    )
    assert (response.status_code, response.headers["allow"]) == (405, "POST")


def test_another_tenants_id_is_not_found(fleet: Fleet) -> None:
    theirs = Fleet(fleet.roz, "other").environment()
    response = connect(fleet, f"{ENVIRONMENTS}/GetEnvironment", {"id": theirs})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_no_key_is_unauthenticated_with_www_authenticate(fleet: Fleet) -> None:
    response = httpx.post(
        f"{fleet.roz.url}{ENVIRONMENTS}/ListEnvironments",
        json={},
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_bad_id_answers_the_details_native_grpc_gets(fleet: Fleet) -> None:
    response = connect(fleet, f"{ENVIRONMENTS}/GetEnvironment", {"id": "not-a-uuid"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    (detail,) = body["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    assert detail["debug"]["field_violations"][0]["field"] == "id"

    with fleet.roz.channel() as channel:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetEnvironment(
                environments_pb2.GetEnvironmentRequest(id="not-a-uuid"),
                metadata=(("authorization", f"Bearer {fleet.key}"),),
            )
    trailing = dict(raised.value.trailing_metadata())  # type: ignore[attr-defined]
    native = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert (native.message, native.details[0].value) == (
        body["message"],
        base64.b64decode(detail["value"] + "=="),
    )


def test_an_unknown_field_is_invalid_argument(fleet: Fleet) -> None:
    response = connect(fleet, f"{ENVIRONMENTS}/ListEnvironments", {"pageSise": 3})
    assert response.status_code == 400
    assert "pageSise" in response.json()["message"]


def test_the_request_id_is_echoed_and_reaches_the_call(fleet: Fleet) -> None:
    request_id = uuid.uuid4().hex
    response = connect(
        fleet, f"{ENVIRONMENTS}/ListEnvironments", {}, **{"x-request-id": request_id}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


def _envelopes(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + length:
                break
            yield flags, buffer[5 : 5 + length]
            buffer = buffer[5 + length :]


def test_a_task_watch_is_a_connect_server_stream_that_ends_with_the_task(fleet: Fleet) -> None:
    environment_id = fleet.environment()
    task = rest(
        fleet.roz,
        fleet.key,
        "POST",
        "/api/v1/tasks",
        json={"prompt": "x", "environment_id": environment_id},
    )
    seen: list[tuple[int, Any]] = []
    started = threading.Event()

    def watch() -> None:
        payload = json.dumps({"taskId": task["id"]}).encode()
        with httpx.stream(
            "POST",
            f"{fleet.roz.url}/roz.v1.WatchService/WatchTask",
            content=struct.pack(">BI", 0, len(payload)) + payload,
            headers={
                "content-type": "application/connect+json",
                "connect-protocol-version": "1",
                "authorization": f"Bearer {fleet.key}",
            },
            timeout=30,
        ) as response:
            assert response.status_code == 200
            for flags, message in _envelopes(response.iter_raw()):
                seen.append((flags, json.loads(message)))
                started.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert started.wait(10)
    rest(
        fleet.roz,
        fleet.key,
        "POST",
        f"/api/v1/tasks/{task['id']}/transition",
        json={"state": "STATE_CANCELLED", "reason": "not needed"},
    )
    watcher.join(20)
    assert not watcher.is_alive()  # the stream ended by itself
    *events, (end_flags, end) = seen
    assert end_flags == 0x02
    assert "error" not in end
    assert events[0][1]["task"]["state"] == "STATE_PENDING"
    assert events[-1][1]["task"]["state"] == "STATE_CANCELLED"


def test_a_watch_of_another_tenants_task_ends_with_not_found(fleet: Fleet) -> None:
    other = Fleet(fleet.roz, "other")
    task = rest(
        other.roz,
        other.key,
        "POST",
        "/api/v1/tasks",
        json={"prompt": "x", "environment_id": other.environment()},
    )
    payload = json.dumps({"task_id": task["id"]}).encode()
    response = httpx.post(
        f"{fleet.roz.url}/roz.v1.WatchService/WatchTask",
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={
            "content-type": "application/connect+json",
            "authorization": f"Bearer {fleet.key}",
        },
        timeout=30,
    )
    ((flags, end),) = list(_envelopes(iter([response.content])))
    assert flags == 0x02
    assert json.loads(end)["error"]["code"] == "not_found"


def test_a_watch_ends_with_deadline_exceeded_when_its_timeout_passes(fleet: Fleet) -> None:
    """Conformance: Timeouts / server-stream — the deadline ends a stream that never ends by
    itself, in the end-of-stream message."""
    response = httpx.post(
        f"{fleet.roz.url}/roz.v1.WatchService/WatchFleet",
        content=struct.pack(">BI", 0, 2) + b"{}",
        headers={
            "content-type": "application/connect+json",
            "connect-timeout-ms": "500",
            "authorization": f"Bearer {fleet.key}",
        },
        timeout=30,
    )
    assert response.status_code == 200
    *_, (flags, end) = _envelopes(iter([response.content]))
    assert flags == 0x02
    assert json.loads(end)["error"]["code"] == "deadline_exceeded"
