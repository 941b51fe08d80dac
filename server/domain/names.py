"""The rule every human-chosen name in roz follows (tenants, API keys, environments)."""

from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 128


def name_problem(value: str, *, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """Why `value` cannot be a name, or None when it can.

    Names appear in logs, CLIs and tables, so control characters (newlines, NUL, escapes) are
    refused rather than stripped: a client should learn that its input was wrong.
    """
    if not value or not value.strip():
        return "is required"
    if len(value) > max_length:
        return f"must be at most {max_length} characters"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "must not contain control characters"
    return None
