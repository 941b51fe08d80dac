"""google.api.http path templates: parsed at start-up; what their variables capture, decoded.

Grammar (google/api/http.proto): `Template = "/" Segments [":" Verb]`, a segment is a literal, `*`
(exactly one segment), `**` (zero or more, last only) or a variable `{field.path=Segments}`, where
`{x}` means `{x=*}`. A variable never nests and may span several segments, literals included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

ANY = "*"
REST = "**"

_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[^/{}*:=]+")
_VERB = re.compile(r"[^/{}*:=]+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPED_SLASH = re.compile(r"%2[fF]")


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


@dataclass(frozen=True)
class Variable:
    """A `{field.path=...}` capture over template segments [start, end)."""

    field_path: str
    start: int
    end: int
    # Multi-segment captures keep %2F encoded so the value's slashes stay unambiguous.
    multi_segment: bool
    # The capture ends with `**`, so it takes every remaining request segment.
    to_end: bool

    def capture(self, segments: list[str]) -> str:
        """The decoded value from the request's raw (still percent-encoded) segments."""
        raw = segments[self.start :] if self.to_end else segments[self.start : self.end]
        if self.multi_segment:
            return decode_keeping_slashes("/".join(raw))
        return decode(raw[0])


@dataclass(frozen=True)
class PathTemplate:
    text: str
    # Each segment is a literal, ANY or REST; variables only record which segments they cover.
    segments: tuple[str, ...]
    variables: tuple[Variable, ...]
    verb: str | None

    @property
    def shape(self) -> str:
        """The template with variables erased: two templates of one shape match the same paths."""
        text = "/" + "/".join(self.segments)
        return f"{text}:{self.verb}" if self.verb is not None else text

    @property
    def is_literal(self) -> bool:
        return all(segment not in (ANY, REST) for segment in self.segments)


def parse_template(text: str) -> PathTemplate:
    """Parses a template; raises TemplateError naming the template and what is wrong with it."""
    try:
        return _Parser(text).parse()
    except TemplateError as exc:
        raise TemplateError(f"path template {text!r}: {exc}") from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[str] = []
        self.variables: list[Variable] = []

    def parse(self) -> PathTemplate:
        if not self.text.startswith("/"):
            raise TemplateError("must start with '/'")
        original = self.text
        body, verb = self._split_verb()
        self.text, self.pos = body, 1
        if body == "/":
            raise TemplateError("needs at least one segment")
        while True:
            if self.text.startswith("{", self.pos):
                self._variable()
            else:
                self.segments.append(self._segment(self._until("/")))
            if self.pos == len(self.text):
                break
            if self.text[self.pos] != "/":
                raise TemplateError(f"unexpected {self.text[self.pos]!r} at {self.pos}")
            self.pos += 1
        if REST in self.segments[:-1]:
            raise TemplateError("'**' may only be the last segment")
        names = [v.field_path for v in self.variables]
        if len(set(names)) != len(names):
            raise TemplateError("binds the same field twice")
        return PathTemplate(original, tuple(self.segments), tuple(self.variables), verb)

    def _split_verb(self) -> tuple[str, str | None]:
        # The verb is a ':' outside braces after the last '/' outside braces.
        depth, colon = 0, -1
        for index, char in enumerate(self.text):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            elif depth == 0 and char == "/":
                colon = -1
            elif depth == 0 and char == ":" and colon < 0:
                colon = index
        if depth != 0:
            raise TemplateError("unbalanced braces")
        if colon < 0:
            return self.text, None
        verb = self.text[colon + 1 :]
        if not _VERB.fullmatch(verb):
            raise TemplateError(f"invalid verb {verb!r}")
        return self.text[:colon], verb

    def _until(self, stops: str) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            self.pos += 1
        return self.text[start : self.pos]

    def _segment(self, text: str) -> str:
        if text in (ANY, REST):
            return text
        if not text:
            raise TemplateError("empty segment")
        if not _LITERAL.fullmatch(text):
            raise TemplateError(f"invalid literal {text!r}")
        return decode(text)

    def _variable(self) -> None:
        self.pos += 1  # "{"
        inner = self._until("}")
        if self.pos == len(self.text):
            raise TemplateError("unclosed '{'")
        self.pos += 1  # "}"
        field_path, _, pattern = inner.partition("=")
        if not _FIELD_PATH.fullmatch(field_path):
            raise TemplateError(f"invalid field path {field_path!r}")
        if "{" in pattern:
            raise TemplateError("variables may not nest")
        parts = [self._segment(part) for part in (pattern or ANY).split("/")]
        start = len(self.segments)
        self.segments.extend(parts)
        self.variables.append(
            Variable(
                field_path=field_path,
                start=start,
                end=len(self.segments),
                multi_segment=len(parts) > 1 or REST in parts,
                to_end=parts[-1] == REST,
            )
        )


def check_escapes(raw: str) -> None:
    if _BAD_ESCAPE.search(raw):
        raise ValueError(f"malformed percent-encoding in {raw!r}")


def decode(raw: str) -> str:
    """Fully decodes one segment (single-segment captures and literal matching)."""
    if "%" not in raw:
        return raw
    check_escapes(raw)
    return unquote(raw, errors="strict")


def decode_keeping_slashes(raw: str) -> str:
    """Decodes everything but %2F, which would otherwise be confused with a separator."""
    if "%" not in raw:
        return raw
    check_escapes(raw)
    return "%2F".join(unquote(part, errors="strict") for part in _ESCAPED_SLASH.split(raw))
