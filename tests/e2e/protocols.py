"""One call, four protocols: what a client of each sees, reduced to comparable outcomes.

Native gRPC goes through grpcio, gRPC-web through sonora's client (and, for error details,
which sonora's client drops, through httpx speaking the gRPC-web wire format), REST through httpx,
and the Connect protocol through httpx too (unary JSON, lowerCamel names in, as connect-es sends
them; its client-side libraries are exercised by tests/e2e/test_connect_js.py).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
import sonora.client
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.e2e.conftest import Roz
from tests.support import grpc_web

PROTOCOLS = ("rest", "grpc", "grpc-web", "connect")

_DETAIL_TYPES = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.BadRequest,
        error_details_pb2.ErrorInfo,
        error_details_pb2.ResourceInfo,
        error_details_pb2.RetryInfo,
    )
}


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str = ""
    details: list[Message] = field(default_factory=list)
    response: Message | None = None
    http_status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def detail(self, cls: type[Message]) -> Any:
        for detail in self.details:
            if isinstance(detail, cls):
                return detail
        raise AssertionError(f"no {cls.DESCRIPTOR.full_name} among {self.details}")


@dataclass(frozen=True)
class Rpc:
    """An RPC and the REST request that means the same."""

    path: str
    request: Message
    response_class: type[Message]
    http_method: str
    http_path: str
    body: Any = None
    query: dict[str, Any] | None = None


def _unpack(status: status_pb2.Status) -> list[Message]:
    unpacked: list[Message] = []
    for any_detail in status.details:
        cls = _DETAIL_TYPES[any_detail.TypeName()]
        detail = cls()
        any_detail.Unpack(detail)
        unpacked.append(detail)
    return unpacked


def call(protocol: str, roz: Roz, rpc: Rpc, key: str | None) -> Outcome:
    return call_with_authorization(protocol, roz, rpc, f"Bearer {key}" if key else None)


def call_with_authorization(
    protocol: str, roz: Roz, rpc: Rpc, authorization: str | None
) -> Outcome:
    """The call with this exact Authorization header (None: without one)."""
    if protocol == "rest":
        return _rest(roz, rpc, authorization)
    if protocol == "grpc":
        return _grpc(roz, rpc, authorization)
    if protocol == "grpc-web":
        return _grpc_web(roz, rpc, authorization)
    if protocol == "connect":
        return _connect(roz, rpc, authorization)
    raise ValueError(protocol)


def _metadata(authorization: str | None) -> list[tuple[str, str]]:
    return [("authorization", authorization)] if authorization else []


def _grpc(roz: Roz, rpc: Rpc, authorization: str | None) -> Outcome:
    with roz.channel() as channel:
        method = channel.unary_unary(
            rpc.path,
            request_serializer=type(rpc.request).SerializeToString,
            response_deserializer=rpc.response_class.FromString,
        )
        try:
            response, call_ = method.with_call(
                rpc.request, metadata=_metadata(authorization), timeout=30
            )
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            return Outcome(
                code=error.code(),
                message=error.details() or "",
                details=_unpack(status) if status else [],
            )
    headers = {k: v for k, v in call_.initial_metadata() if isinstance(v, str)}
    return Outcome(code=grpc.StatusCode.OK, response=response, headers=headers)


def _grpc_web(roz: Roz, rpc: Rpc, authorization: str | None) -> Outcome:
    with sonora.client.insecure_web_channel(roz.url) as channel:
        method = channel.unary_unary(
            rpc.path, type(rpc.request).SerializeToString, rpc.response_class.FromString
        )
        try:
            response = method(rpc.request, metadata=_metadata(authorization), timeout=30)
        except grpc.RpcError:
            return _grpc_web_failure(roz, rpc, authorization)
    return Outcome(code=grpc.StatusCode.OK, response=response)


def _grpc_web_failure(roz: Roz, rpc: Rpc, authorization: str | None) -> Outcome:
    """sonora's client drops grpc-status-details-bin; read the wire ourselves."""
    payload = rpc.request.SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    headers.update(dict(_metadata(authorization)))
    response = httpx.post(
        roz.url + rpc.path,
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers=headers,
        timeout=30,
    )
    trailers = {k.lower(): v for k, v in response.headers.items()}
    trailers.update(grpc_web.trailers(response.content))
    code = grpc.StatusCode(_CODE_NUMBERS[int(trailers["grpc-status"])])
    details: list[Message] = []
    if "grpc-status-details-bin" in trailers:
        raw = trailers["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        details = _unpack(status)
    return Outcome(code=code, message=unquote(trailers.get("grpc-message", "")), details=details)


def _rest(roz: Roz, rpc: Rpc, authorization: str | None) -> Outcome:
    sent = {"authorization": authorization.encode()} if authorization else {}
    with roz.rest() as client:
        response = client.request(
            rpc.http_method, rpc.http_path, json=rpc.body, params=rpc.query, headers=sent
        )
    headers = {k.lower(): v for k, v in response.headers.items()}
    if response.status_code < 300:
        message = rpc.response_class()
        if response.content:
            json_format.Parse(response.text, message)
        return Outcome(
            code=grpc.StatusCode.OK,
            response=message,
            http_status=response.status_code,
            headers=headers,
        )
    status = json_format.ParseDict(response.json(), status_pb2.Status())
    return Outcome(
        code=grpc.StatusCode(_CODE_NUMBERS[status.code]),
        message=status.message,
        details=_unpack(status),
        http_status=response.status_code,
        headers=headers,
    )


def _connect(roz: Roz, rpc: Rpc, authorization: str | None) -> Outcome:
    """JSON, or binary protobuf for a request JSON cannot express (a NaN in a Struct)."""
    try:
        body, content_type = json_format.MessageToJson(rpc.request, indent=None).encode(), "json"
    except json_format.SerializeToJsonError:
        body, content_type = rpc.request.SerializeToString(), "proto"
    sent: dict[str, str | bytes] = {
        "content-type": f"application/{content_type}",
        "connect-protocol-version": "1",
    }
    if authorization:
        sent["authorization"] = authorization.encode()
    with roz.rest() as client:
        response = client.post(rpc.path, content=body, headers=sent)
    headers = {k.lower(): v for k, v in response.headers.items()}
    if response.status_code == 200:
        message = rpc.response_class()
        if content_type == "json":
            json_format.Parse(response.text, message)
        else:
            message.ParseFromString(response.content)
        return Outcome(code=grpc.StatusCode.OK, response=message, http_status=200, headers=headers)
    error = response.json()
    name = "CANCELLED" if error["code"] == "canceled" else error["code"].upper()
    status = status_pb2.Status()
    for detail in error.get("details", []):
        value = detail["value"]
        status.details.add(
            type_url="type.googleapis.com/" + detail["type"],
            value=base64.b64decode(value + "=" * (-len(value) % 4)),
        )
    return Outcome(
        code=grpc.StatusCode[name],
        message=error.get("message", ""),
        details=_unpack(status),
        http_status=response.status_code,
        headers=headers,
    )


_CODE_NUMBERS = {code.value[0]: code.value for code in grpc.StatusCode}
