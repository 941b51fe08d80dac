"""The pages' templates and stylesheet, loaded from the package once, rendered with escaping."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("server.web", "templates"),
    autoescape=True,  # every template is HTML; nothing a client sent is ever markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

STYLESHEET = resources.files("server.web").joinpath("static/style.css").read_bytes()
# In the page's link, so that a new stylesheet is fetched at once despite caching.
STYLESHEET_VERSION = hashlib.sha256(STYLESHEET).hexdigest()[:12]


def render(template: str, **context: Any) -> bytes:
    return _environment.get_template(template).render(**context).encode("utf-8")


def when(moment: datetime, now: datetime) -> str:
    """A time as a person reads it on this page: "2026-05-01 12:00 UTC (3 minutes ago)"."""
    seconds = round((moment - now).total_seconds())
    minutes = round(abs(seconds) / 60)
    if minutes == 0:
        relative = "just now" if seconds <= 0 else "in under a minute"
    else:
        amount = f"{minutes} minute{'s' if minutes != 1 else ''}"
        relative = f"{amount} ago" if seconds < 0 else f"in {amount}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({relative})"
