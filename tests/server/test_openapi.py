"""roz's OpenAPI document, built from the real descriptors and route table (nothing started)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from server.app import RozServer
from server.openapi import load_comments, roz_document
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
STATUS = {"$ref": "#/components/schemas/google.rpc.Status"}
OAUTH = {"$ref": "#/components/schemas/roz.OAuthError"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    server = RozServer(Settings(data_dir=tmp_path_factory.mktemp("data")))
    return roz_document(server.rest, server.access_rules, load_comments())


@pytest.fixture(scope="module")
def document(built: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(built)
    return loaded


def op(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][path][method]
    return found


def schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def test_the_document_is_valid_and_is_the_committed_one(built: bytes) -> None:
    validate(json.loads(built))
    assert built == (ROOT / "gen" / "openapi.json").read_bytes(), "run `make gen`"


def test_creates_answer_201_and_deletes_204_without_a_body(document: dict[str, Any]) -> None:
    create = op(document, "post", "/api/v1/environments")["responses"]
    assert "201" in create
    assert "200" not in create
    assert create["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/roz.v1.Environment"
    }
    delete = op(document, "delete", "/api/v1/environments/{id}")["responses"]
    assert "204" in delete
    assert "200" not in delete
    assert "content" not in delete["204"]


def test_path_templates_become_required_path_parameters(document: dict[str, Any]) -> None:
    estop = op(document, "get", "/api/v1/hosts/{host_id}/estop")
    (parameter,) = [p for p in estop["parameters"] if p["in"] == "path"]
    assert parameter == {
        "name": "host_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        **({"description": parameter["description"]} if "description" in parameter else {}),
    }


def test_list_filters_are_query_parameters_with_enums_by_name(document: dict[str, Any]) -> None:
    listing = op(document, "get", "/api/v1/commands")
    names = [p["name"] for p in listing["parameters"]]
    assert {"page_size", "page_token", "state"} <= set(names)
    state = next(p for p in listing["parameters"] if p["name"] == "state")
    enum = schema(document, state["schema"]["$ref"].rsplit("/", 1)[-1])
    assert enum["type"] == "string"
    assert "STATE_AWAITING_APPROVAL" in enum["enum"]
    assert all(isinstance(value, str) for value in enum["enum"])  # names, never numbers


def test_field_behaviours_proto_names_and_json_forms(document: dict[str, Any]) -> None:
    trigger = schema(document, "roz.v1.Trigger")
    assert trigger["required"] == ["name", "environment_id", "task_prompt"]
    properties = trigger["properties"]
    assert properties["id"]["readOnly"] is True  # OUTPUT_ONLY
    assert "task_prompt" in properties
    assert "taskPrompt" not in properties
    assert properties["create_time"]["format"] == "date-time"
    assert "oneof `condition`" in trigger["description"]
    sequence = schema(document, "roz.v1.WatchEvent")["properties"]["sequence"]
    assert sequence["type"] == "string"
    assert sequence["format"] == "int64"


def body_schema(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    body = op(document, method, path)["requestBody"]["content"]["application/json"]["schema"]
    return schema(document, body["$ref"].rsplit("/", 1)[-1])


def test_creates_say_what_they_require_and_what_the_server_sets(
    document: dict[str, Any],
) -> None:
    environment = body_schema(document, "post", "/api/v1/environments")
    assert environment["required"] == ["name"]
    for output in ("id", "host_ids", "create_time", "update_time"):
        assert environment["properties"][output]["readOnly"] is True, output
    assert "readOnly" not in environment["properties"]["name"]
    assert body_schema(document, "post", "/api/v1/tasks")["required"] == [
        "prompt",
        "environment_id",
    ]
    assert body_schema(document, "post", "/api/v1/commands")["required"] == ["host_id", "type"]
    assert body_schema(document, "post", "/api/v1/sessions")["required"] == ["host_id"]
    assert body_schema(document, "post", "/api/v1/auth-keys")["required"] == ["name"]


def test_what_no_method_changes_after_create_is_marked_immutable(
    document: dict[str, Any],
) -> None:
    task = schema(document, "roz.v1.Task")["properties"]
    assert task["prompt"]["x-immutable"] is True
    assert task["labels"]["x-immutable"] is True
    assert "x-immutable" not in task["state"]  # output only: changed by TransitionTask
    command = schema(document, "roz.v1.Command")["properties"]
    assert command["params"]["x-immutable"] is True
    host = schema(document, "roz.v1.Host")["properties"]
    assert "x-immutable" not in host["environment_id"]  # UpdateHost moves a host


@pytest.mark.parametrize("name", ["roz.v1.TriggerFire", "roz.v1.SessionTurn"])
def test_records_the_server_keeps_are_read_only_throughout(
    document: dict[str, Any], name: str
) -> None:
    properties = schema(document, name)["properties"]
    assert [field for field, value in properties.items() if value.get("readOnly") is not True] == []


def test_proto_comments_are_summaries_and_descriptions(document: dict[str, Any]) -> None:
    get = op(document, "get", "/api/v1/environments/{id}")
    assert get["summary"] == "Returns one environment."
    trigger = schema(document, "roz.v1.Trigger")
    assert trigger["properties"]["enabled"]["description"].startswith("A disabled trigger")


def test_each_operation_names_its_scope_and_public_ones_need_no_key(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    assert op(document, "get", "/api/v1/hosts")["security"] == [{"apiKey": ["hosts:read"]}]
    assert op(document, "post", "/api/v1/hosts")["security"] == [{"apiKey": ["hosts:write"]}]
    clear = op(document, "post", "/api/v1/hosts/{host_id}/estop/clear")
    assert clear["security"] == [{"apiKey": ["hosts:admin"]}]
    assert op(document, "get", "/api/v1/caller")["security"] == [{"apiKey": []}]
    health = op(document, "get", "/health")
    assert health["security"] == []
    assert "401" not in health["responses"]
    webhook = op(document, "post", "/api/v1/triggers/{trigger_id}/webhook")
    assert webhook["security"] == []
    assert "401" in webhook["responses"]  # the signature is the credential


def test_device_login_takes_forms_and_answers_oauth_errors(document: dict[str, Any]) -> None:
    token = op(document, "post", "/api/v1/device/token")
    content = token["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(content)
    responses = token["responses"]
    assert responses["400"]["content"]["application/json"]["schema"] == OAUTH
    assert responses["429"]["content"]["application/json"]["schema"] == OAUTH
    assert "401" not in responses
    oauth = schema(document, "roz.OAuthError")
    assert oauth["required"] == ["error"]
    assert "authorization_pending" in oauth["properties"]["error"]["enum"]
    # Approving is an ordinary JSON method with google.rpc.Status errors.
    approve = op(document, "post", "/api/v1/device/approve")
    assert approve["responses"]["403"]["content"]["application/json"]["schema"] == STATUS
    assert "application/x-www-form-urlencoded" not in approve["requestBody"]["content"]


def test_watches_are_ndjson_and_event_streams(document: dict[str, Any]) -> None:
    watch = op(document, "get", "/api/v1/hosts/{host_id}/watch")
    content = watch["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/event-stream"}
    line = content["application/x-ndjson"]["schema"]
    assert line["properties"]["result"] == {"$ref": "#/components/schemas/roz.v1.WatchEvent"}
    assert "after_sequence" in [p["name"] for p in watch["parameters"]]


def test_methods_without_rest_bindings_are_left_out(document: dict[str, Any]) -> None:
    methods = {o["x-grpc-method"] for item in document["paths"].values() for o in item.values()}
    assert "/roz.v1.SessionService/StreamSession" not in methods
    assert not [m for m in methods if m.startswith("/roz.v1.RobotLinkService/")]
    assert "/roz.v1.SessionService/CreateSession" in methods


# Each update with an update_mask: (method, path, resource, a body of one field and no required).
UPDATES = {
    "TriggerService_UpdateTrigger": (
        "patch",
        "/api/v1/triggers/{id}",
        "roz.v1.Trigger",
        {"enabled": False},
    ),
    "EnvironmentService_UpdateEnvironment": (
        "put",
        "/api/v1/environments/{id}",
        "roz.v1.Environment",
        {"description": "Only this."},
    ),
    "HostService_UpdateHost": ("put", "/api/v1/hosts/{id}", "roz.v1.Host", {"labels": {"a": "b"}}),
}


def admits(document: dict[str, Any], subschema: dict[str, Any], value: Any) -> bool:
    root = {**subschema, "components": document["components"]}
    return Draft202012Validator(root).is_valid(value)


def test_the_updates_with_an_update_mask_are_these(document: dict[str, Any]) -> None:
    masked = {
        operation["operationId"]
        for operations in document["paths"].values()
        for operation in operations.values()
        if "update_mask" in [p["name"] for p in operation.get("parameters", [])]
    }
    assert masked == set(UPDATES)


@pytest.mark.parametrize("operation_id", sorted(UPDATES))
def test_an_update_with_a_mask_takes_a_body_that_requires_nothing(
    document: dict[str, Any], operation_id: str
) -> None:
    method, path, resource, partial = UPDATES[operation_id]
    body = op(document, method, path)["requestBody"]
    taken = body["content"]["application/json"]["schema"]
    assert taken == {"$ref": f"#/components/schemas/{resource}-Update"}
    whole, update = schema(document, resource), schema(document, f"{resource}-Update")
    assert "required" not in update
    assert whole["required"]  # what a create requires stays required there
    assert update["properties"] == whole["properties"]
    assert not admits(document, {"$ref": f"#/components/schemas/{resource}"}, partial)
    assert admits(document, taken, partial)
    # Without a mask the servicer replaces every field: the description says so, by name.
    required = ", ".join(f"`{name}`" for name in whole["required"])
    assert body["description"].startswith("With `update_mask`, only the fields it names")
    assert (
        f"the body is the whole resource, its required fields ({required}) included"
        in (body["description"])
    )


def test_an_update_without_a_mask_keeps_the_whole_resource(document: dict[str, Any]) -> None:
    body = op(document, "put", "/api/v1/safety-policies/{id}")["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/roz.v1.SafetyPolicy"
    }
    assert "description" not in body


@pytest.mark.parametrize(
    ("method", "path", "required"),
    [
        ("post", "/api/v1/environments", True),  # body: "environment", REQUIRED
        ("put", "/api/v1/environments/{id}", True),  # an update's body too
        ("post", "/api/v1/sessions", True),  # body: "*" with REQUIRED host_id
        ("post", "/api/v1/commands/{id}/transition", True),  # body: "*", REQUIRED state
        ("post", "/api/v1/sessions/{session_id}:cancelTurn", False),  # nothing REQUIRED
        ("post", "/api/v1/device/code", False),
        ("post", "/api/v1/triggers/{trigger_id}/webhook", False),  # raw, not REQUIRED
    ],
)
def test_a_body_is_required_when_the_empty_message_would_leave_a_required_field_unset(
    document: dict[str, Any], method: str, path: str, required: bool
) -> None:
    assert op(document, method, path)["requestBody"]["required"] is required


def test_every_body_whose_schema_refuses_the_empty_object_is_required(
    document: dict[str, Any],
) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body is None or "application/json" not in body["content"]:
                continue
            taken = body["content"]["application/json"]["schema"]
            if not admits(document, taken, {}):
                assert body["required"] is True, (method, path)
