"""REST responses: proto3 JSON per Decision 2, ?pretty, declared success statuses, response_body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from gateway.registry import MethodRegistry
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    echo,
    echo_pb2,
    rest_server,
    rule,
    snake_case_message,
)


async def a_page(request: Any, context: Any) -> Any:
    page = type(request)()
    page.next_page_token = "tok"
    page.total_count = 2**60 + 1
    return page


def add_extra(registry: MethodRegistry) -> None:
    add_service(
        registry,
        [
            FakeMethod("Page", rule(get="/v1/page"), a_page, input_type="Page", output_type="Page"),
            FakeMethod("Inner", rule(get="/v1/inner/{message}", response_body="echoed"), echo),
        ],
        [snake_case_message()],
    )


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(extra=add_extra) as server:
        yield server


def test_int64_is_a_string_and_other_numbers_are_numbers(rest: RestServer) -> None:
    response = rest.client.post("/v1/echo", json={"big": "1152921504606846977", "count": 5})
    echoed = response.json()["echoed"]
    assert echoed["big"] == "1152921504606846977"
    assert echoed["count"] == 5


def test_enums_are_names(rest: RestServer) -> None:
    echoed = rest.client.post("/v1/echo", json={"color": 2}).json()["echoed"]
    assert echoed["color"] == "COLOR_GREEN"


def test_unpopulated_fields_are_emitted(rest: RestServer) -> None:
    echoed = rest.client.get("/v1/echo/x").json()["echoed"]
    assert echoed["count"] == 0
    assert echoed["big"] == "0"
    assert echoed["color"] == "COLOR_UNSPECIFIED"
    assert echoed["tags"] == []
    assert echoed["labels"] == {}
    assert echoed["blob"] == ""


def test_proto_field_names_not_lower_camel(rest: RestServer) -> None:
    body = rest.client.get("/v1/page").json()
    assert body == {
        "page_size": 0,
        "next_page_token": "tok",
        "total_count": str(2**60 + 1),
    }


def test_compact_by_default(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/x")
    assert response.headers["content-type"] == "application/json"
    assert b" " not in response.content
    assert b"\n" not in response.content
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize("query", ["pretty", "pretty=true", "pretty=1"])
def test_pretty_indents(rest: RestServer, query: str) -> None:
    response = rest.client.get(f"/v1/echo/x?{query}")
    assert response.status_code == 200
    assert response.text == json.dumps(response.json(), indent=2, ensure_ascii=False)


def test_pretty_false_stays_compact(rest: RestServer) -> None:
    assert b"\n" not in rest.client.get("/v1/echo/x?pretty=false").content


def test_pretty_applies_to_errors(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/5?pretty")
    assert response.status_code == 404
    assert response.text.startswith('{\n  "code": 5')


def test_declared_201_for_create(rest: RestServer) -> None:
    response = rest.client.post("/v1/things", json={"message": "new"})
    assert response.status_code == 201
    assert response.json()["echoed"]["message"] == "new"


def test_declared_204_sends_no_body(rest: RestServer) -> None:
    response = rest.client.delete("/v1/things/old")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers


def test_undeclared_status_is_200_whatever_the_verb(rest: RestServer) -> None:
    # POST /v1/echo is not a create: only the declared option makes a 201.
    assert rest.client.post("/v1/echo", json={}).status_code == 200


def test_response_body_names_the_field_to_send(rest: RestServer) -> None:
    body = rest.client.get("/v1/inner/only-this").json()
    assert body["message"] == "only-this"
    assert "echoed" not in body


def test_output_matches_json_format_of_the_same_message(rest: RestServer) -> None:
    document = {"message": "é", "tags": ["t"], "when": "2020-02-02T02:02:02Z"}
    response = rest.client.post("/v1/things", json=document)
    expected = json_format.MessageToDict(
        echo_pb2.EchoResponse(echoed=json_format.ParseDict(document, echo_pb2.EchoRequest())),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    assert response.json() == expected
    assert "é".encode() in response.content  # UTF-8, not \\u escapes
