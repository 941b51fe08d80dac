"""Form bodies (application/x-www-form-urlencoded) on a method whose options take them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.rest import RestMethodOptions
from gateway.rest.query import MAX_QUERY_PARAMETERS
from tests.gateway.rest_harness import RestServer, rest_server, violated_fields

FORM = "application/x-www-form-urlencoded"
SUBMIT = "/v1/shelves/s1:submit"
OPTIONS = {"/testing.echo.v1.EchoService/Submit": RestMethodOptions(form_body=True)}


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(method_options=OPTIONS) as server:
        yield server


@pytest.fixture(scope="module")
def strict() -> Iterator[RestServer]:
    with rest_server(method_options=OPTIONS, reject_unknown_query_parameters=True) as server:
        yield server


def submit(
    rest: RestServer,
    form: bytes | str,
    path: str = SUBMIT,
    content_type: str = FORM,
    **kwargs: Any,
) -> Any:
    content = form.encode() if isinstance(form, str) else form
    return rest.client.post(path, content=content, headers={"content-type": content_type}, **kwargs)


def echoed(rest: RestServer, form: bytes | str, **kwargs: Any) -> dict[str, Any]:
    """The fields the request had set (the printer writes every field, set or not)."""
    response = submit(rest, form, **kwargs)
    assert response.status_code == 200, response.text
    return given(response.json()["echoed"])


def given(fields: dict[str, Any]) -> dict[str, Any]:
    unset: tuple[Any, ...] = ("", 0, "0", [], {}, "COLOR_UNSPECIFIED")
    return {name: value for name, value in fields.items() if value not in unset}


def refused(rest: RestServer, form: bytes | str, **kwargs: Any) -> list[str]:
    response = submit(rest, form, **kwargs)
    assert response.status_code == 400, response.text
    return violated_fields(response.json())


# -- fields ---------------------------------------------------------------------------------------


def test_pairs_set_fields_as_query_parameters_would(rest: RestServer) -> None:
    got = echoed(
        rest,
        "message=hello+world%21&count=3&big=9007199254740993&color=COLOR_RED"
        "&nested.value=deep&when=2024-05-01T12:00:00Z&delay=1.5s&limit=7",
    )
    assert got == {
        "message": "hello world!",
        "count": 3,
        "big": "9007199254740993",
        "color": "COLOR_RED",
        "nested": {"value": "deep", "numbers": []},
        "when": "2024-05-01T12:00:00Z",
        "delay": "1.500s",
        "limit": 7,
        "shelf": "s1",
    }


@pytest.mark.parametrize("name", ["pageToken", "page_token"])
def test_lower_camel_and_proto_names_both_work(rest: RestServer, name: str) -> None:
    assert echoed(rest, f"{name}=abc")["page_token"] == "abc"


def test_repeated_fields_repeat_their_key(rest: RestServer) -> None:
    got = echoed(rest, "tags=a&tags=b&nested.numbers=1&nested.numbers=2")
    assert got["tags"] == ["a", "b"]
    assert got["nested"]["numbers"] == [1, 2]


def test_map_entries(rest: RestServer) -> None:
    assert echoed(rest, "labels[env]=prod&labels[team]=core")["labels"] == {
        "env": "prod",
        "team": "core",
    }


def test_enums_are_matched_leniently(rest: RestServer) -> None:
    assert echoed(rest, "color=red")["color"] == "COLOR_RED"


def test_utf8_raw_and_escaped(rest: RestServer) -> None:
    assert echoed(rest, "message=caf%C3%A9")["message"] == "café"
    assert echoed(rest, "message=café".encode())["message"] == "café"


def test_an_empty_form_sets_only_the_path(rest: RestServer) -> None:
    assert echoed(rest, b"") == {"shelf": "s1"}


# -- what a form may and may not say --------------------------------------------------------------


def test_unknown_names_are_ignored(rest: RestServer) -> None:
    got = echoed(rest, "grant_type=device_code&message=hi&nested.nope=1&nope[key]=2&tags.x=3")
    assert got == {"message": "hi", "shelf": "s1"}


def test_unknown_names_are_ignored_even_when_the_query_is_strict(strict: RestServer) -> None:
    assert echoed(strict, "grant_type=device_code&message=hi")["message"] == "hi"


def test_a_singular_field_given_twice_is_refused(rest: RestServer) -> None:
    assert refused(rest, "message=one&message=two") == ["message"]
    assert refused(rest, "page_token=one&pageToken=two") == ["pageToken"]
    assert refused(rest, "message=same&message=same") == ["message"]


def test_a_pair_without_a_value_counts_as_omitted(rest: RestServer) -> None:
    assert echoed(rest, "message=&count=&color=") == {"shelf": "s1"}
    assert echoed(rest, "message=&message=kept&tags=&tags=a")["message"] == "kept"
    assert echoed(rest, "message=&message=kept&tags=&tags=a")["tags"] == ["a"]


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ("count=many", "count"),
        ("color=COLOR_PURPLE", "color"),
        ("when=yesterday", "when"),
        ("nested=x", "nested"),  # a message: name its fields instead
    ],
)
def test_bad_values_are_field_violations(rest: RestServer, form: str, field: str) -> None:
    assert refused(rest, form) == [field]


@pytest.mark.parametrize("form", [b"message=caf\xe9", b"message=%FF", b"%FF=x"])
def test_invalid_utf8_is_refused(rest: RestServer, form: bytes) -> None:
    response = submit(rest, form)
    assert response.status_code == 400
    assert violated_fields(response.json()) == ["body"]
    assert "UTF-8" in response.json()["message"]


def test_the_number_of_pairs_is_bounded(rest: RestServer) -> None:
    at_limit = "&".join(f"tags={i}" for i in range(MAX_QUERY_PARAMETERS))
    assert len(echoed(rest, at_limit)["tags"]) == MAX_QUERY_PARAMETERS
    assert refused(rest, at_limit + "&tags=one-more") == ["body"]


# -- the path, the query, the content type --------------------------------------------------------


def test_the_path_must_agree_with_the_form(rest: RestServer) -> None:
    assert echoed(rest, "shelf=s1&message=hi")["shelf"] == "s1"
    assert refused(rest, "shelf=s2") == ["shelf"]


def test_query_parameters_are_ignored_as_for_any_body_star(rest: RestServer) -> None:
    got = echoed(rest, "message=from-form", params={"message": "from-query", "count": 3})
    assert got == {"message": "from-form", "shelf": "s1"}


def test_query_parameters_are_refused_when_strict_as_for_any_body_star(
    strict: RestServer,
) -> None:
    assert refused(strict, "message=hi", params={"count": 3}) == ["count"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded;charset=UTF-8",
        "Application/X-WWW-Form-URLEncoded",
    ],
)
def test_the_content_type_may_carry_a_charset_and_any_case(
    rest: RestServer, content_type: str
) -> None:
    assert echoed(rest, "message=hi", content_type=content_type)["message"] == "hi"


def test_json_still_works_on_a_form_method(rest: RestServer) -> None:
    response = rest.client.post(SUBMIT, json={"message": "hi", "count": 2})
    assert response.status_code == 200
    assert given(response.json()["echoed"]) == {"message": "hi", "count": 2, "shelf": "s1"}


def test_a_form_is_not_mistaken_for_json(rest: RestServer) -> None:
    assert echoed(rest, '{"message": "hi"}') == {"shelf": "s1"}  # one unknown name, no value


@pytest.mark.parametrize("path", ["/v1/things", "/v1/echo"])
def test_a_form_on_a_method_without_form_body_is_415(rest: RestServer, path: str) -> None:
    response = submit(rest, "message=hi", path=path)
    assert response.status_code == 415
    assert response.json()["message"].endswith("send application/json")


def test_the_415_of_a_form_method_names_both_types(rest: RestServer) -> None:
    response = submit(rest, "message=hi", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["message"].endswith(f"send application/json or {FORM}")
