"""Free-form JSON objects clients attach to resources (an environment's config, a command's params).

Storage keeps them as PostgreSQL jsonb, so the rules are jsonb's as well as ours: a bounded size,
finite numbers only, and no NUL character anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from server.domain.errors import ReportViolation


def check_json_object(
    name: str, value: Mapping[str, Any], max_bytes: int, violation: ReportViolation
) -> dict[str, Any] | None:
    """`value` as plain JSON, or None once every reason it cannot be stored is reported on `name`.

    `max_bytes` bounds the compact UTF-8 serialization, whatever form the object came in.
    """
    if not isinstance(value, Mapping):
        violation(name, f"{name} must be a JSON object")
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        violation(name, f"{name} must be JSON: objects, arrays, strings, finite numbers")
        return None
    valid = True
    if len(text.encode("utf-8")) > max_bytes:
        violation(name, f"{name} must be at most {max_bytes} bytes of JSON")
        valid = False
    # PostgreSQL's jsonb cannot hold NUL in strings; refuse it here rather than fail there.
    if _contains_nul(value):
        violation(name, f"{name} must not contain NUL characters")
        valid = False
    if not valid:
        return None
    # A round trip leaves plain dicts, lists and scalars, whatever mappings came in.
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(key) or _contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False
