"""schemathesis over every operation of /openapi.json, against a live server: the document is
what the server does.

Each operation gets generated requests (valid and invalid), sent with an admin key, and every
response is checked: no 5xx, a status the operation documents, a content type it documents,
a body its schema admits. Ids in paths are mostly random, so most reads answer 404 — which the
document must then list; a module fixture also creates one of each resource and the hooks below
put its id into some of the cases, so successful answers are checked too.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import Roz

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Streams (watches) never end by themselves: a short deadline ends each one, in its framing.
STREAM_DEADLINE = "300m"
EXAMPLES = 25


# The committed document, which test_openapi.py shows is byte for byte the one the server serves.
# (schemathesis's from_fixture, which would load it from the server, does not run on pytest 9.)
DOCUMENT = Path(__file__).parents[2] / "gen" / "openapi.json"
schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def existing(server: Roz) -> dict[str, str]:
    """Ids of real resources by the collection their paths name ("hosts" in /hosts/{id})."""
    with server.rest(server.admin_key) as rest:

        def create(collection: str, body: dict[str, Any]) -> str:
            response = rest.post(f"/api/v1/{collection}", json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        environment = create("environments", {"name": "fuzz"})
        trigger = {"name": "t", "environment_id": environment, "task_prompt": "p"}
        return {
            "environments": environment,
            "hosts": create("hosts", {"name": "fuzz-host", "environment_id": environment}),
            "safety-policies": create("safety-policies", {"name": "fuzz-policy"}),
            "tasks": create("tasks", {"prompt": "fuzz", "environment_id": environment}),
            "triggers": create("triggers", trigger | {"schedule": {"cron": "0 3 * * *"}}),
        }


def _collection(path: str, parameter: str) -> str:
    before = path.split("{" + parameter + "}", 1)[0].rstrip("/")
    return before.rsplit("/", 1)[-1]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_does_what_the_document_says(
    case: Any, server: Roz, existing: dict[str, str]
) -> None:
    for name in case.path_parameters or {}:
        known = existing.get(_collection(case.path, name))
        if known is not None and random.random() < 0.5:  # noqa: S311 (not a secret)
            case.path_parameters[name] = known
    headers = {"authorization": f"Bearer {server.admin_key}"}
    if case.path.endswith("/watch") or case.path.endswith("/events"):
        headers["grpc-timeout"] = STREAM_DEADLINE
    case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS, timeout=30)
