"""Shared set-up for the REST transcoder tests (no tests of its own).

A real Hypercorn listener serving only a RestApp over a registry that holds the EchoService,
plus a builder for small services whose descriptors (and http rules) are made up in the test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from transcoding.v1 import annotations_pb2 as transcoding_pb2

from gateway.chain import InterceptorChain
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from tests.gateway.echo_service import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.server import ASGIApp, RunningServer, running, with_lifespan

__all__ = ["echo_pb2"]


@dataclass
class RestServer:
    server: RunningServer
    client: httpx.Client
    servicer: Any
    app: RestApp

    def wait(self, coroutine: Any, timeout: float = 10) -> Any:
        return self.server.call(coroutine, timeout)


def echo_registry(
    servicer: Any | None = None, chain: InterceptorChain | None = None
) -> tuple[MethodRegistry, Any]:
    registry = MethodRegistry(chain or InterceptorChain())
    servicer = servicer or EchoServicer()
    echo_pb2_grpc.add_EchoServiceServicer_to_server(servicer, registry)
    return registry, servicer


@contextmanager
def rest_server(
    servicer_factory: Callable[[], Any] = EchoServicer,
    extra: Callable[[MethodRegistry], None] | None = None,
    chain: InterceptorChain | None = None,
    **options: Any,
) -> Iterator[RestServer]:
    """Serves the EchoService (and whatever `extra` registers) over REST only."""
    built: dict[str, Any] = {}

    def factory() -> ASGIApp:
        registry, servicer = echo_registry(servicer_factory(), chain)
        if extra is not None:
            extra(registry)
        app = RestApp(registry, **options)
        built.update(servicer=servicer, app=app)
        return with_lifespan(app)

    with (
        running(factory) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield RestServer(server, client, built["servicer"], built["app"])


# -- services made up in a test ------------------------------------------------------------------

_serial = itertools.count()


@dataclass
class FakeMethod:
    name: str
    rule: http_pb2.HttpRule | None
    handler: Callable[..., Any]
    client_streaming: bool = False
    server_streaming: bool = False
    status: int = 0
    # Full names; a bare name means a message given to add_service.
    input_type: str = "testing.echo.v1.EchoRequest"
    output_type: str = "testing.echo.v1.EchoResponse"


def add_service(
    registry: MethodRegistry,
    methods: Sequence[FakeMethod],
    messages: Sequence[descriptor_pb2.DescriptorProto] = (),
) -> str:
    """Defines a service (and messages) in the default pool, registers it, returns its name."""
    package = f"testing.rest.made{next(_serial)}"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}.proto",
        package=package,
        syntax="proto3",
        dependency=[
            echo_pb2.DESCRIPTOR.name,
            "google/protobuf/timestamp.proto",
            "google/protobuf/any.proto",
            "google/api/httpbody.proto",
        ],
    )
    file.message_type.extend(messages)

    def qualified(name: str) -> str:
        return name if "." in name else f"{package}.{name}"

    service = file.service.add(name="MadeUp")
    for method in methods:
        proto = service.method.add(
            name=method.name,
            input_type="." + qualified(method.input_type),
            output_type="." + qualified(method.output_type),
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
        )
        if method.rule is not None:
            proto.options.Extensions[annotations_pb2.http].CopyFrom(method.rule)
        if method.status:
            proto.options.Extensions[transcoding_pb2.http_response].status = method.status
    pool = descriptor_pool.Default()
    pool.Add(file)
    full_name = f"{package}.MadeUp"
    handlers = {}
    for method in methods:
        request_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(qualified(method.input_type))
        )
        response_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(qualified(method.output_type))
        )
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            method.handler,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )
    registry.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(full_name, handlers)])
    return full_name


def rule(**fields: Any) -> http_pb2.HttpRule:
    """An HttpRule, e.g. rule(get="/v1/x/{message}") or rule(post="/v1/x", body="*")."""
    bindings = fields.pop("additional_bindings", ())
    made = http_pb2.HttpRule(**fields)
    made.additional_bindings.extend(bindings)
    return made


async def echo(request: Any, context: Any) -> Any:
    return echo_pb2.EchoResponse(echoed=request)


def violations(body: dict[str, Any]) -> list[dict[str, str]]:
    """The BadRequest field violations of a google.rpc.Status body."""
    found: list[dict[str, str]] = []
    for detail in body["details"]:
        if detail["@type"] == "type.googleapis.com/google.rpc.BadRequest":
            found.extend(detail["field_violations"])
    return found


def violated_fields(body: dict[str, Any]) -> list[str]:
    return [violation["field"] for violation in violations(body)]


def snake_case_message(name: str = "Page") -> descriptor_pb2.DescriptorProto:
    """A message whose field names differ between proto (snake) and JSON (lowerCamel) form."""
    field = descriptor_pb2.FieldDescriptorProto
    return descriptor_pb2.DescriptorProto(
        name=name,
        field=[
            field(name="page_size", number=1, type=field.TYPE_INT32, json_name="pageSize"),
            field(
                name="next_page_token", number=2, type=field.TYPE_STRING, json_name="nextPageToken"
            ),
            field(
                name="create_time",
                number=3,
                type=field.TYPE_MESSAGE,
                type_name=".google.protobuf.Timestamp",
                json_name="createTime",
            ),
            field(name="total_count", number=4, type=field.TYPE_INT64, json_name="totalCount"),
        ],
    )
