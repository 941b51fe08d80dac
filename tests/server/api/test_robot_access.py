"""The robot-key rule of roz's interceptors, on a test service whose methods are marked `robot`.

No roz method is marked yet (the robot link comes next), so the rule is tested here: roz's own
AccessRules, Authenticate and Authorize and error table, in a gateway over a real listener, called
over REST, gRPC-web and native gRPC. Keys are resolved by a table standing in for the API-key
lookup; tests/e2e/test_robot_keys.py covers the lookup itself against PostgreSQL.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.api.http_pb2
import pytest
from google.rpc import code_pb2
from grpc_tools import protoc

from gateway.chain import InterceptorChain
from gateway.connect import ConnectApp
from gateway.grpc_native import NativeGrpcApp
from gateway.grpc_web import GrpcWebApp
from gateway.registry import MethodRegistry
from gateway.rest import RestApp
from gateway.router import GatewayRouter
from server.api.errors import status_for
from server.api.interceptors import AccessRules, Authenticate, Authorize
from server.api.principal import current_principal
from server.domain.api_keys import Principal, mint_secret
from tests.gateway.echo_service import echo_pb2
from tests.gateway.test_parity import PROTOCOLS, Outcome, call
from tests.support.server import RunningServer, running

_HERE = Path(__file__).parent
_ROOT = _HERE.parent.parent.parent


def _compile() -> tuple[Any, Any]:
    out = Path(tempfile.mkdtemp(prefix="robot-echo-proto-"))
    googleapis = Path(google.api.http_pb2.__file__).parent.parent.parent
    args = [
        "protoc",
        f"-I{_HERE}",
        f"-I{_ROOT / 'tests' / 'gateway'}",
        f"-I{_ROOT / 'proto'}",
        f"-I{googleapis}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(_HERE / "robot_echo.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("could not compile robot_echo.proto")
    sys.path.insert(0, str(out))
    return importlib.import_module("robot_echo_pb2"), importlib.import_module("robot_echo_pb2_grpc")


robot_echo_pb2, robot_echo_pb2_grpc = _compile()

TENANT = uuid.uuid4()
HOST = uuid.uuid4()


def _principal(*scopes: str, host_id: uuid.UUID | None = None) -> Principal:
    return Principal(
        key_id=uuid.uuid4(), tenant_id=TENANT, scopes=frozenset(scopes), host_id=host_id
    )


# Secrets and who they are. The bound key holding "admin" cannot exist in the database (a CHECK
# forbids it); here it shows that the binding is checked before, and instead of, any scope.
KEYS = {
    "robot": _principal(host_id=HOST),
    "robot-with-admin": _principal("admin", host_id=HOST),
    "admin": _principal("admin"),
    "host-writer": _principal("hosts:write"),
    "no-scopes": _principal(),
}
SECRETS = {name: mint_secret() for name in KEYS}


class RobotEcho(robot_echo_pb2_grpc.RobotEchoServiceServicer):  # type: ignore[name-defined,misc]
    """Answers every method with the principal it was called as."""

    def __init__(self) -> None:
        self.seen: list[Principal] = []

    async def _answer(self, request: Any, context: Any) -> Any:
        self.seen.append(current_principal())
        return echo_pb2.EchoResponse(echoed=request)

    Report = Heartbeat = Hello = WhoAmI = Manage = _answer


SERVICER = RobotEcho()


def build() -> GatewayRouter:
    principals = {SECRETS[name]: principal for name, principal in KEYS.items()}

    async def lookup(secret: str) -> Principal | None:
        return principals.get(secret)

    rules = AccessRules()
    chain = InterceptorChain(
        [Authenticate(rules, lookup), Authorize(rules)], translate_error=status_for
    )
    registry = MethodRegistry(chain)
    robot_echo_pb2_grpc.add_RobotEchoServiceServicer_to_server(SERVICER, registry)
    rules.load(registry.methods())
    return GatewayRouter(
        grpc_app=NativeGrpcApp(registry),
        grpc_web_app=GrpcWebApp(registry),
        rest_app=RestApp(registry),
        connect_app=ConnectApp(registry),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running(build) as running_server:
        yield running_server


SERVICE = "/testing.robot.v1.RobotEchoService/"
REST = {
    "Report": ("POST", "/v1/robot/report", {}),
    "Heartbeat": ("POST", "/v1/robot/heartbeat", {}),
    "Hello": ("GET", "/v1/robot/hello", None),
    "WhoAmI": ("GET", "/v1/robot/whoami", None),
    "Manage": ("POST", "/v1/robot/manage", {}),
}


def outcome(server: RunningServer, protocol: str, method: str, key: str) -> Outcome:
    return call(
        protocol,
        server,
        SERVICE + method,
        echo_pb2.EchoRequest(),
        REST[method],
        headers={"authorization": f"Bearer {SECRETS[key]}"},
    )


def reason(result: Outcome) -> str:
    (info,) = [json.loads(d) for d in result[2] if "ErrorInfo" in d]
    return str(info["reason"])


OK = "OK"
# (method, key) → OK or the ErrorInfo reason of its PERMISSION_DENIED.
MATRIX = [
    ("Report", "robot", OK),
    ("Report", "robot-with-admin", OK),
    ("Report", "admin", "ROBOT_ONLY"),
    ("Report", "no-scopes", "ROBOT_ONLY"),
    ("Heartbeat", "robot", OK),
    ("Heartbeat", "host-writer", OK),
    ("Heartbeat", "admin", OK),
    ("Heartbeat", "no-scopes", "SCOPE_MISSING"),
    ("Hello", "robot", OK),
    ("Hello", "no-scopes", OK),
    ("WhoAmI", "robot", "ROBOT_KEY_REFUSED"),
    ("WhoAmI", "robot-with-admin", "ROBOT_KEY_REFUSED"),
    ("WhoAmI", "no-scopes", OK),
    ("Manage", "robot", "ROBOT_KEY_REFUSED"),
    ("Manage", "robot-with-admin", "ROBOT_KEY_REFUSED"),
    ("Manage", "admin", OK),
    ("Manage", "host-writer", "SCOPE_MISSING"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("method", "key", "expected"), MATRIX)
def test_who_may_call_what(
    server: RunningServer, protocol: str, method: str, key: str, expected: str
) -> None:
    result = outcome(server, protocol, method, key)
    if expected == OK:
        assert result == (0, "", []), result
    else:
        assert result[0] == code_pb2.PERMISSION_DENIED, result
        assert reason(result) == expected


def test_refusals_read_the_same_on_every_protocol(server: RunningServer) -> None:
    results = {protocol: outcome(server, protocol, "Manage", "robot") for protocol in PROTOCOLS}
    assert results["rest"] == results["grpc-web"] == results["grpc"], results
    assert str(HOST) in results["grpc"][1]


def test_the_servicer_sees_the_binding_on_the_principal(server: RunningServer) -> None:
    for protocol in PROTOCOLS:
        SERVICER.seen.clear()
        assert outcome(server, protocol, "Report", "robot")[0] == 0
        (principal,) = SERVICER.seen
        assert principal == KEYS["robot"]
        assert principal.host_id == HOST


def test_a_rule_both_public_and_robot_stops_the_start() -> None:
    registry = MethodRegistry(InterceptorChain())
    robot_echo_pb2_grpc.add_ContradictoryServiceServicer_to_server(
        robot_echo_pb2_grpc.ContradictoryServiceServicer(), registry
    )
    with pytest.raises(ValueError, match="public and also names who may call it"):
        AccessRules().load(registry.methods())
