"""The document's `required` on each create is what the live server enforces: a body of only the
required fields is accepted, and without any one of them it is refused with a field violation. A
field a path template binds is REQUIRED by the route; over gRPC, where no route fills it, an
empty one is refused naming it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from roz.v1 import (
    api_keys_pb2,
    commands_pb2,
    environments_pb2,
    estop_pb2,
    hosts_pb2,
    safety_policies_pb2,
    sessions_pb2,
    tasks_pb2,
    triggers_pb2,
    watch_pb2,
)

from tests.e2e.conftest import Roz
from tests.e2e.protocols import Rpc, call

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT: dict[str, Any] = json.loads((ROOT / "gen" / "openapi.json").read_bytes())
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class Tenant:
    key: str
    environment_id: str
    host_id: str


# A valid value for each field some create requires. A field made REQUIRED without an example
# here fails the test until one is added.
EXAMPLES: dict[str, Callable[[Tenant], Any]] = {
    "name": lambda _: f"field-behavior-{uuid.uuid4().hex[:8]}",
    "environment_id": lambda tenant: tenant.environment_id,
    "host_id": lambda tenant: tenant.host_id,
    "type": lambda _: "move_to",
    "prompt": lambda _: "Put the cup on the shelf.",
    "task_prompt": lambda _: "Put the cup on the shelf.",
}
# A create whose valid body still meets a state of the tenant: refused for that reason alone.
REFUSED_FOR_STATE: dict[str, str] = {"SessionService_CreateSession": "ROBOT_OFFLINE"}
# What a valid body needs besides its required fields: a trigger fires on something (a oneof).
BESIDES_REQUIRED: dict[str, dict[str, Any]] = {
    "TriggerService_CreateTrigger": {"webhook": {}},
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _creates() -> list[tuple[str, str, list[str]]]:
    """(operation id, path, required body fields) of each create that has required fields."""
    found = []
    for path, operations in DOCUMENT["paths"].items():
        operation = operations.get("post")
        if operation is None or "{" in path:
            continue
        if not operation["operationId"].split("_", 1)[1].startswith("Create"):
            continue
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        required = _resolve(body).get("required", [])
        if required:
            found.append((operation["operationId"], path, required))
    return found


CREATES = _creates()
DROPS = [
    (operation, path, required, dropped)
    for operation, path, required in CREATES
    for dropped in required
]


def _path_bound() -> list[tuple[MethodDescriptor, str]]:
    """(unary method, field) for each field a REST path template binds: REQUIRED, by the route."""
    found = []
    for module in (
        api_keys_pb2,
        commands_pb2,
        environments_pb2,
        estop_pb2,
        hosts_pb2,
        safety_policies_pb2,
        sessions_pb2,
        tasks_pb2,
        triggers_pb2,
        watch_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.server_streaming or method.client_streaming:
                    continue
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                pattern = rule.WhichOneof("pattern")
                template = getattr(rule, pattern) if pattern else ""
                found += [
                    (method, part.split("}")[0].split("=")[0]) for part in template.split("{")[1:]
                ]
    return found


PATH_BOUND = _path_bound()


def _body(operation: str, required: list[str], tenant: Tenant) -> dict[str, Any]:
    missing = [name for name in required if name not in EXAMPLES]
    assert not missing, f"{operation}: add an example value for {missing}"
    return {
        **BESIDES_REQUIRED.get(operation, {}),
        **{name: EXAMPLES[name](tenant) for name in required},
    }


@pytest.fixture(scope="module")
def tenant(roz: Roz) -> Tenant:
    key = roz.new_tenant("field-behavior")
    with roz.rest(key) as client:
        environment = client.post("/api/v1/environments", json={"name": "field-behavior"})
        assert environment.status_code == 201, environment.text
        host = client.post(
            "/api/v1/hosts",
            json={"name": "field-behavior", "environment_id": environment.json()["id"]},
        )
        assert host.status_code == 201, host.text
    return Tenant(key, environment.json()["id"], host.json()["id"])


def _violations(response: httpx.Response) -> list[str]:
    details = response.json().get("details", [])
    return [
        violation["field"]
        for detail in details
        if detail.get("@type") == BAD_REQUEST
        for violation in detail.get("field_violations", [])
    ]


def test_every_create_with_required_fields_is_covered() -> None:
    operations = {operation for operation, _, _ in CREATES}
    assert {
        "EnvironmentService_CreateEnvironment",
        "HostService_CreateHost",
        "CommandService_CreateCommand",
        "TaskService_CreateTask",
        "TriggerService_CreateTrigger",
        "SafetyPolicyService_CreateSafetyPolicy",
        "ApiKeyService_CreateApiKey",
        "SessionService_CreateSession",
    } <= operations


@pytest.mark.parametrize(("operation", "path", "required"), CREATES, ids=[c[0] for c in CREATES])
def test_a_body_of_only_the_required_fields_is_accepted(
    roz: Roz, tenant: Tenant, operation: str, path: str, required: list[str]
) -> None:
    with roz.rest(tenant.key) as client:
        response = client.post(path, json=_body(operation, required, tenant))
    if operation in REFUSED_FOR_STATE:
        assert response.status_code == 400, response.text
        assert not _violations(response)
        reasons = [detail.get("reason") for detail in response.json()["details"]]
        assert reasons == [REFUSED_FOR_STATE[operation]]
    else:
        assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize(
    ("operation", "path", "required", "dropped"),
    DROPS,
    ids=[f"{operation}-{dropped}" for operation, _, _, dropped in DROPS],
)
def test_without_a_required_field_the_create_is_refused_naming_it(
    roz: Roz, tenant: Tenant, operation: str, path: str, required: list[str], dropped: str
) -> None:
    body = _body(operation, required, tenant)
    del body[dropped]
    with roz.rest(tenant.key) as client:
        response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    violations = _violations(response)
    assert any(field == dropped or field.endswith("." + dropped) for field in violations), (
        violations
    )


@pytest.mark.parametrize(
    ("method", "field"),
    PATH_BOUND,
    ids=[f"{method.name}-{field}" for method, field in PATH_BOUND],
)
def test_over_grpc_an_empty_path_field_is_refused_naming_it(
    roz: Roz, tenant: Tenant, method: MethodDescriptor, field: str
) -> None:
    request = message_factory.GetMessageClass(method.input_type)()
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    outcome = call("grpc", roz, Rpc(path, request, response_class, "", ""), tenant.key)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.message
    violations = outcome.detail(error_details_pb2.BadRequest).field_violations
    assert [violation.field for violation in violations] == [field]
