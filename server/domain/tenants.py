"""Tenants: the isolation boundary of every resource, and the rule for their names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.names import name_problem

# The tenant a self-hosted server creates on its first start.
DEFAULT_TENANT_NAME = "default"


@dataclass(frozen=True)
class Tenant:
    id: UUID
    name: str
    create_time: datetime


def validate_tenant_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise InvalidArgument(
            f"tenant name {problem}", [FieldViolation("tenant.name", f"name {problem}")]
        )
    return name
