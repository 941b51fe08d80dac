"""The test-only EchoService: compiled from echo.proto at import, with a servicer for every kind."""

from __future__ import annotations

import asyncio
import importlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google.api.http_pb2
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

_HERE = Path(__file__).parent
_ROOT = _HERE.parent.parent


def _compile() -> tuple[Any, Any]:
    out = Path(tempfile.mkdtemp(prefix="echo-proto-"))
    googleapis = Path(google.api.http_pb2.__file__).parent.parent.parent
    wkt = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{_HERE}",
        f"-I{_ROOT / 'proto'}",
        f"-I{googleapis}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(_HERE / "echo.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("could not compile echo.proto")
    sys.path.insert(0, str(out))
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")


echo_pb2, echo_pb2_grpc = _compile()


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):  # type: ignore[name-defined,misc]
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.sleeping = asyncio.Event()

    @staticmethod
    def _seen(context: Any) -> list[str]:
        return [
            f"{k}={v!r}" if isinstance(v, bytes) else f"{k}={v}"
            for k, v in (context.invocation_metadata() or ())
        ]

    async def Echo(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(echoed=request, metadata=self._seen(context))

    async def EchoLiteral(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(echoed=echo_pb2.EchoRequest(message="literal"))

    async def GetResource(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(echoed=request)

    async def Create(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(echoed=request)

    async def Remove(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        return empty_pb2.Empty()

    async def Fail(self, request: Any, context: Any) -> Any:
        status = status_pb2.Status(code=request.code, message=request.message or "it failed")
        if request.code == code_pb2.INVALID_ARGUMENT:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="message", description="is wrong"
                        )
                    ]
                )
            )
            status.details.append(detail)
        await context.abort_with_status(rpc_status.to_status(status))

    async def Submit(self, request: Any, context: Any) -> Any:
        if request.code:
            return await self.Fail(request, context)
        return echo_pb2.EchoResponse(echoed=request)

    async def Sleep(self, request: Any, context: Any) -> Any:
        self.sleeping.set()
        try:
            await asyncio.sleep(request.delay.ToTimedelta().total_seconds())
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return echo_pb2.EchoResponse(echoed=request)

    async def Receive(self, request: Any, context: Any) -> Any:
        return echo_pb2.ReceiveResponse(
            received=request, metadata=self._seen(context), payload=request.payload
        )

    async def Reflect(self, request: Any, context: Any) -> Any:
        return request

    async def Expand(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for index in range(request.count):
            yield echo_pb2.EchoResponse(echoed=request, index=index)
        if request.code:
            await context.abort(grpc.StatusCode(_CODES[request.code]), "stream failed")

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        parts = [request.message async for request in request_iterator]
        return echo_pb2.EchoResponse(echoed=echo_pb2.EchoRequest(message="".join(parts)))

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        index = 0
        async for request in request_iterator:
            yield echo_pb2.EchoResponse(echoed=request, index=index)
            index += 1


_CODES = {code.value[0]: code.value for code in grpc.StatusCode}
