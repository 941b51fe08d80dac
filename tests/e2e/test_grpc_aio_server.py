"""The same servicers and chain run unchanged on grpcio's own server (the benchmark comparator)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from roz.v1 import environments_pb2 as pb
from roz.v1 import environments_pb2_grpc

from tests.e2e.conftest import Roz


async def start_grpcio_server(roz: Roz) -> tuple[Any, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((roz.app.registry.generic_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture(scope="module")
def grpcio_target(roz: Roz) -> Iterator[str]:
    server, port = roz.listener.call(start_grpcio_server(roz))
    yield f"127.0.0.1:{port}"
    roz.listener.call(server.stop(0))


def test_same_answers_on_grpcio_server(roz: Roz, grpcio_target: str) -> None:
    metadata = [("authorization", f"Bearer {roz.admin_key}")]
    name = f"aio-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(grpcio_target) as channel:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        created = stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(environment=pb.Environment(name=name)),
            metadata=metadata,
            timeout=10,
        )
        assert stub.GetEnvironment(pb.GetEnvironmentRequest(id=created.id), metadata=metadata) == (
            created
        )
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetEnvironment(pb.GetEnvironmentRequest(id=str(uuid.uuid4())), metadata=metadata)
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.ListEnvironments(pb.ListEnvironmentsRequest())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(missing.value)
    assert status is not None
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert info.resource_type == "environment"
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
