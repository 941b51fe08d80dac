"""The interceptor chain every call runs through, whatever protocol carried it.

On the way in: access log (outermost, sees the final status) → error mapping → the application's
interceptors in order (authenticate, tenant, rate limit …) → deadline → the servicer. Behind the
gateway's router the access log is the request's one line (gateway/observability): the chain
tells it the RPC, code and log fields; on a bare grpc.aio.server() it writes its own. The chain
only uses the part of `grpc.aio.ServicerContext` that every protocol context implements
(invocation_metadata, time_remaining, set_trailing_metadata, abort), so one wrapped handler
serves REST, gRPC-web, Connect and native gRPC alike, and also runs unchanged on
`grpc.aio.server()`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from gateway.metadata import Metadata
from gateway.observability.exchange import CURRENT_EXCHANGE

if TYPE_CHECKING:
    from gateway.registry import Method

access_log = logging.getLogger("gateway.access")
log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"

# What a context's abort() raises: grpc.aio's AbortError (ours too), sonora's bare RpcError.
ALREADY_ABORTED = (grpc.RpcError, aio.AbortError)


@dataclass
class Call:
    """What interceptors know about the call in flight."""

    method: Method
    context: Any
    metadata: Metadata
    request_id: str
    # What carried it: "grpc", "grpc-web", "connect" or "rest" (a grpc.aio server's own context:
    # "grpc").
    protocol: str = "grpc"
    # Extra structured fields for the access log line (interceptors add e.g. the tenant).
    log_fields: dict[str, Any] = field(default_factory=dict)
    # What one interceptor learns for the next ones (e.g. the authenticated principal).
    state: dict[str, Any] = field(default_factory=dict)


class ServerInterceptor(Protocol):
    """Runs before the servicer; rejects the call by raising an error the translator knows."""

    async def intercept(self, call: Call) -> None: ...


ErrorTranslator = Callable[[Exception], status_pb2.Status | None]


class _InFlight:
    """One call the chain is running: its method, its task, and whether a shutdown is ending it."""

    __slots__ = ("closing", "method", "parked", "task")

    def __init__(self, method: Method) -> None:
        self.method = method
        self.task = asyncio.current_task()
        # True while the task waits inside the chain (interceptors, the servicer, the next
        # response); False while a protocol adapter has it (sending what was yielded).
        self.parked = True
        self.closing = False


class _ShuttingDown(Exception):
    """The call is ended by close_calls(), between two responses."""


class InterceptorChain:
    def __init__(
        self,
        interceptors: Sequence[ServerInterceptor] = (),
        translate_error: ErrorTranslator | None = None,
    ) -> None:
        self._interceptors = list(interceptors)
        self._translate_error = translate_error or (lambda _exc: None)
        self._in_flight: set[_InFlight] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutdown_status = status_pb2.Status(code=code_pb2.UNAVAILABLE)

    # -- calls in flight, on every protocol --------------------------------------------------

    def active_calls(self) -> int:
        return len(self._in_flight)

    def active_methods(self) -> list[Method]:
        """The method of each call in flight (a method once per call), read when metrics are
        scraped rather than counted on every call."""
        return [entry.method for entry in self._in_flight]

    async def wait_idle(self) -> None:
        """Returns once no call is in flight (at once if none is)."""
        await self._idle.wait()

    def close_calls(self, message: str, retry_after_seconds: float = 1.0) -> int:
        """Ends every call in flight with UNAVAILABLE (and RetryInfo), on whatever protocol
        carries it: each adapter reports it as it reports any abort (trailers, an NDJSON error
        line, an SSE event). A call the adapter holds (sending to a client) ends as soon as it
        asks for its next response. Returns how many calls were told."""
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=retry_after_seconds))
        detail = any_pb2.Any()
        detail.Pack(retry)
        self._shutdown_status = status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message=message, details=[detail]
        )
        for entry in self._in_flight:
            entry.closing = True
            if entry.parked and entry.task is not None:
                entry.task.cancel()
        return len(self._in_flight)

    def _enter(self, method: Method) -> _InFlight:
        entry = _InFlight(method)
        self._in_flight.add(entry)
        self._idle.clear()
        return entry

    def _leave(self, entry: _InFlight) -> None:
        self._in_flight.discard(entry)
        if not self._in_flight:
            self._idle.set()

    async def _end_for_shutdown(self, call: Call, outcome: _Outcome) -> None:
        status = self._shutdown_status
        outcome.code = grpc.StatusCode.UNAVAILABLE
        grpc_status = rpc_status.to_status(status)
        call.context.set_trailing_metadata(grpc_status.trailing_metadata)
        await call.context.abort(grpc_status.code, grpc_status.details)

    @staticmethod
    def _ours(entry: _InFlight) -> bool:
        """Whether a CancelledError is close_calls()' alone (then it is taken back)."""
        return entry.closing and entry.task is not None and entry.task.uncancel() == 0

    def wrap(self, method: Method, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """The servicer callable wrapped by the whole chain, with the same signature."""
        if method.kind.response_streaming:
            writes_to_context = not inspect.isasyncgenfunction(behavior)

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                call = self._start(method, context)
                outcome = _Outcome()
                entry = self._enter(method)
                try:
                    await self._before(call)
                    responses = (
                        _written_responses(behavior, request, context)
                        if writes_to_context
                        else behavior(request, context)
                    )
                    deadline = _deadline(context)
                    while True:
                        if entry.closing:
                            raise _ShuttingDown
                        try:
                            async with asyncio.timeout_at(deadline):
                                response = await anext(responses)
                        except StopAsyncIteration:
                            break
                        entry.parked = False
                        yield response
                        entry.parked = True
                except asyncio.CancelledError:
                    if self._ours(entry):
                        await self._end_for_shutdown(call, outcome)
                    outcome.code = grpc.StatusCode.CANCELLED
                    raise
                except _ShuttingDown:
                    await self._end_for_shutdown(call, outcome)
                except Exception as exc:
                    await self._fail(call, outcome, exc)
                finally:
                    self._leave(entry)
                    self._log(call, outcome)

            return streaming

        async def unary(request: Any, context: Any) -> Any:
            call = self._start(method, context)
            outcome = _Outcome()
            entry = self._enter(method)
            try:
                await self._before(call)
                deadline = _deadline(context)
                if deadline is None:
                    return await behavior(request, context)
                async with asyncio.timeout_at(deadline):
                    return await behavior(request, context)
            except asyncio.CancelledError:
                if self._ours(entry):
                    await self._end_for_shutdown(call, outcome)
                # The client went away (or its adapter is ending the call); nothing to answer.
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                await self._fail(call, outcome, exc)
            finally:
                self._leave(entry)
                self._log(call, outcome)

        return unary

    # -- stages ------------------------------------------------------------------------------

    def _start(self, method: Method, context: Any) -> Call:
        metadata = Metadata(context.invocation_metadata() or ())
        request_id = metadata.get_text(REQUEST_ID_KEY) or ""
        return Call(
            method=method,
            context=context,
            metadata=metadata,
            request_id=request_id,
            protocol=getattr(context, "protocol", "") or "grpc",
        )

    async def _before(self, call: Call) -> None:
        for interceptor in self._interceptors:
            await interceptor.intercept(call)

    async def _fail(self, call: Call, outcome: _Outcome, exc: Exception) -> None:
        """Turns any failure into an abort with a google.rpc.Status; never raises anything else."""
        if isinstance(exc, ALREADY_ABORTED):
            # The servicer aborted on its own; the protocol adapter already has the status.
            outcome.code = _code_of(call.context)
            raise exc
        if isinstance(exc, TimeoutError):
            status = status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message="deadline exceeded")
        else:
            status = self._translate(exc, call)
        outcome.code = CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        grpc_status = rpc_status.to_status(status)
        call.context.set_trailing_metadata(grpc_status.trailing_metadata)
        await call.context.abort(grpc_status.code, grpc_status.details)

    def _translate(self, exc: Exception, call: Call) -> status_pb2.Status:
        try:
            status = self._translate_error(exc)
        except Exception:
            log.exception("error translator failed", extra={"request_id": call.request_id})
            status = None
        if status is None:
            log.error(
                "unhandled error in %s",
                call.method.path,
                exc_info=exc,
                extra={"request_id": call.request_id},
            )
            status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
        return status

    def _log(self, call: Call, outcome: _Outcome) -> None:
        exchange = CURRENT_EXCHANGE.get()
        if exchange is not None:
            # The request's one line, written by the middleware when the request ends.
            exchange.called(call.protocol, call.method.path, outcome.code.name, call.log_fields)
            return
        if not access_log.isEnabledFor(logging.INFO):
            return
        elapsed_ms = (time.perf_counter() - outcome.started) * 1000
        access_log.info(
            "%s %s %.1fms",
            call.method.path,
            outcome.code.name,
            elapsed_ms,
            extra={
                "request_id": call.request_id,
                "rpc": call.method.path,
                "code": outcome.code.name,
                "duration_ms": round(elapsed_ms, 2),
                **call.log_fields,
            },
        )


@dataclass
class _Outcome:
    code: grpc.StatusCode = grpc.StatusCode.OK
    started: float = field(default_factory=time.perf_counter)


CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _deadline(context: Any) -> float | None:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + max(remaining, 0.0)


def _code_of(context: Any) -> grpc.StatusCode:
    code = context.code() if callable(getattr(context, "code", None)) else context.code
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN


_DONE = object()


async def _written_responses(
    behavior: Callable[[Any, Any], Awaitable[None]], request: Any, context: Any
) -> AsyncIterator[Any]:
    """Adapts a servicer that streams through `await context.write(m)` to an async iterator."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def run() -> None:
        try:
            await behavior(request, _WritingContext(context, queue))
        finally:
            await queue.put(_DONE)

    task = asyncio.create_task(run())
    try:
        while (item := await queue.get()) is not _DONE:
            yield item
        await task
    finally:
        if not task.done():
            task.cancel()


class _WritingContext:
    """A context whose write() feeds the response stream; everything else is the real context."""

    def __init__(self, context: Any, queue: asyncio.Queue[Any]) -> None:
        self._context = context
        self._queue = queue

    async def write(self, message: Any) -> None:
        await self._queue.put(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
