"""The audit trail's values spelled in several layers agree: protocols (the gateway's adapters,
the domain, the SQL CHECK, the proto enum) and chain breaks (the domain and the proto enum)."""

from __future__ import annotations

import re

from roz.v1 import audit_pb2 as pb

from server.api.audit import BREAK_TO_PROTO, PROTOCOL_TO_PROTO
from server.api.interceptors import _PROTOCOLS
from server.domain.audit import KINDS, Break, Protocol
from server.storage.database import Database


def test_every_protocol_has_one_proto_value_and_back() -> None:
    assert set(PROTOCOL_TO_PROTO) == set(Protocol)
    assert sorted(PROTOCOL_TO_PROTO.values()) == sorted(pb.Actor.Protocol.values())


def test_the_adapters_names_are_the_domains() -> None:
    # What gateway/grpc_native.py, grpc_web.py, connect.py and rest/app.py put in
    # GatewayContext.protocol.
    assert set(_PROTOCOLS) == {"grpc", "grpc-web", "rest", "connect"}
    assert {protocol.value for protocol in Protocol} == {"", *_PROTOCOLS}


def test_every_break_has_one_proto_value_and_back() -> None:
    assert set(BREAK_TO_PROTO) == {None, *Break}
    assert sorted(BREAK_TO_PROTO.values()) == sorted(pb.VerifyAuditEventsResponse.Break.values())


async def test_the_databases_protocols_and_kinds_are_the_domains(database: Database) -> None:
    async with database.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'audit_events_protocol_check'"
            )
        ).fetchone()
        assert row is not None
        functions = await (
            await conn.execute(
                "SELECT string_agg(prosrc, ' ') FROM pg_proc WHERE proname LIKE 'audit_%%'"
            )
        ).fetchone()
    assert set(re.findall(r"'([^']*)'::text", row[0])) == {p.value for p in Protocol}
    assert functions is not None
    named = set(re.findall(r"'((?:command|task|safety_policy|robot)\.[a-z_]+)'", functions[0]))
    named |= {
        f"{noun}.{verb}" for noun in ("command", "task") for verb in ("delivered", "acknowledged")
    }
    assert named - {"command.changed", "task.changed"} == set(KINDS)
