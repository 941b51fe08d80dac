"""schemathesis over every operation of /openapi.json, against a live server: the document is
what the server does.

Each operation gets generated requests (valid and invalid), sent with an admin key, and every
response is checked: no 5xx, a status the operation documents, a content type it documents,
a body its schema admits. Ids in paths are mostly random, so most reads answer 404 — which the
document must then list; a module fixture also creates one of each resource and the hooks below
put its id into some of the cases, so successful answers are checked too.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import Roz

NDJSON = "application/x-ndjson"
# Streams (watches) never end by themselves: a short deadline ends each one, in its framing.
STREAM_DEADLINE = "300m"
# Derandomized, as the fuzz tier is: CI runs the same examples every time, and a failure
# reproduces. ROZ_FUZZ_EXAMPLES (the fuzz tier's setting) runs more of them for a longer hunt.
EXAMPLES = int(os.environ.get("ROZ_FUZZ_EXAMPLES") or 25)
# Every other case of an operation with an id in its path gets a real one. Streams are read as
# NDJSON: schemathesis 4.32 reads event streams with urllib3 2's read1, and the lock holds
# urllib3 1.26, so test_openapi.py checks server-sent events against the document instead.
TURNS = itertools.count()
REVOKE_OWN_KEY = "/api/v1/caller/api-key"


# The committed document, which test_openapi.py shows is byte for byte the one the server serves.
# (schemathesis's from_fixture, which would load it from the server, does not run on pytest 9.)
DOCUMENT = Path(__file__).parents[2] / "gen" / "openapi.json"
OPENAPI = json.loads(DOCUMENT.read_text(encoding="utf-8"))
schema = schemathesis.openapi.from_dict(OPENAPI)


def _validator(subschema: dict[str, Any]) -> Draft202012Validator:
    # The document's components beside the subschema: its "#/components/..." refs resolve.
    root = {**subschema, "components": OPENAPI["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def stream_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """Each NDJSON line of a stream is what the document says a line is (schemathesis itself
    validates JSON bodies only)."""
    media = (response.headers.get("content-type") or [""])[0].split(";")[0]
    if response.status_code != 200 or media != NDJSON:
        return None
    operation = OPENAPI["paths"][case.operation.path][case.method.lower()]
    validator = _validator(operation["responses"]["200"]["content"][NDJSON]["schema"])
    for line in response.content.decode().splitlines():
        validator.validate(json.loads(line))
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    stream_conformance,
]


Creator = Callable[[], str]


@pytest.fixture(scope="module")
def creators(server: Roz) -> Iterator[dict[str, Creator]]:
    """How to make a real resource, by the collection its paths name ("hosts" in /hosts/{id})."""
    with server.rest(server.admin_key) as rest:

        def create(collection: str, body: dict[str, Any]) -> str:
            if "name" in body:  # names are unique in a tenant
                body = body | {"name": f"{body['name']}-{uuid.uuid4().hex[:8]}"}
            response = rest.post(f"/api/v1/{collection}", json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        environment = create("environments", {"name": "fuzz"})
        trigger = {"name": "t", "environment_id": environment, "task_prompt": "p"}
        in_environment = {"environment_id": environment}
        yield {
            "environments": lambda: create("environments", {"name": "fuzz"}),
            "hosts": lambda: create("hosts", {"name": "fuzz-host"} | in_environment),
            "safety-policies": lambda: create("safety-policies", {"name": "fuzz-policy"}),
            "tasks": lambda: create("tasks", {"prompt": "fuzz"} | in_environment),
            "triggers": lambda: create("triggers", trigger | {"schedule": {"cron": "0 3 * * *"}}),
        }


@pytest.fixture(scope="module")
def existing(creators: dict[str, Creator]) -> dict[str, str]:
    """One real resource of each kind, shared by the cases that read or change it."""
    return {collection: create() for collection, create in creators.items()}


def _throwaway_key(server: Roz) -> str:
    with server.rest(server.admin_key) as rest:
        response = rest.post("/api/v1/auth-keys", json={"name": "throwaway", "scopes": []})
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])


def _collection(path: str, parameter: str) -> str:
    before = path.split("{" + parameter + "}", 1)[0].rstrip("/")
    return before.rsplit("/", 1)[-1]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_does_what_the_document_says(
    case: Any, server: Roz, existing: dict[str, str], creators: dict[str, Creator]
) -> None:
    turn = next(TURNS)  # (Hypothesis seeds `random` the same for every example)
    for name in case.path_parameters or {}:
        collection = _collection(case.path, name)
        if collection in existing and turn % 2:
            # A delete gets a resource of its own, so the shared one outlives it.
            fresh = case.method == "DELETE"
            case.path_parameters[name] = creators[collection]() if fresh else existing[collection]
    key = server.admin_key
    if case.path == REVOKE_OWN_KEY:
        key = _throwaway_key(server)  # it revokes the key that calls it
    headers = {"authorization": f"Bearer {key}"}
    if case.path.endswith(("/watch", "/events")):
        headers["grpc-timeout"] = STREAM_DEADLINE
    case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS, timeout=30)
