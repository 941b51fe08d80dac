"""The document's `required` on each create is what the live server enforces: a body of only the
required fields is accepted, without any one of them it is refused with a field violation, and
without any body at all (which the document says a create must send) it is refused too. An
update with an update_mask takes a body of only the fields the mask names, which the document's
schema for it admits; without a mask it needs the whole resource, as the document says. A field
a path template binds is REQUIRED by the route; over gRPC, where no route fills it, an empty one
is refused naming it."""

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
from jsonschema import Draft202012Validator
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


def _updates() -> list[tuple[str, str, str]]:
    """(operation id, method, path) of each update that takes an update_mask."""
    return [
        (operation["operationId"], method, path)
        for path, operations in DOCUMENT["paths"].items()
        for method, operation in operations.items()
        if "update_mask" in [p["name"] for p in operation.get("parameters", [])]
    ]


UPDATES = _updates()
# One field each update changes on its own, and its new value. An update that takes a mask
# without an entry here fails the test until one is added.
UPDATE_EXAMPLES: dict[str, tuple[str, Any]] = {
    "TriggerService_UpdateTrigger": ("enabled", False),
    "EnvironmentService_UpdateEnvironment": ("description", "Changed on its own."),
    "HostService_UpdateHost": ("labels", {"changed": "alone"}),
}


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


def _admits(schema: dict[str, Any], value: Any) -> bool:
    # The document's components beside the schema: its "#/components/..." refs resolve.
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]}).is_valid(value)


def _create_to_update(client: httpx.Client, tenant: Tenant, path: str) -> dict[str, Any]:
    """A new resource of the collection `path` updates ("/api/v1/hosts/{id}"), as created."""
    collection = path.removesuffix("/{id}")
    bodies: dict[str, dict[str, Any]] = {
        "/api/v1/environments": {},
        "/api/v1/hosts": {"environment_id": tenant.environment_id},
        "/api/v1/triggers": {
            "environment_id": tenant.environment_id,
            "task_prompt": EXAMPLES["task_prompt"](tenant),
            "webhook": {},
        },
    }
    body = {"name": EXAMPLES["name"](tenant), **bodies[collection]}
    response = client.post(collection, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


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


@pytest.mark.parametrize(
    ("operation", "path"), [(o, p) for o, p, _ in CREATES], ids=[c[0] for c in CREATES]
)
def test_a_create_the_document_says_needs_a_body_is_refused_without_one(
    roz: Roz, tenant: Tenant, operation: str, path: str
) -> None:
    assert DOCUMENT["paths"][path]["post"]["requestBody"]["required"] is True
    with roz.rest(tenant.key) as client:
        response = client.post(path)
    assert response.status_code == 400, response.text
    assert _violations(response), response.text


def test_every_update_with_a_mask_is_covered() -> None:
    assert {operation for operation, _, _ in UPDATES} == {
        "TriggerService_UpdateTrigger",
        "EnvironmentService_UpdateEnvironment",
        "HostService_UpdateHost",
    }


@pytest.mark.parametrize(("operation", "method", "path"), UPDATES, ids=[u[0] for u in UPDATES])
def test_an_update_with_a_mask_takes_a_body_of_only_the_fields_it_names(
    roz: Roz, tenant: Tenant, operation: str, method: str, path: str
) -> None:
    assert operation in UPDATE_EXAMPLES, f"{operation}: add a field it updates on its own"
    field, value = UPDATE_EXAMPLES[operation]
    body = {field: value}
    document = DOCUMENT["paths"][path][method]
    resource = document["responses"]["200"]["content"]["application/json"]["schema"]
    assert not _admits(resource, body)  # the resource requires what this body leaves out
    assert _admits(document["requestBody"]["content"]["application/json"]["schema"], body)
    with roz.rest(tenant.key) as client:
        created = _create_to_update(client, tenant, path)
        response = client.request(
            method,
            path.format(id=created["id"]),
            params={"update_mask": field},
            json=body,
        )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated[field] == value
    assert updated["name"] == created["name"]  # not named in the mask: kept


@pytest.mark.parametrize(("operation", "method", "path"), UPDATES, ids=[u[0] for u in UPDATES])
def test_without_a_mask_an_update_needs_the_whole_resource(
    roz: Roz, tenant: Tenant, operation: str, method: str, path: str
) -> None:
    field, value = UPDATE_EXAMPLES[operation]
    document = DOCUMENT["paths"][path][method]
    assert "the body is the whole resource" in document["requestBody"]["description"]
    resource = document["responses"]["200"]["content"]["application/json"]["schema"]
    required = _resolve(resource)["required"]
    with roz.rest(tenant.key) as client:
        created = _create_to_update(client, tenant, path)
        response = client.request(method, path.format(id=created["id"]), json={field: value})
    assert response.status_code == 400, response.text
    named = {violation.rsplit(".", 1)[-1] for violation in _violations(response)}
    assert named & set(required), (named, required)
