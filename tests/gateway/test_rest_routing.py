"""REST routing: template precedence, `**`, custom verbs, %2F, and the routing errors 404/405."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.rest_harness import RestServer, rest_server


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server() as server:
        yield server


def echoed(rest: RestServer, path: str) -> dict[str, object]:
    response = rest.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()["echoed"]  # type: ignore[no-any-return]


def test_literal_segment_beats_a_wildcard(rest: RestServer) -> None:
    # EchoLiteral (GET /v1/echo/literal) is declared after Echo's /v1/echo/{message}.
    assert echoed(rest, "/v1/echo/literal")["message"] == "literal"
    assert echoed(rest, "/v1/echo/literally")["message"] == "literally"


def test_single_segment_variable_is_fully_decoded(rest: RestServer) -> None:
    assert echoed(rest, "/v1/echo/a%2Fb%20c%C3%A9")["message"] == "a/b cé"


def test_multi_segment_variable_keeps_escaped_slashes(rest: RestServer) -> None:
    echoed_ = echoed(rest, "/v1/shelves/s1/books/a/b%2Fc%20d")
    assert echoed_["shelf"] == "s1"
    assert echoed_["book"] == "a/b%2Fc d"


def test_double_wildcard_matches_zero_or_more_segments(rest: RestServer) -> None:
    assert echoed(rest, "/v1/shelves/s1/books/x/y/z")["book"] == "x/y/z"
    assert echoed(rest, "/v1/shelves/s1/books/one")["book"] == "one"
    assert echoed(rest, "/v1/shelves/s1/books/")["book"] == ""


def test_multi_segment_template_captures_its_literals(rest: RestServer) -> None:
    assert echoed(rest, "/v1/projects/p1/items/i2")["name"] == "projects/p1/items/i2"
    assert rest.client.get("/v1/projects/p1/things/i2").status_code == 404


def test_custom_verb_routes_to_its_own_binding(rest: RestServer) -> None:
    response = rest.client.post("/v1/echo/hello:shout", json={"value": "loud"})
    assert response.status_code == 200, response.text
    echoed_ = response.json()["echoed"]
    assert echoed_["message"] == "hello"
    assert echoed_["nested"]["value"] == "loud"


def test_a_colon_that_is_no_registered_verb_stays_in_the_value(rest: RestServer) -> None:
    assert echoed(rest, "/v1/echo/urn:thing")["message"] == "urn:thing"


def test_unknown_path_is_404_status_json(rest: RestServer) -> None:
    response = rest.client.get("/v2/nothing/here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == 5
    assert "/v2/nothing/here" in body["message"]


def test_wrong_method_on_a_known_path_is_405_with_allow(rest: RestServer) -> None:
    response = rest.client.put("/v1/echo/x", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, OPTIONS"
    assert response.json()["code"] == 12

    response = rest.client.delete("/v1/echo")
    assert response.status_code == 405
    assert response.headers["allow"] == "OPTIONS, POST"


def test_options_lists_the_bound_methods(rest: RestServer) -> None:
    response = rest.client.options("/v1/things/abc")
    assert response.status_code == 204
    assert response.headers["allow"] == "DELETE, OPTIONS"
    assert response.content == b""
    assert rest.client.options("/nowhere").status_code == 404


def test_allowed_methods_is_what_allow_lists(rest: RestServer) -> None:
    assert rest.app.allowed_methods("/v1/echo/x") == {"GET", "HEAD", "OPTIONS"}
    assert rest.app.allowed_methods("/v1/echo/literal") == {"GET", "HEAD", "OPTIONS"}
    assert rest.app.allowed_methods("/v1/echo") == {"POST", "OPTIONS"}
    assert rest.app.allowed_methods("/v1/echo/x:shout") == {"POST", "OPTIONS"}
    assert rest.app.allowed_methods("/v1/nothing") is None


def test_head_on_a_get_route_answers_headers_only(rest: RestServer) -> None:
    get = rest.client.get("/v1/echo/hi")
    head = rest.client.head("/v1/echo/hi")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == get.headers["content-length"]
    assert rest.client.head("/v1/fail/5").status_code == 404


def test_malformed_percent_escape_is_400(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/bad%zzescape")
    assert response.status_code == 400
    assert response.json()["code"] == 3


def test_path_value_of_the_wrong_type_is_400_naming_the_field(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/not-a-number")
    assert response.status_code == 400
    body = response.json()
    assert body["details"][0]["field_violations"][0]["field"] == "code"
