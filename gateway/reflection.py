"""gRPC server reflection, served under both grpc.reflection.v1 and v1alpha from a descriptor pool.

grpcio-reflection ships only v1alpha and cannot resolve `Service.Method` symbols
(grpc/grpc#34743), so `grpcurl describe pkg.Service.Method` fails against it. This servicer is our
own: it answers every request kind of the reflection protocol, resolves members (methods, fields,
enum values, oneofs) by falling back to their parent, and is registered under both package names
because clients disagree on which one they speak (grpcurl ≥ 1.8.8 tries v1 first; grpcurl 1.8.6,
grpcui and Postman speak v1alpha only).

The two schemas are wire-identical, so both services use the v1alpha message classes; the v1
service only needs to exist as a descriptor so that it can be listed and described. Its file is
derived at runtime from the v1alpha one (same messages, renamed package) rather than kept as a
second hand-written .proto that could drift.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2

from gateway.registry import MethodRegistry

V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICES = (V1_SERVICE, V1ALPHA_SERVICE)

_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"
_METHOD = "ServerReflectionInfo"

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


class ReflectionServicer:
    """Answers ServerReflectionInfo streams from `pool`; the service list is read per request.

    `service_names` is a callable so that services registered after reflection are still listed.
    """

    def __init__(
        self,
        pool: descriptor_pool.DescriptorPool,
        service_names: Callable[[], Iterable[str]],
    ) -> None:
        self._pool = pool
        self._service_names = service_names
        # Files never change once in a pool, and clients ask for the same few files over and
        # over (every grpcurl invocation re-reads them), so each is serialized once.
        self._serialized: dict[str, bytes] = {}

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            yield self.answer(request)

    # -- one request, one response -----------------------------------------------------------

    def answer(self, request: Any) -> Any:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            response = Response(
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[
                        reflection_pb2.ServiceResponse(name=name)
                        for name in sorted(set(self._service_names()))
                    ]
                )
            )
        elif kind == "file_by_filename":
            name = request.file_by_filename
            response = self._file_response(self._find_file(name), f"file not found: {name}")
        elif kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            response = self._file_response(self._find_symbol(symbol), f"symbol not found: {symbol}")
        elif kind == "file_containing_extension":
            ask = request.file_containing_extension
            response = self._file_response(
                self._find_extension_file(ask.containing_type, ask.extension_number),
                f"extension {ask.extension_number} of {ask.containing_type} not found",
            )
        elif kind == "all_extension_numbers_of_type":
            response = self._extension_numbers(request.all_extension_numbers_of_type)
        else:
            response = _error(grpc.StatusCode.INVALID_ARGUMENT, "no request kind is set")
        response.valid_host = request.host
        response.original_request.CopyFrom(request)
        return response

    def _find_file(self, name: str) -> FileDescriptor | None:
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            return None

    def _find_symbol(self, symbol: str) -> FileDescriptor | None:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        # The pool indexes services, messages, enums, their nested types, fields and extensions,
        # but not methods (nor `Enum.VALUE` spelled with the enum's name). Those are members of
        # a parent the pool does know; the member name is checked so that a typo still misses.
        parent, _, member = symbol.rpartition(".")
        if not parent:
            return None
        for find, members in (
            (self._pool.FindServiceByName, lambda d: d.methods_by_name),
            (self._pool.FindMessageTypeByName, _message_members),
            (self._pool.FindEnumTypeByName, lambda d: d.values_by_name),
        ):
            try:
                descriptor = find(parent)
            except KeyError:
                continue
            if member in members(descriptor):
                file: FileDescriptor = descriptor.file
                return file
        return None

    def _find_extension_file(self, containing_type: str, number: int) -> FileDescriptor | None:
        try:
            message = self._pool.FindMessageTypeByName(containing_type)
            extension = self._pool.FindExtensionByNumber(message, number)
            return self._pool.FindFileContainingSymbol(extension.full_name)
        except KeyError:
            return None

    def _extension_numbers(self, containing_type: str) -> Any:
        try:
            message = self._pool.FindMessageTypeByName(containing_type)
        except KeyError:
            return _error(grpc.StatusCode.NOT_FOUND, f"message type not found: {containing_type}")
        numbers = sorted(ext.number for ext in self._pool.FindAllExtensions(message))
        return Response(
            all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                base_type_name=message.full_name, extension_number=numbers
            )
        )

    def _file_response(self, file: FileDescriptor | None, missing: str) -> Any:
        """The file first, then every transitive dependency, each exactly once.

        Clients take the first file as the answer and need the rest to build it (without
        google/api/http.proto a described option is "Symbol not found"). grpc-go omits files it
        already sent on the same stream; the spec allows but does not require that, and sending
        them again keeps clients that cache per request working.
        """
        if file is None:
            return _error(grpc.StatusCode.NOT_FOUND, missing)
        ordered: dict[str, FileDescriptor] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name in ordered:
                continue
            ordered[current.name] = current
            pending.extend(reversed(current.dependencies))
        return Response(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._serialize(f) for f in ordered.values()]
            )
        )

    def _serialize(self, file: FileDescriptor) -> bytes:
        serialized = self._serialized.get(file.name)
        if serialized is None:
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            serialized = self._serialized[file.name] = proto.SerializeToString()
        return serialized


def _message_members(message: Any) -> dict[str, Any]:
    # Nested types and enums are indexed by the pool already; what is left are fields, oneofs
    # and the values of nested enums (`Message.VALUE` is their proto scope).
    members: dict[str, Any] = {**message.fields_by_name, **message.oneofs_by_name}
    for enum in message.enum_types:
        members.update(enum.values_by_name)
    return members


def _error(code: grpc.StatusCode, message: str) -> Any:
    return Response(
        error_response=reflection_pb2.ErrorResponse(error_code=code.value[0], error_message=message)
    )


# -- registration ------------------------------------------------------------------------------


def add_reflection_to(registry: MethodRegistry) -> ReflectionServicer:
    """Serves reflection for everything in `registry` under both v1 and v1alpha."""
    pool = registry.pool
    _ensure_reflection_files(pool)
    servicer = ReflectionServicer(pool, lambda: [*registry.service_names(), *REFLECTION_SERVICES])
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString,
    )
    # The registry reads a generic handler's method table and finds the service in its pool,
    # which is why both files are added to the pool first.
    registry.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {_METHOD: handler})
            for name in REFLECTION_SERVICES
        ]
    )
    return servicer


def _ensure_reflection_files(pool: descriptor_pool.DescriptorPool) -> None:
    with contextlib.suppress(ImportError):
        # A grpcio-reflection that ships v1 registers the official file when imported; let it,
        # before ours could take the name and make that import fail as a duplicate.
        importlib.import_module("grpc_reflection.v1.reflection_pb2")
    # Checked by service name, not file name: whoever defined the service first keeps it.
    if not _has_service(pool, V1ALPHA_SERVICE):
        # A private pool does not have the generated v1alpha file; it has no dependencies.
        proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    if not _has_service(pool, V1_SERVICE):
        pool.Add(v1_file_proto())


def _has_service(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    try:
        pool.FindServiceByName(name)
    except KeyError:
        return False
    return True


def v1_file_proto() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, derived from the generated v1alpha descriptor."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE
    proto.ClearField("options")  # language options of the v1alpha file name its own packages
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."

    def rename(type_name: str) -> str:
        return new + type_name[len(old) :] if type_name.startswith(old) else type_name

    def rename_fields(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                # Only message fields have a type name; assigning "" would mark one as set.
                if field.HasField("type_name"):
                    field.type_name = rename(field.type_name)
            rename_fields(message.nested_type)

    rename_fields(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    return proto
