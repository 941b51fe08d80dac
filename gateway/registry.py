"""The method registry: every RPC the gateway serves, with its descriptors and its wrapped handler.

Generated `add_*Servicer_to_server(servicer, server)` functions accept a registry in place of a
`grpc.Server`. Each handler is wrapped once, at registration, by the interceptor chain, so REST,
gRPC-web and native gRPC all call exactly the same wrapped behaviour.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from gateway.chain import InterceptorChain


class CallKind(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def request_streaming(self) -> bool:
        return self in (CallKind.STREAM_UNARY, CallKind.STREAM_STREAM)

    @property
    def response_streaming(self) -> bool:
        return self in (CallKind.UNARY_STREAM, CallKind.STREAM_STREAM)


@dataclass(frozen=True)
class Method:
    """One RPC: `path` is "/pkg.Service/Method", `handler` is already wrapped by the chain."""

    path: str
    service: ServiceDescriptor
    descriptor: MethodDescriptor
    kind: CallKind
    request_class: type[Message]
    response_class: type[Message]
    handler: grpc.RpcMethodHandler[Any, Any]

    @property
    def behavior(self) -> Any:
        """The wrapped servicer callable for this call kind."""
        return getattr(self.handler, self.kind.value)


def _kind_of(handler: grpc.RpcMethodHandler[Any, Any]) -> CallKind:
    if handler.request_streaming:
        return CallKind.STREAM_STREAM if handler.response_streaming else CallKind.STREAM_UNARY
    return CallKind.UNARY_STREAM if handler.response_streaming else CallKind.UNARY_UNARY


class MethodRegistry:
    """Stands in for `grpc.Server` when servicers are added; answers lookups by path."""

    def __init__(
        self,
        chain: InterceptorChain,
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self._chain = chain
        self._pool = pool or descriptor_pool.Default()
        self._methods: dict[str, Method] = {}
        self._services: dict[str, ServiceDescriptor] = {}
        self._raw: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    # -- the part of grpc.Server that generated code uses ------------------------------------

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        service = self._pool.FindServiceByName(service_name)
        for name, handler in method_handlers.items():
            self._add(service, service.methods_by_name[name], handler)
        self._services[service_name] = service

    def add_generic_rpc_handlers(
        self, generic_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        # Generated code calls add_registered_method_handlers as well; for a hand-made generic
        # handler (grpc.method_handlers_generic_handler) its method table is read instead.
        for generic in generic_handlers:
            service_name = generic.service_name() if hasattr(generic, "service_name") else None
            table = getattr(generic, "_method_handlers", None)
            if service_name is None or table is None:
                raise TypeError(f"cannot enumerate the methods of {generic!r}")
            if service_name not in self._services:
                self.add_registered_method_handlers(
                    service_name, {path.rsplit("/", 1)[1]: h for path, h in table.items()}
                )

    def _add(
        self,
        service: ServiceDescriptor,
        descriptor: MethodDescriptor,
        raw: grpc.RpcMethodHandler[Any, Any],
    ) -> None:
        path = f"/{service.full_name}/{descriptor.name}"
        if path in self._methods:
            # Generated code announces each servicer twice (generic and registered handlers).
            if self._raw[path] is raw:
                return
            raise ValueError(f"{path} is registered twice")
        self._raw[path] = raw
        kind = _kind_of(raw)
        partial = Method(
            path=path,
            service=service,
            descriptor=descriptor,
            kind=kind,
            request_class=message_factory.GetMessageClass(descriptor.input_type),
            response_class=message_factory.GetMessageClass(descriptor.output_type),
            handler=raw,
        )
        wrapped = self._chain.wrap(partial, getattr(raw, kind.value))
        handler_factory = getattr(grpc, f"{kind.value}_rpc_method_handler")
        handler = handler_factory(
            wrapped,
            request_deserializer=raw.request_deserializer,
            response_serializer=raw.response_serializer,
        )
        self._methods[path] = Method(**{**partial.__dict__, "handler": handler})

    # -- lookups -----------------------------------------------------------------------------

    def lookup(self, path: str) -> Method | None:
        return self._methods.get(path)

    def methods(self) -> Sequence[Method]:
        return list(self._methods.values())

    def service_names(self) -> Sequence[str]:
        return list(self._services)

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        return self._pool

    def generic_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """All registered methods as one generic handler (for sonora or grpc.aio.server)."""
        return _RegistryHandler(self)


class _RegistryHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, registry: MethodRegistry) -> None:
        self._registry = registry

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = self._registry.lookup(handler_call_details.method)
        return method.handler if method else None
