"""Every REST route, read from the registry the way the transcoder reads it, fuzzed over httpx.

A client's fault is a 4xx, never a 5xx, whatever the path values, query string, body, content
type or encoding; and the server still answers health checks after each route's batch.
"""

from __future__ import annotations

import gzip
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from gateway.rest.bindings import Binding, read_bindings
from gateway.rest.fields import descriptor_of
from tests.e2e.conftest import Roz
from tests.fuzz import strategies
from tests.fuzz.conftest import assert_healthy, fuzz_settings

# The server under test runs in a thread of this process and uses `random` (ids, jitter) while
# hypothesis draws; hypothesis warns about that, but it does not make the examples less exact.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

EXAMPLES = 12


def bindings(roz: Roz) -> list[Binding]:
    found = read_bindings(
        roz.app.registry, lenient_enums=True, strict_query=False, method_options={}
    )
    return sorted(found, key=lambda b: (b.template.text, b.http_method))


@st.composite
def rest_request(draw: st.DrawFn, binding: Binding, key: str) -> dict[str, Any]:
    descriptor = descriptor_of(binding.plan.request_class)
    target = draw(strategies.path(binding.template))
    query = draw(strategies.query(descriptor))
    headers = {"authorization": f"Bearer {key}"}
    headers = draw(st.sampled_from([headers] * 6 + [{}, {"authorization": "Bearer roz_sk_x"}]))
    content = b""
    takes_body = binding.plan.takes_body or draw(st.integers(0, 9)) == 0
    if takes_body:
        field = binding.plan.body_field
        value = draw(
            strategies.field_value(field) if field is not None else strategies.document(descriptor)
        )
        content = strategies.dumps(value)
        kind = draw(st.sampled_from(["json"] * 5 + ["gzip", "form", "garbage", "type", "none"]))
        headers["content-type"] = "application/json"
        if kind == "gzip":
            content = gzip.compress(content)
            headers["content-encoding"] = "gzip"
        elif kind == "form" and isinstance(value, dict):
            content = urlencode({k: str(v) for k, v in value.items()}).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        elif kind == "garbage":
            content = draw(st.binary(max_size=64))
        elif kind == "type":
            headers["content-type"] = draw(st.sampled_from(["text/plain", "application/xml", ""]))
        elif kind == "none":
            del headers["content-type"]
    return {
        "method": binding.http_method,
        "url": target + (f"?{query}" if query else ""),
        "headers": headers,
        "content": content,
    }


def fuzz_route(client: httpx.Client, key: str, binding: Binding) -> None:
    @fuzz_settings(EXAMPLES)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        request = data.draw(rest_request(binding, key))
        note(f"{binding.http_method} {binding.template.text}: {request}")
        if binding.method.kind.response_streaming:
            # A watch never ends by itself: its status and first message are what a client
            # fault could break.
            with client.stream(**request) as streamed:
                assert streamed.status_code < 500, request
                next(streamed.iter_lines(), None)
            return
        response = client.request(**request)
        assert response.status_code < 500, (request, response.text)
        if response.status_code < 300 and response.content:
            strategies.remember_ids(response.json())

    fuzz()


def test_no_rest_route_answers_5xx_to_a_client_fault(fuzzed: Roz) -> None:
    routes = bindings(fuzzed)
    assert len(routes) > 30  # every seed route, read from the descriptors
    with httpx.Client(base_url=fuzzed.url, timeout=30) as client:
        for binding in routes:
            # A tenant per route: the fuzz may revoke its own key (DELETE /api/v1/caller/api-key).
            fuzz_route(client, fuzzed.new_tenant("fuzz"), binding)
            assert_healthy(fuzzed)
