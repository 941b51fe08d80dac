"""Per-method REST options: error writers, fixed response headers, and their start-up checks."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.chain import Call, InterceptorChain
from gateway.registry import MethodRegistry
from gateway.rest import BindingError, RestApp, RestErrorResponse, RestMethodOptions
from tests.gateway.rest_harness import (
    FakeMethod,
    RestServer,
    add_service,
    echo,
    echo_registry,
    rest_server,
    rule,
    violated_fields,
)

SERVICE = "/testing.echo.v1.EchoService/"
LIMIT = 1024
WRITTEN = "application/vnd.test.error+json"
NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))


def write_test_error(status: status_pb2.Status, http_status: int) -> RestErrorResponse:
    """Shows what it was given; answers 400 for what the client must fix, as OAuth does."""
    document = {
        "error": code_pb2.Code.Name(status.code).lower(),
        "error_description": status.message,
        "default_status": http_status,
    }
    headers = [(b"X-Written-By", b"test-writer")]  # the gateway lower-cases names
    if status.code == code_pb2.UNAUTHENTICATED:
        headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
    if status.code == code_pb2.NOT_FOUND:
        headers.append((b"cache-control", b"max-age=5"))
    client_fault = status.code in (code_pb2.INVALID_ARGUMENT, code_pb2.RESOURCE_EXHAUSTED)
    answered = 400 if client_fault and http_status not in (413, 415) else http_status
    return RestErrorResponse(answered, headers, json.dumps(document).encode(), WRITTEN.encode())


def raising_writer(status: status_pb2.Status, http_status: int) -> RestErrorResponse:
    raise RuntimeError("the writer is broken")


def framing_writer(status: status_pb2.Status, http_status: int) -> RestErrorResponse:
    return RestErrorResponse(400, [(b"content-length", b"1")], b"{}", b"application/json")


def bad_status_writer(status: status_pb2.Status, http_status: int) -> RestErrorResponse:
    return RestErrorResponse(99, [], b"{}", b"application/json")


class Refused(Exception):
    pass


class Throttled(Exception):
    pass


class Gatekeeper:
    """An interceptor like an authenticator and a rate limiter: refuses by the bearer token."""

    async def intercept(self, call: Call) -> None:
        token = call.metadata.get_text("authorization")
        if token == "Bearer refused":
            raise Refused
        if token == "Bearer slow":
            raise Throttled


def translate(exc: Exception) -> status_pb2.Status | None:
    if isinstance(exc, Refused):
        return status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message="who are you")
    if isinstance(exc, Throttled):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=3)))
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message="slow down", details=[detail]
        )
    return None


WRITTEN_OPTIONS = RestMethodOptions(error_writer=write_test_error, response_headers=NO_STORE)
METHOD_OPTIONS = {
    SERVICE + "Fail": WRITTEN_OPTIONS,
    SERVICE + "Expand": WRITTEN_OPTIONS,
    SERVICE + "Submit": RestMethodOptions(
        form_body=True, error_writer=write_test_error, response_headers=NO_STORE
    ),
    SERVICE + "Echo": RestMethodOptions(response_headers=NO_STORE),
    SERVICE + "Remove": RestMethodOptions(response_headers=NO_STORE),
    SERVICE + "GetResource": RestMethodOptions(error_writer=raising_writer),
    SERVICE + "EchoLiteral": RestMethodOptions(error_writer=framing_writer),
    SERVICE + "Sleep": RestMethodOptions(error_writer=bad_status_writer),
}


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with rest_server(
        chain=InterceptorChain([Gatekeeper()], translate),
        max_body_bytes=LIMIT,
        method_options=METHOD_OPTIONS,
    ) as server:
        yield server


def assert_written(response: httpx.Response, status: int, error: str, default: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == WRITTEN
    assert response.headers["x-written-by"] == "test-writer"
    body = response.json()
    assert body["error"] == error
    assert body["default_status"] == default


def assert_default(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "x-written-by" not in response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


# -- the error writer: errors the call returns ---------------------------------------------------


def test_the_writer_answers_a_servicer_error(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/9")  # FAILED_PRECONDITION
    assert_written(response, 400, "failed_precondition", 400)
    assert response.json()["error_description"] == "it failed"
    assert response.headers["content-length"] == str(len(response.content))


def test_the_writer_decides_the_status(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/3")  # INVALID_ARGUMENT with a BadRequest detail
    assert_written(response, 400, "invalid_argument", 400)
    assert rest.client.get("/v1/fail/14").status_code == 503  # the writer kept the default


def test_the_writers_headers_win_over_the_fixed_ones(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/5")  # NOT_FOUND
    assert_written(response, 404, "not_found", 404)
    assert response.headers.get_list("cache-control") == ["max-age=5"]
    assert response.headers["pragma"] == "no-cache"  # not set by the writer: kept


def test_the_writer_answers_an_interceptors_refusal(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/0", headers={"authorization": "Bearer refused"})
    assert_written(response, 401, "unauthenticated", 401)
    # The writer's challenge replaces the default one instead of joining it.
    assert response.headers.get_list("www-authenticate") == ['Bearer error="invalid_token"']


def test_retry_after_survives_the_writer(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/shelves/a:submit", json={}, headers={"authorization": "Bearer slow"}
    )
    assert_written(response, 400, "resource_exhausted", 429)
    assert response.headers["retry-after"] == "3"
    assert response.headers["cache-control"] == "no-store"


def test_a_stream_that_fails_before_its_first_message_is_written(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": 0, "code": 5})
    assert_written(response, 404, "not_found", 404)


# -- the error writer: errors the gateway finds ---------------------------------------------------


def test_the_writer_answers_malformed_json(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/shelves/a:submit",
        content=b'{"message": ',
        headers={"content-type": "application/json"},
    )
    assert_written(response, 400, "invalid_argument", 400)
    assert "malformed JSON" in response.json()["error_description"]


def test_the_writer_answers_an_unsupported_content_type(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/shelves/a:submit", content=b"hi", headers={"content-type": "text/plain"}
    )
    assert_written(response, 415, "invalid_argument", 415)


def test_the_writer_answers_a_body_too_large(rest: RestServer) -> None:
    response = rest.client.post("/v1/shelves/a:submit", json={"message": "x" * LIMIT})
    assert_written(response, 413, "resource_exhausted", 413)


def test_the_writer_answers_a_bad_path_value(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/abc")  # `code` is an int32
    assert_written(response, 400, "invalid_argument", 400)


def test_the_writer_answers_a_bad_form(rest: RestServer) -> None:
    response = rest.client.post(
        "/v1/shelves/a:submit",
        content=b"message=one&message=two",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_written(response, 400, "invalid_argument", 400)


def test_head_sends_the_written_errors_headers_without_its_body(rest: RestServer) -> None:
    written = rest.client.get("/v1/fail/5")
    response = rest.client.head("/v1/fail/5")
    assert response.status_code == 404
    assert response.headers["content-type"] == WRITTEN
    assert response.headers["content-length"] == str(len(written.content))
    assert response.content == b""


def test_requests_no_binding_matched_keep_the_default_shape(rest: RestServer) -> None:
    missing = rest.client.get("/v1/fail")
    assert_default(missing, 404, code_pb2.NOT_FOUND)
    wrong_method = rest.client.delete("/v1/fail/5")
    assert_default(wrong_method, 405, code_pb2.UNIMPLEMENTED)
    assert "cache-control" not in wrong_method.headers


# -- a writer that fails ---------------------------------------------------------------------------


def test_a_raising_writer_falls_back_to_the_default_error(
    rest: RestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.rest.options")
    response = rest.client.get(
        "/v1/projects/p/items/i", headers={"authorization": "Bearer refused"}
    )
    body = assert_default(response, 401, code_pb2.UNAUTHENTICATED)
    assert body["message"] == "who are you"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "broken" not in response.text
    logged = [r for r in caplog.records if "GetResource" in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None


def test_a_raising_writer_falls_back_for_gateway_errors_too(rest: RestServer) -> None:
    response = rest.client.get("/v1/projects/p/items/i", params={"count": "many"})
    assert violated_fields(assert_default(response, 400, code_pb2.INVALID_ARGUMENT)) == ["count"]


def test_a_head_request_with_a_raising_writer_gets_no_body(rest: RestServer) -> None:
    response = rest.client.head(
        "/v1/projects/p/items/i", headers={"authorization": "Bearer refused"}
    )
    assert response.status_code == 401
    assert response.content == b""


@pytest.mark.parametrize(
    ("path", "complaint"), [("/v1/echo/literal", "content-length"), ("/v1/sleep", "99")]
)
def test_a_writer_answering_what_http_cannot_carry_falls_back(
    rest: RestServer, caplog: pytest.LogCaptureFixture, path: str, complaint: str
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.rest.options")
    response = rest.client.get(path, headers={"authorization": "Bearer refused"})
    assert_default(response, 401, code_pb2.UNAUTHENTICATED)
    assert any(complaint in r.getMessage() for r in caplog.records)


# -- fixed response headers ------------------------------------------------------------------------


def test_fixed_headers_on_success(rest: RestServer) -> None:
    for response in (
        rest.client.get("/v1/echo/hi"),
        rest.client.post("/v1/echo", json={"message": "hi"}),
        rest.client.post("/v1/shelves/a:submit", json={"message": "hi"}),
    ):
        assert response.status_code == 200
        assert response.headers.get_list("cache-control") == ["no-store"]
        assert response.headers["pragma"] == "no-cache"


def test_fixed_headers_on_a_204(rest: RestServer) -> None:
    response = rest.client.delete("/v1/things/x")
    assert response.status_code == 204
    assert response.headers["cache-control"] == "no-store"


def test_fixed_headers_on_a_stream(rest: RestServer) -> None:
    response = rest.client.get("/v1/expand", params={"count": 2})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert len(response.text.splitlines()) == 2


def test_fixed_headers_on_default_errors(rest: RestServer) -> None:
    response = rest.client.get("/v1/echo/hi", params={"count": "many"})
    assert_default(response, 400, code_pb2.INVALID_ARGUMENT)
    assert response.headers["cache-control"] == "no-store"


def test_fixed_headers_on_written_errors(rest: RestServer) -> None:
    response = rest.client.get("/v1/fail/9")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def test_methods_without_options_are_untouched(rest: RestServer) -> None:
    response = rest.client.post("/v1/things", json={"message": "hi"})
    assert response.status_code == 201
    assert "cache-control" not in response.headers
    assert_default(rest.client.get("/v1/things/x"), 405, code_pb2.UNIMPLEMENTED)


# -- start-up -------------------------------------------------------------------------------------


def echo_app(**options: RestMethodOptions) -> RestApp:
    registry, _ = echo_registry()
    return RestApp(registry, method_options={SERVICE + name: o for name, o in options.items()})


def test_options_for_an_unknown_method_are_refused() -> None:
    registry, _ = echo_registry()
    with pytest.raises(BindingError, match=re.escape(SERVICE + "Nope")):
        RestApp(registry, method_options={SERVICE + "Nope": RestMethodOptions()})
    with pytest.raises(BindingError, match=r"not registered: Echo$"):  # a name, not a path
        RestApp(registry, method_options={"Echo": RestMethodOptions()})


def test_options_for_a_method_without_a_rest_binding_are_refused() -> None:
    with pytest.raises(BindingError, match=r"Collect, which has no google\.api\.http rule"):
        echo_app(Collect=RestMethodOptions(response_headers=NO_STORE))


def test_form_body_needs_body_star() -> None:
    with pytest.raises(BindingError, match=r'EchoService.Fail: form_body needs body: "\*"'):
        echo_app(Fail=RestMethodOptions(form_body=True))


def test_form_body_needs_body_star_on_every_binding() -> None:
    with pytest.raises(BindingError, match=r"Echo additional_bindings\[0\]: .*; no body"):
        echo_app(Echo=RestMethodOptions(form_body=True))


def test_form_body_on_a_client_stream_is_refused() -> None:
    registry = MethodRegistry(InterceptorChain())
    name = add_service(
        registry,
        [FakeMethod("Upload", rule(post="/v1/upload", body="*"), echo, client_streaming=True)],
    )
    with pytest.raises(BindingError, match="client-streaming"):
        RestApp(registry, method_options={f"/{name}/Upload": RestMethodOptions(form_body=True)})


def test_the_echo_service_starts_with_its_options() -> None:
    app = echo_app(Submit=RestMethodOptions(form_body=True), Fail=WRITTEN_OPTIONS)
    assert app.allowed_methods("/v1/shelves/a:submit") == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    "header",
    [
        (b"content-length", b"1"),
        (b"content-type", b"text/plain"),
        (b"connection", b"close"),
        (b"Cache-Control", b"no-store"),
        (b"x-split", b"a\r\nx-injected: 1"),
        (b"", b"empty"),
        ("cache-control", "no-store"),
    ],
    ids=["length", "type", "connection", "upper-case", "crlf", "empty", "str"],
)
def test_fixed_headers_the_gateway_cannot_send_are_refused(header: Any) -> None:
    with pytest.raises(ValueError, match="response header"):
        RestMethodOptions(response_headers=(header,))


def test_forward_headers_are_checked_at_construction_and_a_good_set_starts() -> None:
    options = RestMethodOptions(forward_headers=(b"webhook-id", b"x_vendor.sig"))
    assert echo_app(Receive=options).allowed_methods("/v1/hooks/h:receive") == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ((b"Webhook-Id",), "lower-case header name"),
        ((b"webhook id",), "lower-case header name"),
        ((b"webhook:id",), "lower-case header name"),
        ((b"",), "lower-case header name"),
        (("webhook-id",), "is not bytes"),
        ((b"content-type",), "the gateway's to read"),
        ((b"content-length",), "the gateway's to read"),
        ((b"transfer-encoding",), "the gateway's to read"),
        ((b"content-encoding",), "the gateway's to read"),
        ((b"te",), "the gateway's to read"),
        ((b"grpc-timeout",), "grpc-\\* names"),
        ((b"grpc-metadata-tenant",), "grpc-\\* names"),
        ((b"x-trace-bin",), "-bin metadata key"),
        ((b"authorization",), "every method already"),
        ((b"webhook-id", b"webhook-id"), "named twice"),
    ],
)
def test_forward_headers_the_gateway_cannot_forward_are_refused(
    names: tuple[Any, ...], problem: str
) -> None:
    with pytest.raises(ValueError, match=f"forward header: .*{problem}"):
        RestMethodOptions(forward_headers=names)


def test_forward_headers_must_be_a_tuple() -> None:
    with pytest.raises(ValueError, match="not a tuple"):
        RestMethodOptions(forward_headers=[b"webhook-id"])  # type: ignore[arg-type]
