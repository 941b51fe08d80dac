"""REST bindings read at start-up from each registered method's `google.api.http` option.

One Binding per HttpRule (the rule itself and each of its additional_bindings), carrying the
compiled template, the request plan, the response body field and the success status declared
with `(transcoding.v1.http_response).status` (never inferred from the path or the verb), the
method's RestMethodOptions, and the request headers it forwards as metadata (FORWARDED_HEADERS
and the options' forward_headers). Options for a method the registry lacks, or one without a
rule, are refused: they would silently do nothing.

A unary method whose response (or response_body field) is a `google.api.HttpBody` answers its
`data` raw, under its `content_type`, as grpc-gateway does; a stream of them stays JSON framed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.api import (  # type: ignore[import-untyped, unused-ignore]
    annotations_pb2,
    http_pb2,
)
from google.protobuf.descriptor import Descriptor
from transcoding.v1 import annotations_pb2 as transcoding_pb2

from gateway.registry import Method, MethodRegistry
from gateway.rest.fields import descriptor_of
from gateway.rest.headers import FORWARDED_HEADERS
from gateway.rest.options import NO_OPTIONS, RestMethodOptions
from gateway.rest.request import HTTP_BODY, BindingError, RequestPlan, is_http_body
from gateway.rest.templates import PathTemplate, TemplateError, parse_template


@dataclass(frozen=True)
class Binding:
    method: Method
    http_method: str
    template: PathTemplate
    plan: RequestPlan
    response_field: str | None
    success_status: int
    options: RestMethodOptions
    # The response field whose value names each server-sent event (`id:`); None: no ids.
    event_id_field: str | None = None
    # The response (or its response_body field) is an HttpBody, written raw.
    raw_response: bool = False
    forwarded_headers: frozenset[bytes] = FORWARDED_HEADERS

    @property
    def origin(self) -> str:
        return self.method.descriptor.full_name


def read_bindings(
    registry: MethodRegistry,
    *,
    lenient_enums: bool,
    strict_query: bool,
    method_options: Mapping[str, RestMethodOptions],
) -> Iterator[Binding]:
    unknown = sorted(set(method_options) - {method.path for method in registry.methods()})
    if unknown:
        raise BindingError(f"method_options for methods not registered: {', '.join(unknown)}")
    for method in registry.methods():
        descriptor_options: Any = method.descriptor.GetOptions()
        if not descriptor_options.HasExtension(annotations_pb2.http):
            if method.path in method_options:
                raise BindingError(
                    f"method_options for {method.path}, which has no google.api.http rule"
                )
            continue  # not exposed over REST (e.g. robot-only streams)
        rule = descriptor_options.Extensions[annotations_pb2.http]
        status = _success_status(method)
        options = method_options.get(method.path, NO_OPTIONS)
        for index, each in enumerate([rule, *rule.additional_bindings]):
            where = method.descriptor.full_name + (
                f" additional_bindings[{index - 1}]" if index else ""
            )
            try:
                if index and each.additional_bindings:
                    raise BindingError("additional_bindings may not nest")
                yield _binding(method, each, status, options, lenient_enums, strict_query)
            except (BindingError, TemplateError) as exc:
                raise BindingError(f"{where}: {exc}") from None


def _binding(
    method: Method,
    rule: http_pb2.HttpRule,
    status: int,
    options: RestMethodOptions,
    lenient_enums: bool,
    strict_query: bool,
) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise BindingError("the rule has no HTTP method and path")
    if kind == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
        if not http_method:
            raise BindingError("custom rule without a kind")
    else:
        http_method, path = kind.upper(), getattr(rule, kind)
    template = parse_template(path)
    if method.kind.request_streaming and rule.body != "*":
        raise BindingError(
            'a client-streaming method needs body: "*" (one JSON object per message)'
        )
    if method.kind.request_streaming and options.form_body:
        raise BindingError("form_body does not apply to a client-streaming method")
    plan = RequestPlan(
        method.request_class,
        template,
        rule.body,
        lenient_enums=lenient_enums,
        strict_query=strict_query,
        form=options.form_body,
    )
    if method.kind.request_streaming and plan.raw:
        raise BindingError(f"a client-streaming method cannot take a {HTTP_BODY} body")
    output = descriptor_of(method.response_class)
    response_type: Descriptor | None = output
    response_field: str | None = None
    if rule.response_body:
        field = output.fields_by_name.get(rule.response_body)
        if field is None:
            raise BindingError(
                f"response_body {rule.response_body!r} is not a field of {output.full_name}"
            )
        response_field = rule.response_body
        response_type = None if field.is_repeated else field.message_type
    return Binding(
        method,
        http_method,
        template,
        plan,
        response_field,
        status,
        options,
        _event_id_field(method),
        raw_response=is_http_body(response_type) and not method.kind.response_streaming,
        forwarded_headers=FORWARDED_HEADERS.union(options.forward_headers),
    )


def _event_id_field(method: Method) -> str | None:
    options: Any = method.descriptor.GetOptions()
    if not options.HasExtension(transcoding_pb2.http_response):
        return None
    name: str = options.Extensions[transcoding_pb2.http_response].event_id_field
    if not name:
        return None
    if not method.kind.response_streaming:
        raise BindingError(f"{method.descriptor.full_name}: event_id_field needs a server stream")
    field = method.response_class.DESCRIPTOR.fields_by_name.get(name)
    if field is None or field.message_type is not None or field.is_repeated:
        raise BindingError(
            f"{method.descriptor.full_name}: event_id_field {name!r} is not a scalar field of "
            f"{method.response_class.DESCRIPTOR.full_name}"
        )
    return name


def _success_status(method: Method) -> int:
    options: Any = method.descriptor.GetOptions()
    if not options.HasExtension(transcoding_pb2.http_response):
        return 200
    status: int = options.Extensions[transcoding_pb2.http_response].status or 200
    if not 200 <= status <= 299:
        raise BindingError(
            f"{method.descriptor.full_name}: http_response status {status} is not a 2xx status"
        )
    if status == 204 and method.kind.response_streaming:
        raise BindingError(f"{method.descriptor.full_name}: a streaming method cannot answer 204")
    return status
