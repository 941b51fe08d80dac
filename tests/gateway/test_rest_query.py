"""REST query strings: nested, repeated, map, enum, well-known types; unknown and strict keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.registry import MethodRegistry
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    rest_server,
    rule,
    snake_case_message,
    violated_fields,
    violations,
)


async def page_echo(request: Any, context: Any) -> Any:
    return request


def add_pages(registry: MethodRegistry) -> None:
    add_service(
        registry,
        [
            FakeMethod(
                "GetPage",
                rule(get="/v1/pages"),
                page_echo,
                input_type="Page",
                output_type="Page",
            )
        ],
        [snake_case_message()],
    )


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(extra=add_pages) as server:
        yield server


@pytest.fixture(scope="module")
def strict() -> Iterator[RestServer]:
    with rest_server(reject_unknown_query_parameters=True) as server:
        yield server


def query(rest: RestServer, params: Any, path: str = "/v1/echo/q") -> dict[str, Any]:
    response = rest.client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()["echoed"]  # type: ignore[no-any-return]


def test_scalars_and_nested_fields(rest: RestServer) -> None:
    echoed = query(
        rest,
        [("count", "7"), ("big", "9007199254740993"), ("nested.value", "deep"), ("code", "-2")],
    )
    assert echoed["count"] == 7
    assert echoed["big"] == "9007199254740993"
    assert echoed["nested"]["value"] == "deep"
    assert echoed["code"] == -2


def test_repeated_keys_append_in_order(rest: RestServer) -> None:
    echoed = query(
        rest, [("tags", "b"), ("tags", "a"), ("nested.numbers", "3"), ("nested.numbers", "1")]
    )
    assert echoed["tags"] == ["b", "a"]
    assert echoed["nested"]["numbers"] == [3, 1]


def test_map_entries_use_brackets(rest: RestServer) -> None:
    echoed = query(rest, [("labels[env]", "prod"), ("labels[team]", "robots")])
    assert echoed["labels"] == {"env": "prod", "team": "robots"}


@pytest.mark.parametrize("spelling", ["COLOR_GREEN", "2", "green", "Color_Green"])
def test_enum_by_name_number_or_lenient_spelling(rest: RestServer, spelling: str) -> None:
    assert query(rest, {"color": spelling})["color"] == "COLOR_GREEN"


def test_bad_enum_is_400_listing_the_values(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/q", params={"color": "purple"})
    assert response.status_code == 400
    (violation,) = violations(response.json())
    assert violation["field"] == "color"
    assert "COLOR_RED" in violation["description"]


def test_timestamp_in_rfc3339_with_offset(rest: RestServer) -> None:
    echoed = query(rest, {"when": "2024-05-01T12:00:00.5+02:00"})
    assert echoed["when"] == "2024-05-01T10:00:00.500Z"


@pytest.mark.parametrize(
    ("text", "rendered"),
    [("1.5s", "1.500s"), ("1h2m", "3720s"), ("300ms", "0.300s"), ("-2.5m", "-150s"), ("0", "0s")],
)
def test_duration_in_proto_or_go_syntax(rest: RestServer, text: str, rendered: str) -> None:
    assert query(rest, {"delay": text})["delay"] == rendered


def test_field_mask_is_comma_separated(rest: RestServer) -> None:
    # Output uses the proto3 JSON form of a FieldMask: lowerCamel paths in one string.
    assert query(rest, {"mask": "nested.value,create_time,tags"})["mask"] == (
        "nested.value,createTime,tags"
    )


def test_wrapper_takes_the_bare_scalar(rest: RestServer) -> None:
    assert query(rest, {"limit": "5"})["limit"] == 5
    assert query(rest, {"limit": "0"})["limit"] == 0  # set to zero, not absent
    assert "limit" not in query(rest, {})


def test_bytes_in_standard_or_url_safe_base64(rest: RestServer) -> None:
    assert query(rest, {"blob": "+/8="})["blob"] == "+/8="
    assert query(rest, {"blob": "-_8"})["blob"] == "+/8="


def test_struct_from_json_text(rest: RestServer) -> None:
    assert query(rest, {"extra": '{"a": [1, "x"]}'})["extra"] == {"a": [1, "x"]}


def test_proto_and_lower_camel_names_are_both_accepted(rest: RestServer) -> None:
    response = rest.client.get(
        "/v1/pages",
        params={"page_size": "10", "nextPageToken": "t", "createTime": "2024-01-01T00:00:00Z"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "page_size": 10,
        "next_page_token": "t",
        "create_time": "2024-01-01T00:00:00Z",
        "total_count": "0",
    }


def test_unknown_parameters_are_ignored_by_default(rest: RestServer) -> None:
    echoed = query(rest, {"bogus": "1", "nested.nope": "2", "count": "3"})
    assert echoed["count"] == 3


def test_well_known_types_are_not_set_through_their_parts(
    rest: RestServer, strict: RestServer
) -> None:
    # `when.nanos=-1` built a Timestamp that failed in the servicer's conversion: a 500 the
    # fuzz tier found on GET /api/v1/metrics/tasks?start_time.nanos=-1.
    parts = {"when.nanos": "-1", "when.seconds": "5", "delay.nanos": "-7", "limit.value": "3"}
    echoed = query(rest, parts)
    assert "when" not in echoed or echoed["when"] is None
    response = strict.client.get("/v1/echo/q", params={"when.nanos": "-1"})
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["when.nanos"]
    assert query(rest, {"when": "2024-01-31T12:00:00Z"})["when"] == "2024-01-31T12:00:00Z"


def test_a_path_field_in_the_query_does_not_override_the_path(rest: RestServer) -> None:
    assert query(rest, {"message": "from-query"}, path="/v1/echo/from-path")["message"] == (
        "from-path"
    )


def test_strict_mode_refuses_unknown_parameters(strict: RestServer) -> None:
    response = strict.client.get("/v1/echo/q", params={"bogus": "1", "count": "2", "pretty": ""})
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["bogus"]
    path_field = strict.client.get("/v1/echo/q", params={"message": "x"})
    assert path_field.status_code == 400
    assert violated_fields(path_field.json()) == ["message"]
    assert strict.client.get("/v1/echo/q", params={"count": "2"}).status_code == 200


def test_query_is_ignored_when_the_body_takes_every_field(
    rest: RestServer, strict: RestServer
) -> None:
    response = rest.client.post("/v1/echo", params={"count": "5"}, json={"message": "m"})
    assert response.status_code == 200
    assert response.json()["echoed"]["count"] == 0
    refused = strict.client.post("/v1/echo", params={"count": "5"}, json={"message": "m"})
    assert refused.status_code == 400
    assert violated_fields(refused.json()) == ["count"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ([("count", "abc")], "count"),
        ([("count", "1.5")], "count"),
        ([("count", "99999999999")], "count"),
        ([("count", "1"), ("count", "2")], "count"),
        ([("nested", "x")], "nested"),
        ([("labels", "x")], "labels"),
        ([("when", "yesterday")], "when"),
        ([("delay", "5 minutes")], "delay"),
        ([("blob", "@@@")], "blob"),
        ([("extra", "{not json")], "extra"),
    ],
)
def test_bad_values_are_400_naming_the_parameter(
    rest: RestServer, params: list[tuple[str, str]], field: str
) -> None:
    response = rest.client.get("/v1/echo/q", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3
    assert field in violated_fields(body)


def test_every_bad_parameter_is_reported_at_once(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/q", params={"count": "x", "color": "nope"})
    assert response.status_code == 400
    assert sorted(violated_fields(response.json())) == ["color", "count"]
