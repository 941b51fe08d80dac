"""The OpenAPI 3.1 document of a REST app, written from the very bindings that route its requests.

Nothing is re-derived: paths come from the parsed templates, query parameters from the fields
the query decoder would accept (every field neither the path nor the body binds; `a.b` for
nested messages; repeated fields repeat their key; maps as `name[key]`), bodies from the rule's
`body`, success statuses from `(transcoding.v1.http_response)`, stream framings from
streaming.py and error statuses from status.py's table. What is the application's to say (who
may call an operation, error shapes of its own) comes in through `DocumentOptions.operation_hook`,
which may change each operation before it is written.

The transcoder takes a missing or blank body as the empty message, so a body is required
exactly when the empty message would leave a REQUIRED field unset: the body field itself, or
with `body: "*"` a field the path does not bind. An update (AIP-134: a FieldMask `update_mask`
beside the body field) may send only the fields its mask names, so its body is the resource's
schema with nothing required; what it writes without a mask is the servicer's to say
(`DocumentOptions.update_without_mask`).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as default
from http import HTTPStatus
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

from gateway.openapi.schemas import Schema, SchemaSet, is_map, is_required, ref, scalar
from gateway.rest.bindings import Binding
from gateway.rest.fields import descriptor_of, resolve
from gateway.rest.form import FORM
from gateway.rest.request import PRETTY
from gateway.rest.templates import ANY, REST, Variable

Operation = dict[str, Any]
# (the binding, its operation as written so far, the document's schemas) -> None; may edit both.
OperationHook = Callable[[Binding, Operation, SchemaSet], None]

STATUS = "google.rpc.Status"
JSON = "application/json"
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
_TYPE_URL_PREFIX = "type.googleapis.com/"
_FIELD_MASK = "google.protobuf.FieldMask"
# AIP-134's name: a FieldMask of another name (a read_mask, say) makes no update.
_UPDATE_MASK = "update_mask"
_NESTED_QUERY_DEPTH = 4
_WELL_KNOWN = "google.protobuf."

# Why each error status can happen (status.py's gRPC → HTTP table, read backwards).
ERROR_STATUSES: dict[int, str] = {
    400: "Invalid argument, failed precondition or out of range (details: BadRequest, ErrorInfo).",
    401: "Missing, malformed or unknown credentials.",
    403: "The credentials do not allow this call (details: ErrorInfo).",
    404: "Not found (also another tenant's resource).",
    409: "Already exists, or aborted by a concurrent change.",
    429: "Resource exhausted: rate limited (details: RetryInfo; header Retry-After).",
    500: "Internal error.",
    503: "Unavailable: the service or its database is down, or the server is shutting down.",
    504: "The call's deadline (grpc-timeout) passed.",
}
BODY_ERROR_STATUSES: dict[int, str] = {
    413: "The request body is larger than the server takes.",
    415: "The request body's content type is not one this operation takes.",
}
_WKT_TEXT: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "description": 'A duration: "1.5s", or Go syntax such as "1h2m".',
    },
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated paths."},
    "google.protobuf.Struct": {"type": "string", "contentMediaType": JSON},
    "google.protobuf.Value": {"type": "string", "contentMediaType": JSON},
    "google.protobuf.ListValue": {"type": "string", "contentMediaType": JSON},
}


class UpdateWithoutMask(enum.Enum):
    """What an update writes when its update_mask names no field (absent or empty), or is "*"."""

    # Every field but the read-only and immutable ones (AIP-134's full replacement): the body is
    # the whole resource. The default, as the safe claim: a client following it is never refused.
    REPLACES_ALL = "replaces_all"
    # Only the fields the body sets (AIP-134's PATCH without a mask); "*" still replaces all.
    SETS_POPULATED = "sets_populated"


@dataclass(frozen=True)
class DocumentOptions:
    title: str
    version: str
    description: str = ""
    # Proto comments by full name (comments.py); they become descriptions.
    comments: Mapping[str, str] = default(default_factory=dict)
    security_schemes: Mapping[str, Schema] = default(default_factory=dict)
    operation_hook: OperationHook | None = None
    # What the servicers' updates do without a mask; the gateway cannot see it.
    update_without_mask: UpdateWithoutMask = UpdateWithoutMask.REPLACES_ALL


def build_document(bindings: Iterable[Binding], options: DocumentOptions) -> dict[str, Any]:
    schemas = SchemaSet(options.comments)
    _status_schemas(schemas)
    paths: dict[str, dict[str, Operation]] = {}
    seen_ids: dict[str, int] = {}
    services: set[str] = set()
    for binding in bindings:
        path = openapi_path(binding)
        operation = _operation(binding, schemas, options)
        base = operation["operationId"]
        count = seen_ids.get(base, 0)
        seen_ids[base] = count + 1
        if count:
            operation["operationId"] = f"{base}_{count}"
        if options.operation_hook is not None:
            options.operation_hook(binding, operation, schemas)
        paths.setdefault(path, {})[binding.http_method.lower()] = operation
        services.add(binding.method.service.full_name)
    tags = [
        {"name": name.rsplit(".", 1)[-1]}
        | ({"description": options.comments[name]} if name in options.comments else {})
        for name in sorted(services)
    ]
    info: dict[str, Any] = {"title": options.title, "version": options.version}
    if options.description:
        info["description"] = options.description
    components: dict[str, Any] = {"schemas": schemas.components}
    if options.security_schemes:
        components["securitySchemes"] = dict(options.security_schemes)
    return {
        "openapi": "3.1.0",
        "info": info,
        "tags": tags,
        "paths": paths,
        "components": components,
    }


def dumps(document: Mapping[str, Any]) -> bytes:
    """The document's one canonical spelling: sorted keys, two-space indent, final newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def openapi_path(binding: Binding) -> str:
    """The template with each variable as `{field.path}` (a multi-segment one spans slashes)."""
    template = binding.template
    starts = {variable.start: variable for variable in template.variables}
    parts: list[str] = []
    index = 0
    while index < len(template.segments):
        variable = starts.get(index)
        if variable is not None:
            parts.append("{" + variable.field_path + "}")
            index = variable.end
        else:
            parts.append(template.segments[index])
            index += 1
    path = "/" + "/".join(parts)
    return path if template.verb is None else f"{path}:{template.verb}"


def error_response(description: str, schema: Schema, status: int) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
        }
    elif status == 429:
        response["headers"] = {
            "Retry-After": {
                "schema": {"type": "integer", "minimum": 0},
                "description": "Seconds to wait before trying again (when the server knows).",
            }
        }
    return response


# -- one operation ------------------------------------------------------------------------------


def _operation(binding: Binding, schemas: SchemaSet, options: DocumentOptions) -> Operation:
    comments = options.comments
    method = binding.method
    descriptor = method.descriptor
    service = method.service.full_name.rsplit(".", 1)[-1]
    operation: Operation = {
        "operationId": f"{service}_{descriptor.name}",
        "tags": [service],
        "x-grpc-method": method.path,
    }
    text = comments.get(descriptor.full_name, "")
    if text:
        operation["summary"] = _first_sentence(text)
        operation["description"] = text
    parameters = _path_parameters(binding, schemas) + _query_parameters(binding, schemas)
    parameters += [
        {"name": name.decode(), "in": "header", "required": False, "schema": {"type": "string"}}
        for name in binding.options.forward_headers
    ]
    if parameters:
        operation["parameters"] = parameters
    body = _request_body(binding, schemas, options.update_without_mask)
    if body is not None:
        operation["requestBody"] = body
    responses: dict[str, Any] = {str(binding.success_status): _success(binding, schemas)}
    errors = dict(ERROR_STATUSES)
    if binding.plan.takes_body:
        errors |= BODY_ERROR_STATUSES
    for status, why in sorted(errors.items()):
        responses[str(status)] = error_response(why, ref(STATUS), status)
    operation["responses"] = responses
    return operation


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", flat)
    return match.group(1) if match else flat


def _path_parameters(binding: Binding, schemas: SchemaSet) -> list[dict[str, Any]]:
    request = descriptor_of(binding.method.request_class)
    parameters = []
    for variable in binding.template.variables:
        path = resolve(request, variable.field_path)
        assert path is not None  # the binding resolved it at start-up
        schema = _text_schema(path.leaf, schemas)
        if variable.multi_segment or binding.template.segments[variable.start] != ANY:
            schema = {"type": "string", "pattern": _capture_pattern(binding, variable)}
            description = "Spans several path segments; its slashes are not escaped."
        else:
            if schema.get("type") == "string":
                schema["minLength"] = 1  # `*` matches one segment, never an empty one
            description = ""
        text = schemas.comments.get(path.leaf.full_name, "")
        parameter: dict[str, Any] = {
            "name": variable.field_path,
            "in": "path",
            "required": True,
            "schema": schema,
        }
        if description or text:
            parameter["description"] = " ".join(filter(None, [text, description]))
        parameters.append(parameter)
    return parameters


def _capture_pattern(binding: Binding, variable: Variable) -> str:
    parts = []
    for segment in binding.template.segments[variable.start : variable.end]:
        if segment == ANY:
            parts.append("[^/]+")
        elif segment == REST:
            parts.append(".*")
        else:
            parts.append(re.escape(segment))
    return "^" + "/".join(parts) + "$"


def _query_parameters(binding: Binding, schemas: SchemaSet) -> list[dict[str, Any]]:
    plan = binding.plan
    if plan.takes_body and plan.body_field is None:
        return []  # body: "*" binds every field the path does not
    request = descriptor_of(binding.method.request_class)
    bound = {tuple(variable.field_path.split(".")) for variable in binding.template.variables}
    if plan.body_field is not None:
        bound.add((plan.body_field.name,))
    parameters: list[dict[str, Any]] = []
    _collect_query(request, (), bound, schemas, parameters, {request.full_name})
    if plan.reserves_pretty:
        parameters.append(
            {
                "name": PRETTY,
                "in": "query",
                "required": False,
                "description": "Indented JSON in the response (also in error bodies).",
                "schema": {"type": "boolean"},
            }
        )
    return parameters


def _collect_query(
    message: Descriptor,
    prefix: tuple[str, ...],
    bound: set[tuple[str, ...]],
    schemas: SchemaSet,
    into: list[dict[str, Any]],
    visiting: set[str],
) -> None:
    for field in message.fields:
        names = (*prefix, field.name)
        if names in bound:
            continue
        name = ".".join(names)
        text = schemas.comments.get(field.full_name, "")
        nested = field.message_type
        if is_map(field):
            assert nested is not None
            value = nested.fields_by_name["value"]
            if value.message_type is not None and not _from_text(value.message_type):
                continue  # a map of messages cannot be set from the query
            schema: Schema = {
                "type": "object",
                "additionalProperties": _text_schema(value, schemas),
            }
            into.append(_query(name, schema, text, style="deepObject"))
            continue
        if nested is not None and not _from_text(nested):
            if field.is_repeated or nested.full_name.startswith(_WELL_KNOWN):
                continue  # a list of messages, or an Any or Empty, cannot be set from the query
            if nested.full_name in visiting or len(names) >= _NESTED_QUERY_DEPTH:
                continue
            _collect_query(nested, names, bound, schemas, into, visiting | {nested.full_name})
            continue
        single = _text_schema(field, schemas)
        if field.is_repeated:
            into.append(_query(name, {"type": "array", "items": single}, text, explode=True))
        else:
            into.append(_query(name, single, text, required=not prefix and is_required(field)))


def _query(
    name: str,
    schema: Schema,
    text: str,
    *,
    required: bool = False,
    style: str | None = None,
    explode: bool | None = None,
) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "required": required}
    parameter["schema"] = schema
    if style is not None:
        parameter["style"] = style
        parameter["explode"] = True
    elif explode is not None:
        parameter["explode"] = explode
    if text:
        parameter["description"] = text
    return parameter


def _from_text(descriptor: Descriptor) -> bool:
    """Well-known types are set whole from their text form (values.py)."""
    return descriptor.full_name.startswith(_WELL_KNOWN) and (
        descriptor.full_name in _WKT_TEXT or descriptor.full_name.endswith("Value")
    )


def _text_schema(field: FieldDescriptor, schemas: SchemaSet) -> Schema:
    """How one value of the field is written in a path or query string."""
    nested = field.message_type
    if nested is not None:
        if nested.full_name in _WKT_TEXT:
            return dict(_WKT_TEXT[nested.full_name])
        inner = nested.fields_by_name.get("value")
        if inner is not None and nested.full_name.startswith(_WELL_KNOWN):
            return _text_schema(inner, schemas)  # a wrapper is written as its value
        return {"type": "string"}
    if field.enum_type is not None:
        return schemas.enum(field.enum_type)
    schema = scalar(field)
    if schema.get("format") in ("int64", "uint64"):
        minimum = 0 if schema["format"] == "uint64" else -(2**63)
        maximum = 2**64 - 1 if schema["format"] == "uint64" else 2**63 - 1
        return {
            "type": "integer",
            "format": schema["format"],
            "minimum": minimum,
            "maximum": maximum,
        }
    return schema


def _request_body(
    binding: Binding, schemas: SchemaSet, without_mask: UpdateWithoutMask
) -> dict[str, Any] | None:
    plan = binding.plan
    if not plan.takes_body:
        return None
    required = _body_required(binding)
    if plan.raw:
        return {
            "description": "The raw body, taken as it is, under any content type.",
            "required": required,
            "content": {"*/*": {"schema": {}}},
        }
    body: dict[str, Any] = {"required": required}
    field, mask = plan.body_field, _update_mask(binding)
    if field is None:
        schema = _body_without_path_fields(binding, schemas)
    elif mask is not None and field.message_type is not None:
        schema = schemas.update(field.message_type)
        body["description"] = _update_description(field.message_type, mask, without_mask)
    else:
        schema = schemas.field(field)
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if binding.method.kind.request_streaming:
        content = {NDJSON: {"schema": schema}, JSON: {"schema": {"type": "array", "items": schema}}}
    if plan.form is not None:
        content[FORM.decode()] = {"schema": schema}
    body["content"] = content
    return body


def _body_required(binding: Binding) -> bool:
    """Whether the empty message a missing body stands for would leave a REQUIRED field unset.

    A client stream's empty body is no messages at all, which is no field left unset.
    """
    plan = binding.plan
    if binding.method.kind.request_streaming:
        return False
    if plan.body_field is not None:
        return is_required(plan.body_field)
    request = descriptor_of(binding.method.request_class)
    top = {v.field_path for v in binding.template.variables if "." not in v.field_path}
    return any(is_required(field) for field in request.fields if field.name not in top)


def _update_mask(binding: Binding) -> FieldDescriptor | None:
    """The request's update_mask when the body is one message field beside it (AIP-134)."""
    field = binding.plan.body_field
    if field is None or field.message_type is None or field.is_repeated:
        return None
    request = descriptor_of(binding.method.request_class)
    mask = request.fields_by_name.get(_UPDATE_MASK)
    if mask is None or mask.is_repeated or mask.message_type is None:
        return None
    return mask if mask.message_type.full_name == _FIELD_MASK else None


def _update_description(
    resource: Descriptor, mask: FieldDescriptor, without_mask: UpdateWithoutMask
) -> str:
    name = mask.name
    partial = (
        f"With `{name}`, only the fields it names are written (one it names that the body "
        "leaves out is cleared) and the others keep their stored values, so the body may leave "
        "out any field, a required one too."
    )
    if without_mask is UpdateWithoutMask.SETS_POPULATED:
        return (
            f"{partial} Without `{name}`, only the fields the body sets are written; with "
            f"`{name}` `*`, the body is the whole resource."
        )
    required = ", ".join(f"`{field.name}`" for field in resource.fields if is_required(field))
    needs = f", its required fields ({required}) included" if required else ""
    return (
        f"{partial} When `{name}` names no field, or is `*`, every field but the read-only and "
        f"immutable ones is written: the body is the whole resource{needs}, and a field it "
        "leaves out is cleared."
    )


def _body_without_path_fields(binding: Binding, schemas: SchemaSet) -> Schema:
    request = descriptor_of(binding.method.request_class)
    schema = schemas.message(request)
    top = {v.field_path for v in binding.template.variables if "." not in v.field_path}
    if not top or "$ref" not in schema:
        return schema
    whole = schemas.components[request.full_name]
    properties = {k: v for k, v in whole.get("properties", {}).items() if k not in top}
    inline: Schema = {**whole, "properties": properties}
    required = [name for name in whole.get("required", []) if name not in top]
    if required:
        inline["required"] = required
    else:
        inline.pop("required", None)
    return inline


def _success(binding: Binding, schemas: SchemaSet) -> dict[str, Any]:
    if binding.success_status == 204:
        return {"description": "Done; no content."}
    output = descriptor_of(binding.method.response_class)
    if binding.response_field is not None:
        schema = schemas.field(output.fields_by_name[binding.response_field])
    else:
        schema = schemas.message(output)
    if binding.method.kind.response_streaming:
        status = ref(STATUS)
        line = {
            "type": "object",
            "properties": {"result": schema, "error": status},
            "minProperties": 1,
            "maxProperties": 1,
        }
        ids = f" with `id:` {binding.event_id_field}" if binding.event_id_field else ""
        return {
            "description": (
                'A stream. NDJSON (the default): one `{"result": …}` line per message, and a '
                'last `{"error": google.rpc.Status}` line if the stream fails. Server-sent '
                f"events when the request accepts text/event-stream: one `data:` event per "
                f"message{ids}, and `event: error` with a google.rpc.Status to end in failure."
            ),
            "content": {
                NDJSON: {"schema": line},
                EVENT_STREAM: {"schema": {"type": "string"}},
            },
        }
    if binding.raw_response:
        return {"description": "The raw body.", "content": {"*/*": {"schema": {}}}}
    phrase = HTTPStatus(binding.success_status).phrase
    return {"description": phrase, "content": {JSON: {"schema": schema}}}


def _status_schemas(schemas: SchemaSet) -> None:
    """google.rpc.Status, its details being the standard error details with their @type."""
    schemas.message(status_pb2.Status.DESCRIPTOR)
    details = []
    for name in sorted(error_details_pb2.DESCRIPTOR.message_types_by_name):
        descriptor = error_details_pb2.DESCRIPTOR.message_types_by_name[name]
        details.append(
            {
                "allOf": [
                    schemas.message(descriptor),
                    {
                        "type": "object",
                        "properties": {"@type": {"const": _TYPE_URL_PREFIX + descriptor.full_name}},
                        "required": ["@type"],
                    },
                ]
            }
        )
    status = schemas.components[STATUS]
    status["properties"]["details"]["items"] = {"anyOf": details}
    status["required"] = ["code", "message", "details"]
