"""REST request bodies: `*`, a named field or none; collisions, JSON faults, size, content type."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.registry import MethodRegistry
from gateway.rest.encoding import GzipBody
from gateway.rest.status import RestError
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    echo,
    rest_server,
    rule,
    snake_case_message,
    violated_fields,
    violations,
)

LIMIT = 4096


async def page_echo(request: Any, context: Any) -> Any:
    return request


def add_extra(registry: MethodRegistry) -> None:
    add_service(
        registry,
        [
            FakeMethod("Collide", rule(post="/v1/collide/{message}", body="*"), echo),
            FakeMethod("Nested", rule(post="/v1/nested/{nested.value}", body="nested"), echo),
            FakeMethod("Tags", rule(post="/v1/tags", body="tags"), echo),
            FakeMethod(
                "PutPage",
                rule(put="/v1/pages", body="*"),
                page_echo,
                input_type="Page",
                output_type="Page",
            ),
        ],
        [snake_case_message()],
    )


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(extra=add_extra, max_body_bytes=LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def exact_enums() -> Iterator[RestServer]:
    with rest_server(lenient_enums=False) as server:
        yield server


def test_body_star_fills_the_whole_request(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/echo", json={"message": "m", "count": 2, "tags": ["x"], "nested": {"value": "v"}}
    )
    assert response.status_code == 200, response.text
    echoed = response.json()["echoed"]
    assert (echoed["message"], echoed["count"], echoed["tags"]) == ("m", 2, ["x"])
    assert echoed["nested"]["value"] == "v"


def test_named_body_field_takes_the_body_and_the_query_the_rest(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/echo/hi:shout",
        params={"count": "3", "nested.value": "ignored: the body owns nested"},
        json={"value": "v", "numbers": [1, 2]},
    )
    assert response.status_code == 200, response.text
    echoed = response.json()["echoed"]
    assert echoed["message"] == "hi"
    assert echoed["count"] == 3
    assert echoed["nested"] == {"value": "v", "numbers": [1, 2]}


def test_a_method_without_body_refuses_one(rest: RestServer) -> None:
    response = rest.client.request("DELETE", "/v1/things/x", json={"message": "no"})
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["body"]
    assert rest.client.request("DELETE", "/v1/things/x", content=b"{}").status_code == 204


def test_path_and_body_that_agree_are_fine(rest: RestServer) -> None:
    response = rest.client.post("/v1/collide/same", json={"message": "same", "count": 1})
    assert response.status_code == 200
    assert response.json()["echoed"]["message"] == "same"
    filled = rest.client.post("/v1/collide/from-path", json={"count": 1})
    assert filled.json()["echoed"]["message"] == "from-path"


def test_path_and_body_that_disagree_are_400(rest: RestServer) -> None:
    response = rest.client.post("/v1/collide/path-value", json={"message": "body-value"})
    assert response.status_code == 400
    (violation,) = violations(response.json())
    assert violation["field"] == "message"
    assert "path-value" in violation["description"]
    assert "body-value" in violation["description"]


def test_a_nested_path_field_inside_a_named_body(rest: RestServer) -> None:
    ok = rest.client.post("/v1/nested/v1", json={"numbers": [4]})
    assert ok.status_code == 200
    assert ok.json()["echoed"]["nested"] == {"value": "v1", "numbers": [4]}
    clash = rest.client.post("/v1/nested/v1", json={"value": "v2"})
    assert clash.status_code == 400
    assert violated_fields(clash.json()) == ["nested.value"]


def test_a_repeated_body_field_takes_a_json_array(rest: RestServer) -> None:
    response = rest.client.post("/v1/tags", params={"message": "m"}, json=["a", "b"])
    assert response.status_code == 200, response.text
    assert response.json()["echoed"]["tags"] == ["a", "b"]
    assert response.json()["echoed"]["message"] == "m"
    refused = rest.client.post("/v1/tags", json={"tags": ["a"]})
    assert refused.status_code == 400
    assert violated_fields(refused.json()) == ["tags"]


def test_lower_camel_and_proto_names_are_accepted(rest: RestServer) -> None:
    response = rest.client.put("/v1/pages", json={"pageSize": 3, "next_page_token": "n"})
    assert response.status_code == 200, response.text
    assert response.json()["page_size"] == 3
    assert response.json()["next_page_token"] == "n"


def test_int64_accepts_strings_and_numbers(rest: RestServer) -> None:
    for value in ("9007199254740993", 12):
        response = rest.client.post("/v1/echo", json={"big": value})
        assert response.json()["echoed"]["big"] == str(value)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"nested": {"value": "v", "nope": 2}}, "nested.nope"),
        ({"count": "many"}, "count"),
        ({"tags": "not-a-list"}, "tags"),
        ({"when": "yesterday"}, "when"),
        ({"nested": {"numbers": [1, "x"]}}, "nested.numbers[1]"),
    ],
)
def test_field_faults_are_400_naming_the_field(
    rest: RestServer, document: dict[str, Any], field: str
) -> None:
    response = rest.client.post("/v1/echo", json=document)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3
    assert violated_fields(body) == [field]


INT32 = "an int32 (a whole number from -2147483648 to 2147483647)"
INT64 = "an int64 (a whole number from -9223372036854775808 to 9223372036854775807)"


# Every kind of field, each given JSON of a wrong type, out of range, or null where null is no
# value: a 400 whose one violation names the field (down to the item) and what it takes.
@pytest.mark.parametrize(
    ("document", "field", "wanted"),
    [
        ({"name": 5}, "name", "name must be a string, not the number 5"),
        ({"name": True}, "name", "name must be a string, not true"),
        ({"name": {}}, "name", "name must be a string, not an object"),
        ({"blob": 5}, "blob", "blob must be a base64 string, not the number 5"),
        ({"count": "many"}, "count", f'count must be {INT32}, not the string "many"'),
        ({"count": 1.5}, "count", f"count must be {INT32}, not the number 1.5"),
        ({"count": 2**31}, "count", f"count must be {INT32}, not the number 2147483648"),
        ({"count": True}, "count", f"count must be {INT32}, not true"),
        ({"big": 2**63}, "big", f"big must be {INT64}, not the number 9223372036854775808"),
        ({"big": [1]}, "big", f"big must be {INT64}, not an array"),
        ({"limit": "x"}, "limit", f'limit must be {INT32}, not the string "x"'),
        ({"color": [1]}, "color", "color: invalid value [1] for enum"),
        ({"color": "BLUE"}, "color", 'color: invalid value "BLUE" for enum'),
        ({"nested": 5}, "nested", "nested must be a JSON object (testing.echo.v1.Nested)"),
        ({"nested": {"value": 1}}, "nested.value", "nested.value must be a string, not"),
        ({"tags": "a"}, "tags", "tags must be a JSON array whose items are each a string"),
        ({"tags": ["a", 1]}, "tags[1]", "tags[1] must be a string, not the number 1"),
        ({"tags": [None]}, "tags[0]", "tags[0] must be a string, not null"),
        ({"labels": [1]}, "labels", "labels must be a JSON object (a map to a string)"),
        ({"labels": {"k": 1}}, 'labels["k"]', 'labels["k"] must be a string, not the number 1'),
        ({"labels": {"k": None}}, 'labels["k"]', 'labels["k"] must be a string, not null'),
        ({"when": 5}, "when", "when must be an RFC 3339 timestamp string"),
        ({"when": "yesterday"}, "when", "invalid value for when: "),
        ({"delay": True}, "delay", 'delay must be a duration string such as "1.5s", not true'),
        ({"mask": {}}, "mask", "mask must be a string of comma-separated field paths"),
        ({"extra": [1]}, "extra", "extra must be a JSON object (google.protobuf.Struct)"),
        (
            {"nested": {"numbers": [1, 2**40]}},
            "nested.numbers[1]",
            f"nested.numbers[1] must be {INT32}",
        ),
    ],
)
def test_a_json_value_of_the_wrong_type_names_the_field_and_what_it_takes(
    rest: RestServer, document: dict[str, Any], field: str, wanted: str
) -> None:
    response = rest.client.post("/v1/echo", json=document)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3
    (violation,) = violations(body)
    assert violation["field"] == field
    assert violation["description"].startswith(wanted), violation["description"]
    assert body["message"] == violation["description"]


def test_null_is_the_default_of_a_singular_field(rest: RestServer) -> None:
    document = {"name": None, "count": None, "nested": None, "color": None, "tags": None}
    response = rest.client.post("/v1/echo", json=document)
    assert response.status_code == 200, response.text
    assert response.json()["echoed"]["name"] == ""


def test_malformed_json_says_where(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/echo",
        content=b'{"message": "m",\n "count": }',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    (violation,) = violations(response.json())
    assert violation["field"] == "body"
    assert "line 2 column" in violation["description"]


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b'"text"', b'{"message": "a", "message": "b"}', b"\xff\xfe{}"],
)
def test_bodies_that_are_not_one_json_object_are_400(rest: RestServer, content: bytes) -> None:
    response = rest.client.post("/v1/echo", content=content)
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["body"]


def test_json_nesting_too_deep_is_400(rest: RestServer) -> None:
    deep: Any = "leaf"
    for _ in range(80):
        deep = {"a": deep}
    response = rest.client.post("/v1/echo", json={"extra": deep})
    assert response.status_code == 400
    assert "too deep" in response.json()["message"]
    very_deep = b"[" * 1500 + b"]" * 1500  # deeper than the JSON parser recurses
    response = rest.client.post("/v1/echo", content=very_deep)
    assert response.status_code == 400
    assert "too deep" in response.json()["message"]


def test_declared_oversized_body_is_413_before_reading(rest: RestServer) -> None:
    response = rest.client.post("/v1/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == 8
    assert str(LIMIT) in body["message"]


def test_streamed_oversized_body_is_413(rest: RestServer) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b" " * 1024
            time.sleep(0.01)

    try:
        response = rest.client.post("/v1/echo", content=chunks())
    except httpx.TransportError:
        pytest.fail("the server should answer before the client gives up")
    assert response.status_code == 413
    assert response.json()["code"] == 8
    assert len(sent) < 64  # the server stopped reading early


def test_a_body_within_the_limit_is_served(rest: RestServer) -> None:
    message = "y" * (LIMIT - 100)
    response = rest.client.post("/v1/echo", json={"message": message})
    assert response.status_code == 200
    assert response.json()["echoed"]["message"] == message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_type_is_415(rest: RestServer, content_type: str) -> None:
    response = rest.client.post(
        "/v1/echo", content=b'{"message": "m"}', headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert response.json()["code"] == 3


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/merge-patch+json", None],
)
def test_json_content_types_are_accepted(rest: RestServer, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = rest.client.post("/v1/echo", content=b'{"message": "m"}', headers=headers)
    assert response.status_code == 200, response.text


def test_an_empty_body_needs_no_content_type(rest: RestServer) -> None:
    assert rest.client.post("/v1/things").status_code == 201
    assert rest.client.post("/v1/things", headers={"content-type": "text/plain"}).status_code == 201


@pytest.mark.parametrize("spelling", ["COLOR_RED", "red", "RED", "Color_Red", 1])
def test_lenient_enums_in_json(rest: RestServer, spelling: object) -> None:
    response = rest.client.post("/v1/echo", json={"color": spelling})
    assert response.status_code == 200, response.text
    assert response.json()["echoed"]["color"] == "COLOR_RED"


def test_bad_enum_in_json_is_400_with_the_field(rest: RestServer) -> None:
    response = rest.client.post("/v1/echo", json={"color": "BLUE"})
    assert response.status_code == 400
    (violation,) = violations(response.json())
    assert violation["field"] == "color"
    assert "COLOR_GREEN" in violation["description"]


def test_exact_enums_when_leniency_is_off(exact_enums: RestServer) -> None:
    assert exact_enums.client.post("/v1/echo", json={"color": "COLOR_RED"}).status_code == 200
    response = exact_enums.client.post("/v1/echo", json={"color": "red"})
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["color"]
    assert exact_enums.client.get("/v1/echo/x", params={"color": "red"}).status_code == 400


def test_the_connection_survives_a_refused_body(rest: RestServer) -> None:
    with httpx.Client(base_url=rest.server.url) as client:
        assert client.put("/v1/echo/x", content=json.dumps({"a": 1})).status_code == 405
        assert client.get("/v1/echo/again").status_code == 200


# -- Content-Encoding ----------------------------------------------------------------------------


def _gzipped(document: Any) -> bytes:
    return gzip.compress(json.dumps(document).encode())


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "x-gzip", "identity, gzip"])
def test_a_gzip_body_is_inflated(rest: RestServer, coding: str) -> None:
    # It used to be read as the JSON text itself: "the body is not valid UTF-8".
    headers = {"content-type": "application/json", "content-encoding": coding}
    response = rest.client.post("/v1/echo", content=_gzipped({"message": "zip"}), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["echoed"]["message"] == "zip"


def test_a_streamed_gzip_body_of_several_members_is_inflated(rest: RestServer) -> None:
    text = json.dumps({"message": "two members", "tags": ["a"] * 200}).encode()
    body = gzip.compress(text[:100]) + gzip.compress(text[100:])

    def chunks() -> Iterator[bytes]:  # no Content-Length, cut inside the gzip headers
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = rest.client.post("/v1/echo", content=chunks(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["echoed"]["message"] == "two members"


def test_a_gzip_bomb_is_413(rest: RestServer) -> None:
    bomb = gzip.compress(json.dumps({"message": "x" * (LIMIT * 1000)}).encode())
    assert len(bomb) < LIMIT
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = rest.client.post("/v1/echo", content=bomb, headers=headers)
    assert response.status_code == 413
    assert (
        response.json()["message"]
        == f"the request body is larger than {LIMIT} bytes once decompressed"
    )


def test_a_gzip_bomb_is_never_inflated_past_the_limit() -> None:
    bomb = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    data = bomb.compress(bytes(64 * 1024 * 1024)) + bomb.flush()  # 64 MiB in about 64 KiB
    decoder = GzipBody(LIMIT)
    tracemalloc.start()
    try:
        with pytest.raises(RestError) as refused:
            decoder.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.http_status == 413
    assert peak < 1024 * 1024


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x1f\x8b not gzip at all", "the body is not valid gzip"),
        (b"{}", "the body is not valid gzip"),
        (gzip.compress(b'{"message": "cut"}')[:-6], "the gzip body is truncated"),
        (gzip.compress(b"{}") + b"trailing", "the body is not valid gzip"),
    ],
)
def test_a_broken_gzip_body_is_400(rest: RestServer, content: bytes, why: str) -> None:
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = rest.client.post("/v1/echo", content=content, headers=headers)
    assert response.status_code == 400
    (violation,) = violations(response.json())
    assert (violation["field"], violation["description"]) == ("body", why)


@pytest.mark.parametrize("coding", ["br", "deflate", "gzip, gzip", "zstd"])
def test_an_unsupported_content_encoding_is_415_saying_what_is_accepted(
    rest: RestServer, coding: str
) -> None:
    headers = {"content-type": "application/json", "content-encoding": coding}
    response = rest.client.post("/v1/echo", content=b"\x00\x01", headers=headers)
    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "gzip, identity"
    assert coding in response.json()["message"]
