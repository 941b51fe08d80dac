"""How the CLI shows what the server answered: a table for people, JSON or YAML for programs.

JSON and YAML are the server's documents unchanged (proto field names, enums by name, int64 as
strings); only the table is the CLI's own reading of them. Results go to stdout, errors to
stderr: as one `roz: …` line plus a line per field violation for people, or as the server's
google.rpc.Status under "error" for programs (`-o json`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from roz_cli.client import ApiError
from roz_cli.config import API_KEY_ENV
from roz_cli.errors import CliError

FORMATS = ("table", "json", "yaml")
# STATE_RUNNING → RUNNING, STATUS_ONLINE → ONLINE, KIND_EDGE → EDGE: a column says which enum.
_ENUM_PREFIX = re.compile(r"^(STATE|STATUS|KIND|PROTOCOL)_")
# 2026-12-08T00:30:12.123456Z → 2026-12-08T00:30:12Z: seconds are enough to read.
_FRACTION = re.compile(r"\.\d+(?=Z|[+-]\d\d:\d\d$)")
_ELLIPSIS = "…"


def text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def enum(value: Any) -> str:
    return _ENUM_PREFIX.sub("", text(value))


def time(value: Any) -> str:
    return _FRACTION.sub("", text(value))


def count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list | dict) else "0"


@dataclass(frozen=True)
class Column:
    """One column of a resource's table: its header, the field it shows, and how."""

    header: str
    field: str  # a dotted path into the resource's JSON: "limits.max_force"
    show: Callable[[Any], str] = text
    width: int | None = None  # longer cells are cut, with an ellipsis

    def cell(self, resource: Mapping[str, Any]) -> str:
        value: Any = resource
        for part in self.field.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        shown = self.show(value).replace("\n", " ")
        if self.width is not None and len(shown) > self.width:
            return shown[: self.width - 1] + _ELLIPSIS
        return shown


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Columns padded to their widest cell, two spaces apart; the header line first."""
    cells = [[column.header for column in columns]]
    cells += [[column.cell(row) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


class Printer:
    """Writes results in one of FORMATS to `out`, errors to `err`."""

    def __init__(self, output: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.output = output
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def document(
        self,
        document: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[Column],
    ) -> None:
        """A whole answer: `document` as JSON or YAML, else `rows` of it as a table."""
        if self.output == "table":
            self._write(self.out, table(rows, columns) + "\n")
        else:
            self._write(self.out, self._serialise(document))

    def event(self, event: Mapping[str, Any], line: Callable[[], str | None]) -> None:
        """One message of a stream, flushed at once: a JSON line, a YAML document, or `line()`
        (None: nothing for people, such as a checkpoint)."""
        if self.output == "json":
            self._write(self.out, json.dumps(event, ensure_ascii=False) + "\n")
        elif self.output == "yaml":
            self._write(self.out, str(yaml.safe_dump(dict(event), explicit_start=True, **_YAML)))
        elif (shown := line()) is not None:
            self._write(self.out, shown + "\n")

    def text_line(self, line: str) -> None:
        self._write(self.out, line + "\n")

    def note(self, message: str) -> None:
        """Something for the person at the terminal, never for a pipe: always on stderr."""
        self._write(self.err, message + "\n")

    def error(self, error: CliError) -> None:
        if self.output == "table":
            lines = [f"roz: {error.message}"]
            if isinstance(error, ApiError):
                lines += [f"  {line}" for line in detail_lines(error.details)]
                if error.status == 401:
                    lines.append(f"  the key is from ${API_KEY_ENV} or roz login; run roz login")
            self._write(self.err, "\n".join(lines) + "\n")
            return
        status: Mapping[str, Any] = {"message": error.message}
        if isinstance(error, ApiError) and error.document is not None:
            status = error.document
        self._write(self.err, self._serialise({"error": dict(status)}))

    def _serialise(self, document: Mapping[str, Any]) -> str:
        if self.output == "yaml":
            return str(yaml.safe_dump(dict(document), **_YAML))
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"

    @staticmethod
    def _write(stream: TextIO, content: str) -> None:
        stream.write(content)
        stream.flush()


_YAML: dict[str, Any] = {"sort_keys": False, "allow_unicode": True, "default_flow_style": False}


def detail_lines(details: Sequence[Mapping[str, Any]]) -> list[str]:
    """What a google.rpc.Status's details say, a line each: every field violation (BadRequest),
    every broken constraint (ErrorInfo), every failed precondition, and when to retry."""
    lines: list[str] = []
    for detail in details:
        kind = str(detail.get("@type", "")).rsplit("/", 1)[-1]
        if kind == "google.rpc.BadRequest":
            for violation in _dicts(detail.get("field_violations")):
                lines.append(f"{violation.get('field', '')}: {violation.get('description', '')}")
        elif kind == "google.rpc.ErrorInfo":
            metadata = detail.get("metadata")
            pairs = (
                ", ".join(f"{key}={value}" for key, value in metadata.items())
                if isinstance(metadata, dict)
                else ""
            )
            lines.append(f"{detail.get('reason', '')}" + (f" ({pairs})" if pairs else ""))
        elif kind == "google.rpc.PreconditionFailure":
            for violation in _dicts(detail.get("violations")):
                lines.append(
                    f"{violation.get('type', '')} {violation.get('subject', '')}: "
                    f"{violation.get('description', '')}".strip()
                )
        elif kind == "google.rpc.RetryInfo":
            lines.append(f"retry after {detail.get('retry_delay', '?')}")
    return lines


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []
