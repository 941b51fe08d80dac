"""The record of one HTTP request that the layers serving it fill in, and where they find it.

`Observed` (the outermost middleware) opens an `Exchange` for every request and sets it in a
context variable before calling the router. Every task the protocol adapters start for the call
copies the context, so the interceptor chain finds the same object and says which RPC ran, how it
ended and what interceptors added to the log (tenant, key …); the middleware then writes one line
with all of it. Without an exchange (a chain served by `grpc.aio.server()`), the chain logs alone.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import grpc

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class Exchange:
    """What one request's layers learn about it; read by the middleware when it ends."""

    __slots__ = ("code", "log_fields", "protocol", "rpc")

    def __init__(self, protocol: str) -> None:
        # From the content-type at first; the chain's own word once a call runs.
        self.protocol = protocol
        # "/pkg.Service/Method" once the chain runs a registered method.
        self.rpc = ""
        # The gRPC status code's name, once one is known.
        self.code = ""
        self.log_fields: dict[str, Any] = {}

    def called(self, protocol: str, rpc: str, code: str, log_fields: dict[str, Any]) -> None:
        """The chain ran `rpc`, which ended with `code`."""
        if protocol:
            self.protocol = protocol
        self.rpc = rpc
        self.code = code
        self.log_fields = log_fields


def refused_before_call(rpc: str, code: int) -> None:
    """An adapter answered the request itself with `code` (a google.rpc.Code number), having
    chosen `rpc` ("/pkg.Service/Method", or "" when it found none); no call will run."""
    exchange = CURRENT_EXCHANGE.get()
    if exchange is not None:
        exchange.rpc = rpc
        exchange.code = _CODE_NAMES.get(code, "UNKNOWN")


CURRENT_EXCHANGE: ContextVar[Exchange | None] = ContextVar("gateway_exchange", default=None)
