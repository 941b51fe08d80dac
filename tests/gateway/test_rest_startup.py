"""REST start-up: rules read from descriptors; duplicate, ambiguous or unservable rules refused."""

from __future__ import annotations

import pytest

from gateway.chain import InterceptorChain
from gateway.registry import MethodRegistry
from gateway.rest import BindingError, RestApp, RouteConflictError, TemplateError
from gateway.rest.templates import parse_template
from tests.gateway.rest_harness import FakeMethod, add_service, echo, echo_registry, rule


def app_with(*methods: FakeMethod) -> RestApp:
    registry = MethodRegistry(InterceptorChain())
    add_service(registry, methods)
    return RestApp(registry)


def test_the_echo_service_starts_and_binds_every_rule() -> None:
    registry, _ = echo_registry()
    app = RestApp(registry)
    assert app.allowed_methods("/v1/echo") == {"POST", "OPTIONS"}
    assert app.allowed_methods("/v1/shelves/a/books/b/c") == {"GET", "HEAD", "OPTIONS"}
    assert app.allowed_methods("/v1/things") == {"POST", "OPTIONS"}


def test_two_templates_of_one_shape_and_method_are_refused() -> None:
    with pytest.raises(RouteConflictError) as raised:
        app_with(
            FakeMethod("First", rule(get="/v1/items/{message}"), echo),
            FakeMethod("Second", rule(get="/v1/items/{name}"), echo),
        )
    text = str(raised.value)
    assert "GET /v1/items/{name}" in text
    assert "GET /v1/items/{message}" in text
    assert ".MadeUp.First" in text
    assert ".MadeUp.Second" in text


def test_a_duplicate_additional_binding_is_refused() -> None:
    with pytest.raises(RouteConflictError, match="ambiguous"):
        app_with(
            FakeMethod(
                "Twice",
                rule(get="/v1/twice", additional_bindings=[rule(get="/v1/twice")]),
                echo,
            )
        )


def test_templates_that_differ_only_in_where_variables_split_are_ambiguous() -> None:
    with pytest.raises(RouteConflictError):
        app_with(
            FakeMethod("Whole", rule(get="/v1/{name=projects/*/items/*}"), echo),
            FakeMethod("Parts", rule(get="/v1/{name=projects/*}/items/{message}"), echo),
        )


def test_same_template_with_different_methods_or_verbs_is_fine() -> None:
    app = app_with(
        FakeMethod("Get", rule(get="/v1/things/{message}"), echo),
        FakeMethod("Delete", rule(delete="/v1/things/{message}"), echo),
        FakeMethod("Cancel", rule(post="/v1/things/{message}:cancel", body="*"), echo),
        FakeMethod("Literal", rule(get="/v1/things/special"), echo),
    )
    assert app.allowed_methods("/v1/things/x") == {"GET", "HEAD", "DELETE", "OPTIONS"}
    assert app.allowed_methods("/v1/things/x:cancel") == {"POST", "OPTIONS"}


def test_a_malformed_template_is_refused_with_the_method_named() -> None:
    with pytest.raises(BindingError, match=r"MadeUp\.Broken.*unclosed|MadeUp\.Broken.*brace"):
        app_with(FakeMethod("Broken", rule(get="/v1/{message"), echo))


def test_a_body_field_that_does_not_exist_is_refused() -> None:
    with pytest.raises(BindingError, match="'nope' is not a top-level field"):
        app_with(FakeMethod("Post", rule(post="/v1/x", body="nope"), echo))


def test_a_path_variable_must_name_a_scalar_field() -> None:
    with pytest.raises(BindingError, match=r"\{nested\} must name a singular scalar"):
        app_with(FakeMethod("Get", rule(get="/v1/x/{nested}"), echo))
    with pytest.raises(BindingError, match=r"\{missing\}"):
        app_with(FakeMethod("Get", rule(get="/v1/x/{missing}"), echo))


def test_a_success_status_outside_2xx_is_refused() -> None:
    with pytest.raises(BindingError, match="302 is not a 2xx"):
        app_with(FakeMethod("Get", rule(get="/v1/x"), echo, status=302))


def test_methods_without_an_http_rule_are_not_bound() -> None:
    app = app_with(
        FakeMethod("Hidden", None, echo),
        FakeMethod("Shown", rule(get="/v1/shown"), echo),
    )
    assert app.allowed_methods("/v1/shown") == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("v1/x", "must start with '/'"),
        ("/v1/**/x", r"'\*\*' may only be the last segment"),
        ("/v1/{a}/{a}", "binds the same field twice"),
        ("/v1/{a={b}}", "unbalanced|nest|invalid"),
        ("/v1//x", "empty segment"),
        ("/v1/{a.}", "invalid field path"),
    ],
)
def test_template_grammar_errors(template: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        parse_template(template)


def test_template_parts() -> None:
    parsed = parse_template("/v1/{name=shelves/*/books/**}:get")
    assert parsed.segments == ("v1", "shelves", "*", "books", "**")
    assert parsed.verb == "get"
    (variable,) = parsed.variables
    assert variable.field_path == "name"
    assert variable.multi_segment
    assert variable.to_end
