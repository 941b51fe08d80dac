"""Short tokens clients list by name (tools, capabilities, command types) and the lists of them.

A token reads well in logs, CLIs and policy lists ("arm.move_to", "ns:tool-1"): letters, digits
and _ . : -, never spaces or control characters. Each kind bounds its own length and list size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.domain.errors import ReportViolation

_TOKEN = re.compile(r"[A-Za-z0-9_.:-]+")


@dataclass(frozen=True)
class TokenKind:
    """One kind of token, with the words its messages use ("at most 64 capabilities …")."""

    # "tool": in "tool 'x' is listed twice".
    singular: str
    # "tools": in "at most 256 tools are allowed".
    plural: str
    max_count: int
    max_length: int
    # How a message names one token when its shape is wrong; "a {singular}" when empty.
    described_as: str = ""

    def problem(self, value: str) -> str | None:
        """Why `value` cannot be a token of this kind, or None when it can."""
        one = self.described_as or f"a {self.singular}"
        if not 1 <= len(value) <= self.max_length:
            return f"{one} has 1 to {self.max_length} characters"
        if _TOKEN.fullmatch(value) is None:
            return f"{one} uses only letters, digits and _ . : -"
        return None

    def check_list(
        self,
        name: str,
        values: Sequence[str],
        violation: ReportViolation,
        *,
        check_each: bool = True,
    ) -> tuple[str, ...]:
        """The distinct well-formed tokens in order; each problem reported on `name[index]`.

        `check_each=False` checks only the count and the repeats, for lists whose every token is
        checked against another list instead (a task's tools against its environment's).
        """
        if len(values) > self.max_count:
            violation(name, f"at most {self.max_count} {self.plural} are allowed")
        # A set beside the list: an oversized list is still checked to its end, in linear time.
        kept: list[str] = []
        seen: set[str] = set()
        for index, value in enumerate(values):
            problem = self.problem(value) if check_each else None
            if problem is not None:
                violation(f"{name}[{index}]", problem)
            elif value in seen:
                violation(f"{name}[{index}]", f"{self.singular} {value!r} is listed twice")
            else:
                kept.append(value)
                seen.add(value)
        return tuple(kept)
