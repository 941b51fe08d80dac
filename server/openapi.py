"""roz's OpenAPI document: the gateway's generator with roz's scopes, OAuth endpoints and comments.

What the gateway cannot know is added here through its operation hook: each operation's
security from its `(roz.v1.access)` rule (public ones `security: []`), and the RFC 6749 error
shape of the device-login endpoints, whose errors the REST app writes with `oauth_error`.
Proto comments come from `gen/roz/proto_comments.json`, which `make gen` extracts from a
descriptor set with source info (`python -m server.openapi` writes it and gen/openapi.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

from gateway.openapi import (
    DocumentOptions,
    Operation,
    SchemaSet,
    UpdateWithoutMask,
    build_document,
    dumps,
    error_response,
    ref,
)
from gateway.openapi.comments import read_comments
from gateway.rest.app import RestApp
from gateway.rest.bindings import Binding
from server.api.device_auth import oauth_error
from server.api.interceptors import AccessRules
from server.domain.device_auth import OAuthError

COMMENTS_FILE = "proto_comments.json"  # in the generated package `roz`
API_KEY = "apiKey"
OAUTH_ERROR = "roz.OAuthError"
TITLE = "roz API"
# Public (no API key), but a signature is the credential: a bad one answers 401.
SIGNED_PUBLIC_METHODS = frozenset({"/roz.v1.TriggerService/DeliverWebhook"})
_DESCRIPTION = """\
The REST face of roz's gRPC API, transcoded in process from the same proto definitions; native \
gRPC, gRPC-web and this REST API share one port.

Authenticate with an API key: `Authorization: Bearer roz_sk_…`. Each operation names the scope \
its key must hold (`<group>:<level>`; `admin` implies `write`, `write` implies `read`, and the \
bare scope `admin` grants every group). JSON uses proto field names; 64-bit integers are \
strings; enums are written by name. Errors are `google.rpc.Status` with details, except on the \
device-login endpoints, which answer as RFC 6749 says."""
# RFC 6749 §5.2 / RFC 8628 §3.5 codes, and what oauth_error answers for other failures.
_OAUTH_ERRORS = sorted(
    {e.value for e in OAuthError} | {"slow_down", "temporarily_unavailable", "server_error"}
)
_OAUTH_STATUSES = {
    400: "The device flow's answer (authorization_pending, slow_down, expired_token, "
    "access_denied, invalid_grant …) or a malformed request.",
    404: "No such device code.",
    413: "The request body is too large (invalid_request).",
    415: "The body is neither JSON nor a form (invalid_request).",
    429: "Too many requests from this address (slow_down; Retry-After).",
    500: "Internal error (server_error).",
    503: "Unavailable (temporarily_unavailable).",
    504: "The call's deadline passed (server_error).",
}


def load_comments() -> dict[str, str]:
    """The proto comments `make gen` extracted; none if the file is missing."""
    try:
        text = (resources.files("roz") / COMMENTS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    loaded: dict[str, str] = json.loads(text)
    return loaded


def roz_document(rest: RestApp, rules: AccessRules, comments: dict[str, str]) -> bytes:
    """The document /openapi.json serves and gen/openapi.json holds, byte for byte."""

    def hook(binding: Binding, operation: Operation, schemas: SchemaSet) -> None:
        _security(binding, operation, rules)
        if binding.options.error_writer is oauth_error:
            _oauth(operation, schemas)

    options = DocumentOptions(
        title=TITLE,
        version="v1",
        description=_DESCRIPTION,
        comments=comments,
        security_schemes={
            API_KEY: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "roz_sk_…",
                "description": "A roz API key. Each operation lists the scope it needs.",
            }
        },
        operation_hook=hook,
        # parse_update_mask: an absent or empty mask, or "*", is every updatable field.
        update_without_mask=UpdateWithoutMask.REPLACES_ALL,
    )
    return dumps(build_document(rest.bindings(), options))


def _security(binding: Binding, operation: Operation, rules: AccessRules) -> None:
    rule = rules[binding.method.path]
    if rule.public:
        operation["security"] = []
        note = "Public: no API key needed."
    elif rule.scope:
        operation["security"] = [{API_KEY: [rule.scope]}]
        note = f"Needs an API key with scope `{rule.scope}` (or a broader one)."
        if rule.robot:
            note += " A robot key may call it for its own host."
    elif rule.any_key:
        operation["security"] = [{API_KEY: []}]
        note = "Needs any API key, whatever its scopes."
    else:
        operation["security"] = [{API_KEY: []}]
        note = "Needs a robot key (one bound to a host), for its own host."
    if rule.public:
        responses = operation["responses"]
        if binding.method.path not in SIGNED_PUBLIC_METHODS:
            responses.pop("401", None)  # no key is read, so none is refused
        responses.pop("403", None)
    operation["x-roz-scope"] = rule.scope or None
    operation["description"] = "\n\n".join(filter(None, [operation.get("description"), note]))


def _oauth(operation: Operation, schemas: SchemaSet) -> None:
    schemas.components[OAUTH_ERROR] = {
        "type": "object",
        "description": "RFC 6749 §5.2 error response.",
        "properties": {
            "error": {"type": "string", "enum": _OAUTH_ERRORS},
            "error_description": {"type": "string"},
        },
        "required": ["error"],
    }
    responses = operation["responses"]
    for status in [code for code in responses if code.startswith(("4", "5"))]:
        del responses[status]
    body = operation.get("requestBody")
    for status, why in _OAUTH_STATUSES.items():
        if status in (413, 415) and body is None:
            continue
        responses[str(status)] = error_response(why, ref(OAUTH_ERROR), status)
    for response in responses.values():
        response.setdefault("headers", {})["Cache-Control"] = {
            "schema": {"const": "no-store"},
            "description": "Token responses are never cached (RFC 6749 §5.1).",
        }


def extract_comments(buf: Path) -> dict[str, str]:
    """roz.v1's comments, from `buf build` run in the repository (it keeps source info)."""
    command = [str(buf), "build", "-o", "-"]
    built = subprocess.run(command, check=True, capture_output=True)  # noqa: S603 (our own buf)
    return read_comments(built.stdout, packages=("roz.v1",))


def main(argv: list[str]) -> int:
    """`python -m server.openapi GEN_DIR`: writes GEN_DIR/roz/proto_comments.json, then
    GEN_DIR/openapi.json from a server built with default settings (nothing is started)."""
    # Here, not at the top: server.app imports this module.
    from server.app import RozServer
    from server.settings import Settings

    gen = Path(argv[1] if len(argv) > 1 else "gen")
    comments = extract_comments(Path(sys.executable).parent / "buf")
    text = json.dumps(comments, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (gen / "roz" / COMMENTS_FILE).write_text(text, encoding="utf-8")
    server = RozServer(Settings())
    (gen / "openapi.json").write_bytes(roz_document(server.rest, server.access_rules, comments))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
