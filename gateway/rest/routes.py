"""The route table: one trie of path templates with HTTP methods at its leaves, built at start-up.

Precedence is Google/Envoy style, not registration order: at every segment a literal beats `*`,
which beats `**`, and the search backtracks when a more specific branch dead-ends. Two templates
of the same shape (equal once variable names are erased) bound to the same HTTP method can never
both be reached, so adding the second one raises RouteConflictError at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from gateway.rest.templates import ANY, REST, PathTemplate, decode

T = TypeVar("T")

ANY_METHOD = "*"  # google.api.http `custom {kind: "*"}` binds every HTTP method
_STANDARD_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH"})


class RouteConflictError(ValueError):
    """Two bindings that would match exactly the same requests."""


@dataclass(frozen=True)
class Route(Generic[T]):
    http_method: str
    template: PathTemplate
    target: T
    # Who declared it, for conflict messages ("pkg.Service.Method").
    origin: str


@dataclass
class _Node(Generic[T]):
    literals: dict[str, _Node[T]] = field(default_factory=dict)
    any: _Node[T] | None = None
    rest: _Node[T] | None = None
    # verb (None for none) -> HTTP method -> route ending here
    ends: dict[str | None, dict[str, Route[T]]] = field(default_factory=dict)


class Hit(NamedTuple, Generic[T]):
    route: Route[T]
    # The request's raw segments with any verb removed; the route's variables slice these.
    segments: list[str]


class RouteTable(Generic[T]):
    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._verbs: set[str] = set()
        # Fully literal templates answer from a dict before the trie is searched.
        self._exact: dict[tuple[str, str], Route[T]] = {}
        self._routes: list[Route[T]] = []

    def add(self, route: Route[T]) -> None:
        node = self._root
        for segment in route.template.segments:
            if segment == ANY:
                node.any = node = node.any or _Node()
            elif segment == REST:
                node.rest = node = node.rest or _Node()
            else:
                node = node.literals.setdefault(segment, _Node())
        by_method = node.ends.setdefault(route.template.verb, {})
        existing = by_method.get(route.http_method)
        if existing is not None:
            raise RouteConflictError(
                f"ambiguous REST bindings: {route.http_method} {route.template.text} "
                f"({route.origin}) and {existing.http_method} {existing.template.text} "
                f"({existing.origin}) match the same requests"
            )
        by_method[route.http_method] = route
        if route.template.verb is not None:
            self._verbs.add(route.template.verb)
        if route.template.is_literal:
            self._exact[(route.http_method, route.template.shape)] = route
        self._routes.append(route)

    def __iter__(self) -> Iterator[Route[T]]:
        return iter(self._routes)

    # -- per request ---------------------------------------------------------------------------

    def find(self, method: str, raw_path: str) -> Hit[T] | None:
        """The most specific route for this method and raw (percent-encoded) path, if any."""
        route = self._exact.get((method, raw_path))
        if route is not None:
            return Hit(route, [])  # literal templates capture nothing
        for segments, verb in self._candidates(raw_path):
            route = _search(self._root, segments, 0, verb, method)
            if route is not None:
                return Hit(route, segments)
            if verb is not None and _methods(self._root, segments, verb):
                return None  # the verb reading matches other methods: that is a 405
        return None

    def methods_for(self, raw_path: str) -> set[str]:
        """Every HTTP method some route binds to this path (empty when none matches)."""
        found: set[str] = set()
        for segments, verb in self._candidates(raw_path):
            found = _methods(self._root, segments, verb)
            if found:
                break  # as in find(): a path read with its verb is never read without it
        if ANY_METHOD in found:
            found.discard(ANY_METHOD)
            found |= _STANDARD_METHODS
        return found

    def _candidates(self, raw_path: str) -> list[tuple[list[str], str | None]]:
        # A trailing ":x" is a custom verb only if some template declares verb x; otherwise, or
        # if no route at all matches with it, the colon is part of the last segment (an id).
        if not raw_path.startswith("/"):
            return []
        segments = raw_path[1:].split("/")
        last = segments[-1]
        if ":" in last:
            colon = last.rfind(":")
            verb = last[colon + 1 :]
            if verb in self._verbs:
                return [([*segments[:-1], last[:colon]], verb), (segments, None)]
        return [(segments, None)]


def _pick(node: _Node[T], verb: str | None, method: str) -> Route[T] | None:
    by_method = node.ends.get(verb)
    if by_method is None:
        return None
    return by_method.get(method) or by_method.get(ANY_METHOD)


def _search(
    node: _Node[T], segments: list[str], index: int, verb: str | None, method: str
) -> Route[T] | None:
    if index == len(segments):
        found = _pick(node, verb, method)
        if found is None and node.rest is not None:
            found = _pick(node.rest, verb, method)  # `**` matches zero segments too
        return found
    segment = segments[index]
    child = node.literals.get(_literal_key(segment) if "%" in segment else segment)
    if child is not None:
        found = _search(child, segments, index + 1, verb, method)
        if found is not None:
            return found
    if node.any is not None and segment:
        found = _search(node.any, segments, index + 1, verb, method)
        if found is not None:
            return found
    if node.rest is not None:
        return _pick(node.rest, verb, method)
    return None


def _literal_key(segment: str) -> str:
    # A malformed escape matches no literal; a variable capturing it reports it as a 400.
    try:
        return decode(segment)
    except ValueError:
        return segment


def _methods(node: _Node[T], segments: list[str], verb: str | None) -> set[str]:
    found: set[str] = set()
    _collect(node, segments, 0, verb, found)
    return found


def _collect(
    node: _Node[T], segments: list[str], index: int, verb: str | None, found: set[str]
) -> None:
    if index == len(segments):
        found.update(node.ends.get(verb, ()))
        if node.rest is not None:
            found.update(node.rest.ends.get(verb, ()))
        return
    segment = segments[index]
    child = node.literals.get(_literal_key(segment) if "%" in segment else segment)
    if child is not None:
        _collect(child, segments, index + 1, verb, found)
    if node.any is not None and segment:
        _collect(node.any, segments, index + 1, verb, found)
    if node.rest is not None:
        found.update(node.rest.ends.get(verb, ()))
