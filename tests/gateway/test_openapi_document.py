"""The OpenAPI generator on the gateway's test service: what the transcoder does, documented."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openapi_spec_validator import validate

from gateway.openapi import DocumentOptions, build_document, dumps
from gateway.rest import RestApp
from tests.gateway.rest_harness import echo_registry


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    registry, _ = echo_registry()
    app = RestApp(registry)
    return build_document(app.bindings(), DocumentOptions(title="echo", version="1"))


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][path][method]
    return found


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_binding_is_an_operation_and_unbound_methods_are_not(
    document: dict[str, Any],
) -> None:
    grpc_methods = {
        op["x-grpc-method"] for item in document["paths"].values() for op in item.values()
    }
    assert "/testing.echo.v1.EchoService/Echo" in grpc_methods
    assert "/testing.echo.v1.EchoService/Chat" not in grpc_methods  # bidi, no http rule
    echo_ids = sorted(
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if op["x-grpc-method"].endswith("/Echo")
    )
    assert echo_ids == [
        "EchoService_Echo",
        "EchoService_Echo_1",
        "EchoService_Echo_2",
        "EchoService_Echo_3",
    ]


def test_multi_segment_captures_are_one_parameter_with_their_pattern(
    document: dict[str, Any],
) -> None:
    books = operation(document, "get", "/v1/shelves/{shelf}/books/{book}")
    book = next(p for p in books["parameters"] if p["name"] == "book")
    assert book["in"] == "path"
    assert book["required"] is True
    assert book["schema"]["pattern"] == "^.*$"
    resource = operation(document, "get", "/v1/{name}")
    name = next(p for p in resource["parameters"] if p["name"] == "name")
    assert name["schema"]["pattern"] == "^projects/[^/]+/items/[^/]+$"


def test_success_statuses_come_from_the_http_response_option(document: dict[str, Any]) -> None:
    assert next(iter(operation(document, "post", "/v1/things")["responses"])) == "201"
    assert "200" not in operation(document, "post", "/v1/things")["responses"]


def test_query_parameters_are_the_fields_neither_path_nor_body_binds(
    document: dict[str, Any],
) -> None:
    shout = operation(document, "post", "/v1/echo/{message}:shout")
    names = {p["name"] for p in shout["parameters"] if p["in"] == "query"}
    assert "message" not in names  # the path's
    assert "nested" not in names  # the body's
    assert "limit" in names
    star = operation(document, "post", "/v1/echo")
    assert not [p for p in star.get("parameters", []) if p["in"] == "query"]  # body: "*"


def test_well_known_types_take_their_json_forms(document: dict[str, Any]) -> None:
    request = document["components"]["schemas"]["testing.echo.v1.EchoRequest"]["properties"]
    assert request["limit"]["type"] == ["integer", "null"]  # Int32Value: the value, or null
    assert request["extra"]["type"] == "object"  # Struct: any JSON object


def test_raw_http_body_takes_any_content_type(document: dict[str, Any]) -> None:
    receive = operation(document, "post", "/v1/hooks/{hook}:receive")
    assert list(receive["requestBody"]["content"]) == ["*/*"]


def test_server_streams_are_ndjson_or_server_sent_events(document: dict[str, Any]) -> None:
    content = operation(document, "get", "/v1/expand")["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/event-stream"}
    line = content["application/x-ndjson"]["schema"]
    assert set(line["properties"]) == {"result", "error"}


def test_errors_are_google_rpc_status_with_typed_details(document: dict[str, Any]) -> None:
    responses = operation(document, "get", "/v1/echo/{message}")["responses"]
    for status in ("400", "401", "403", "404", "409", "429", "500", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/google.rpc.Status"}
    status = document["components"]["schemas"]["google.rpc.Status"]
    kinds = [
        d["allOf"][1]["properties"]["@type"]["const"]
        for d in status["properties"]["details"]["items"]["anyOf"]
    ]
    assert "type.googleapis.com/google.rpc.BadRequest" in kinds
    assert "type.googleapis.com/google.rpc.RetryInfo" in kinds
    assert responses["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer"


def test_the_spelling_is_canonical() -> None:
    registry, _ = echo_registry()
    bindings = RestApp(registry).bindings()
    options = DocumentOptions(title="echo", version="1")
    first = dumps(build_document(bindings, options))
    assert first == dumps(build_document(bindings, options))
    assert first.endswith(b"}\n")
    assert json.loads(first)["info"]["title"] == "echo"


def test_a_field_mask_of_another_name_makes_no_update(document: dict[str, Any]) -> None:
    # EchoRequest has a FieldMask `mask` beside the body field `nested`: not AIP-134's update_mask.
    shout = operation(document, "post", "/v1/echo/{message}:shout")["requestBody"]
    assert shout["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/testing.echo.v1.Nested"
    }
    assert shout["required"] is False  # `nested` is not REQUIRED: an empty body is taken
    assert not [name for name in document["components"]["schemas"] if name.endswith("-Update")]
