"""Server reflection (v1 and v1alpha) through the router, with grpcurl and grpcio's own client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gateway.chain import InterceptorChain
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.health import add_health_to
from gateway.reflection import add_reflection_to
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from tests.gateway.echo_service import EchoServicer, echo_pb2_grpc
from tests.support.server import RunningServer, running

GRPCURL = Path(sys.executable).parent / "grpcurl"
ECHO = "testing.echo.v1.EchoService"
V1_INFO = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA_INFO = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    def build() -> GatewayRouter:
        registry = MethodRegistry(InterceptorChain())
        echo_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), registry)
        add_reflection_to(registry)
        add_health_to(registry)
        return GatewayRouter(
            grpc_app=NativeGrpcApp(registry),
            grpc_web_app=GrpcWebApp(registry),
            rest_app=RestApp(registry),
        )

    with running(build) as running_server:
        yield running_server


def grpcurl(server: RunningServer, *args: str, data: str | None = None) -> str:
    """grpcurl 1.8.6 speaks reflection v1alpha only; fails the test on a non-zero exit."""
    options = ["-plaintext", "-max-time", "20"]
    if data is not None:
        options += ["-d", data]
    verb = args[:1] if args and args[0] in ("list", "describe") else ()
    done = subprocess.run(
        [str(GRPCURL), *options, server.target, *verb, *args[len(verb) :]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _exchange(server: RunningServer, path: str, *requests: Any) -> list[Any]:
    with grpc.insecure_channel(server.target) as channel:
        info = channel.stream_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(info(iter(requests), timeout=10))


def _file_names(response: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


# -- grpcurl (v1alpha) -----------------------------------------------------------------------


def test_grpcurl_lists_every_service_including_both_reflection_versions(
    server: RunningServer,
) -> None:
    assert grpcurl(server, "list").split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        ECHO,
    ]


def test_grpcurl_describes_a_service_with_its_http_options(server: RunningServer) -> None:
    out = grpcurl(server, "describe", ECHO)
    assert f"{ECHO} is a service" in out
    assert "rpc Expand ( .testing.echo.v1.EchoRequest ) returns ( stream" in out
    # The options resolve only if google/api/annotations.proto and http.proto came along.
    assert 'post:"/v1/echo"' in out


def test_grpcurl_describes_a_method(server: RunningServer) -> None:
    # grpc/grpc#34743: grpcio-reflection answers "Symbol not found" here.
    out = grpcurl(server, "describe", f"{ECHO}.Echo")
    assert f"{ECHO}.Echo is a method" in out
    assert (
        "rpc Echo ( .testing.echo.v1.EchoRequest ) returns ( .testing.echo.v1.EchoResponse )" in out
    )


def test_grpcurl_describes_a_message_a_field_and_an_enum_value(server: RunningServer) -> None:
    out = grpcurl(server, "describe", "testing.echo.v1.EchoRequest")
    assert "testing.echo.v1.EchoRequest is a message" in out
    assert "int64 big = 3;" in out
    field = grpcurl(server, "describe", "testing.echo.v1.EchoRequest.big")
    assert "is a field" in field
    # Spelled with the enum's name, which the pool does not index (only EchoRequest.COLOR_RED).
    value = grpcurl(server, "describe", "testing.echo.v1.EchoRequest.Color.COLOR_RED")
    assert "is an enum value" in value


def test_grpcurl_describes_the_v1_reflection_service(server: RunningServer) -> None:
    out = grpcurl(server, "describe", "grpc.reflection.v1.ServerReflection")
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in out


def test_grpcurl_invokes_a_method_it_learned_by_reflection(server: RunningServer) -> None:
    out = grpcurl(server, f"{ECHO}/Echo", data='{"message": "hi", "big": "12345678901234"}')
    assert json.loads(out)["echoed"] == {"message": "hi", "big": "12345678901234"}


def test_grpcurl_reports_an_unknown_symbol(server: RunningServer) -> None:
    done = subprocess.run(
        [str(GRPCURL), "-plaintext", server.target, "describe", f"{ECHO}.NoSuchMethod"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "not found" in done.stderr.lower()


# -- grpcio's reflection client (v1alpha) ----------------------------------------------------


def test_grpcio_reflection_client_builds_a_pool_with_methods_and_fields(
    server: RunningServer,
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert ECHO in database.get_services()
        # A method symbol is what the grpcio-reflection server cannot answer.
        assert database.FindFileContainingSymbol(f"{ECHO}.Collect").name == "echo.proto"
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindMethodByName(f"{ECHO}.Collect")
        assert method.input_type.full_name == "testing.echo.v1.EchoRequest"
        assert method.client_streaming
        field = pool.FindFieldByName("testing.echo.v1.EchoRequest.labels")
        assert field.message_type.GetOptions().map_entry


# -- the raw protocol, v1 and v1alpha --------------------------------------------------------


def test_v1_lists_services_and_resolves_method_symbols(server: RunningServer) -> None:
    listed, method, field = _exchange(
        server,
        V1_INFO,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{ECHO}.Expand"),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="testing.echo.v1.EchoRequest.message", host="h"
        ),
    )
    assert {s.name for s in listed.list_services_response.service} >= {
        ECHO,
        "grpc.reflection.v1.ServerReflection",
    }
    names = _file_names(method)
    assert names[0] == "echo.proto"  # the answer first, then its dependencies
    assert {"google/api/annotations.proto", "google/api/http.proto"} <= set(names)
    assert len(names) == len(set(names))
    assert method.original_request.file_containing_symbol == f"{ECHO}.Expand"
    assert _file_names(field)[0] == "echo.proto"
    assert field.valid_host == "h"


def test_v1_and_v1alpha_give_the_same_answers(server: RunningServer) -> None:
    asks = [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{ECHO}.Echo"),
        reflection_pb2.ServerReflectionRequest(
            file_by_filename="grpc/reflection/v1/reflection.proto"
        ),
    ]
    assert _exchange(server, V1_INFO, *asks) == _exchange(server, V1ALPHA_INFO, *asks)


def test_unknown_names_answer_not_found_and_the_stream_goes_on(server: RunningServer) -> None:
    missing_symbol, missing_file, missing_member, listed = _exchange(
        server,
        V1_INFO,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{ECHO}.Nope"),
        reflection_pb2.ServerReflectionRequest(list_services=""),
    )
    for response in (missing_symbol, missing_file, missing_member):
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert not response.HasField("file_descriptor_response")
    assert "no.such.Thing" in missing_symbol.error_response.error_message
    assert listed.list_services_response.service


def test_extensions_of_a_type(server: RunningServer) -> None:
    numbers, file = _exchange(
        server,
        V1_INFO,
        reflection_pb2.ServerReflectionRequest(
            all_extension_numbers_of_type="google.protobuf.MethodOptions"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_extension=reflection_pb2.ExtensionRequest(
                containing_type="google.protobuf.MethodOptions", extension_number=72295728
            )
        ),
    )
    response = numbers.all_extension_numbers_response
    assert response.base_type_name == "google.protobuf.MethodOptions"
    assert 72295728 in response.extension_number  # google.api.http
    assert _file_names(file)[0] == "google/api/annotations.proto"
