"""Assembling the request message of one binding from path captures, the JSON body and the query.

Order and collision rule: the body is decoded first, then path values are set, then the query
fills what neither binds. A path value that disagrees with a value the body gave for the same
field is a 400 (grpc-gateway lets the path win, Envoy the body; silently picking one hides
client bugs). With `body: "*"` there are no query parameters. A form body (form.py) takes the
JSON body's place: its pairs are applied first, then the path values, which must agree.

A body that is a `google.api.HttpBody` (the field `body` names, or the request itself with
`body: "*"`) is not parsed, as in grpc-gateway and Envoy's transcoder: the raw bytes go into
`data` and the Content-Type header (Latin-1, as headers are read) into `content_type`; any
content type, or none, is taken. Then the path and the query bind as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.rest import codec
from gateway.rest.fields import (
    ScalarSetter,
    descriptor_of,
    fields_by_any_name,
    resolve,
    singular_setter,
)
from gateway.rest.query import QueryDecoder
from gateway.rest.status import RestError, bad_request
from gateway.rest.templates import PathTemplate, Variable

PRETTY = "pretty"
HTTP_BODY = "google.api.HttpBody"


class BindingError(ValueError):
    """A google.api.http rule the gateway cannot serve; raised at start-up."""


class RequestPlan:
    """Everything about building one binding's request that can be decided at start-up."""

    def __init__(
        self,
        request_class: type[Message],
        template: PathTemplate,
        body: str,
        *,
        lenient_enums: bool,
        strict_query: bool,
        form: bool = False,
    ) -> None:
        descriptor = descriptor_of(request_class)
        self.request_class = request_class
        self.lenient_enums = lenient_enums
        self.strict_query = strict_query
        self.path: list[tuple[Variable, ScalarSetter]] = []
        for variable in template.variables:
            path = resolve(descriptor, variable.field_path)
            setter = None if path is None else singular_setter(path, lenient_enums)
            if setter is None or setter.path.leaf.message_type is not None:
                raise BindingError(
                    f"path variable {{{variable.field_path}}} must name a singular scalar or "
                    f"enum field of {descriptor.full_name}"
                )
            self.path.append((variable, setter))

        self.takes_body = body != ""
        self.body_field: FieldDescriptor | None = None
        if body not in ("", "*"):
            self.body_field = descriptor.fields_by_name.get(body)
            if self.body_field is None:
                raise BindingError(
                    f"body {body!r} is not a top-level field of {descriptor.full_name}"
                )
        if form and body != "*":
            has = f"body: {body!r}" if body else "no body"
            raise BindingError(f'form_body needs body: "*" (a form names request fields); {has}')
        # Whether the body is taken raw into an HttpBody: the body field, or the whole request.
        self.raw = is_http_body(descriptor) if body == "*" else _is_raw_field(self.body_field)
        if self.raw and form:
            raise BindingError(
                f"form_body does not apply to a {HTTP_BODY} body, which takes any content type"
            )

        bound = [setter.path.names for _, setter in self.path]
        if self.body_field is not None:
            bound.append((self.body_field.name,))
        # The message's own field called "pretty" wins over the output switch.
        self.reserves_pretty = PRETTY not in fields_by_any_name(descriptor)
        self.query: QueryDecoder | None = None
        if body != "*":
            self.query = QueryDecoder(
                descriptor, bound=bound, lenient_enums=lenient_enums, strict=strict_query
            )
        # Forms never refuse unknown names (RFC 6749 §3.2), whatever the query's strictness.
        self.form: QueryDecoder | None = None
        if form:
            self.form = QueryDecoder(
                descriptor, bound=(), lenient_enums=lenient_enums, strict=False
            )

    def build(
        self, segments: list[str], document: Any, pairs: Sequence[tuple[str, str]]
    ) -> Message:
        """`document` is the parsed JSON body, or None when the request had none."""
        message = self.request_class()
        if document is not None:
            codec.parse_into(document, message, self.body_field, self.lenient_enums)
        for variable, setter in self.path:
            self._set_from_path(message, variable, setter, segments)
        if pairs:
            self._apply_query(message, pairs)
        return message

    def build_raw(
        self,
        segments: list[str],
        body: bytes,
        content_type: bytes | None,
        pairs: Sequence[tuple[str, str]],
    ) -> Message:
        """As build(), with the body as sent in the HttpBody in place of a JSON body."""
        message = self.request_class()
        target: Any = message if self.body_field is None else getattr(message, self.body_field.name)
        target.SetInParent()  # present even when the body is empty
        target.data = body
        if content_type is not None:
            target.content_type = content_type.decode("latin-1")
        for variable, setter in self.path:
            self._set_from_path(message, variable, setter, segments)
        if pairs:
            self._apply_query(message, pairs)
        return message

    def build_form(
        self,
        segments: list[str],
        form: Sequence[tuple[str, str]],
        pairs: Sequence[tuple[str, str]],
    ) -> Message:
        """As build(), with a form body's pairs (those with a value) in place of a JSON body."""
        assert self.form is not None
        message = self.request_class()
        if form:
            self.form.apply(message, form)
        for variable, setter in self.path:
            self._set_from_path(message, variable, setter, segments)
        if pairs:
            self._apply_query(message, pairs)
        return message

    def _set_from_path(
        self, message: Message, variable: Variable, setter: ScalarSetter, segments: list[str]
    ) -> None:
        name = variable.field_path
        try:
            text = variable.capture(segments)
            value = setter.value(text)
        except ValueError as exc:
            raise bad_request(name, f"invalid path value for {name}: {exc}") from None
        existing = setter.path.get(message)
        if existing is not None and existing != value:
            raise bad_request(
                name, f"the path says {name}={value!r} but the body says {existing!r}"
            )
        try:
            setter.assign(message, value)
        except (ValueError, TypeError) as exc:
            raise bad_request(name, f"invalid path value for {name}: {exc}") from None

    def _apply_query(self, message: Message, pairs: Sequence[tuple[str, str]]) -> None:
        if self.reserves_pretty:
            pairs = [pair for pair in pairs if pair[0] != PRETTY]
        if self.query is not None:
            self.query.apply(message, pairs)
        elif self.strict_query and pairs:
            violations = [
                (name, 'body "*" takes every field; no query parameters') for name, _ in pairs
            ]
            raise RestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "this method takes no query parameters",
                violations=violations,
            )

    def build_stream(
        self, segments: list[str], documents: Sequence[Any], pairs: Sequence[tuple[str, str]]
    ) -> list[Message]:
        """A client stream's messages; path and query values apply to each of them."""
        return [self.build(segments, document, pairs) for document in documents]


def is_http_body(descriptor: Descriptor | None) -> bool:
    return descriptor is not None and descriptor.full_name == HTTP_BODY


def _is_raw_field(field: FieldDescriptor | None) -> bool:
    # A repeated HttpBody field is a JSON array like any other.
    return field is not None and not field.is_repeated and is_http_body(field.message_type)
