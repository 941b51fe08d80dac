"""ListTasks page by page: a walk from the first page of 100 to the last, each page timed.

Keyset pagination should make every page cost the same however deep it is: the token names the
last row of the previous page and the next page is an index range scan from there, never an
OFFSET that reads and drops every row before it. So the walk times each page (the request sent
to the answer read whole, on one kept-alive connection, one page at a time as a client follows
next_page_token) and compares the median of the deepest pages with the median of the first.

A walk takes a while, and a machine drifts meanwhile (another process, the database's own
background work), which would land on one depth band and not the others. So after each walk
the pages of the three bands are read again by their tokens, DEPTH_PASSES times, interleaved
(first, middle, last, first, …): a page asked for by its token is the same request a client
following the walk makes. Each band's figure is the median of all its page times, walk and
re-reads together.

Each walk is also checked: it must return every seeded task exactly once, newest first in the
(create_time, id) order, each page full but the last, and end with an empty token; a re-read
page must start with the task it started with in the walk. A failed call, a duplicate, a skip
or a wrong order is an error, never a figure.
"""

from __future__ import annotations

import http.client
import json
import math
import statistics
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc
from roz.v1 import tasks_pb2

from bench.servers import HOST, Endpoints

LIST_TASKS = "/roz.v1.TaskService/ListTasks"
PAGE_SIZE = 100
DEPTH_PAGES = 10  # pages per depth band: first, middle, last
DEPTH_PASSES = 5  # interleaved re-reads of every band page after each walk
CALL_TIMEOUT_SECONDS = 60.0

# A task's place in the list: (create_time as comparable numbers, id).
Position = tuple[tuple[int, int], str]
# One page as a walker reads it: ms, the tasks' positions, the next page's token.
PageStream = Iterator[tuple[float, list[Position], str]]


class WalkError(RuntimeError):
    """A walk returned something other than every task once, in order."""


@dataclass(frozen=True)
class Walk:
    page_ms: tuple[float, ...]  # per page, first to last
    tokens: tuple[str, ...]  # the token each page was asked for with ("" for the first)
    first_ids: tuple[str, ...]  # the first task of each page
    tasks: int
    seconds: float  # wall time of the walk, the client's decoding and checks included


class Walker(Protocol):
    label: str  # the protocol, as the report names it

    def walk(self, expected: int) -> Walk: ...

    def warm(self, seconds: float) -> None: ...

    def reread(self, tokens: Sequence[str]) -> list[tuple[float, str]]:
        """Each token's page once, in this order: (ms, its first task's id)."""
        ...


def _warm(pages: PageStream, seconds: float) -> None:
    """Follows the pages for `seconds` (from the first, as a walk does), timing nothing."""
    until = time.perf_counter() + seconds
    for _, _, token in pages:
        if not token or time.perf_counter() >= until:
            return


def _check(pages: PageStream, expected: int) -> Walk:
    """Drives a walk and checks it; `pages` yields (ms, positions, next token) per page."""
    started = time.perf_counter()
    page_ms: list[float] = []
    tokens = [""]
    first_ids: list[str] = []
    seen: set[str] = set()
    last: Position | None = None
    pages_expected = max(1, math.ceil(expected / PAGE_SIZE))
    for ms, positions, token in pages:
        page_ms.append(ms)
        number = len(page_ms)
        if token and len(positions) != PAGE_SIZE:
            raise WalkError(f"page {number} has {len(positions)} tasks but a next page")
        first_ids.append(positions[0][1] if positions else "")
        for position in positions:
            if last is not None and not position < last:
                raise WalkError(f"page {number}: task {position[1]} is out of order")
            if position[1] in seen:
                raise WalkError(f"page {number}: task {position[1]} was listed before")
            seen.add(position[1])
            last = position
        if not token:
            break
        if number > pages_expected:
            raise WalkError(f"more than {pages_expected} pages for {expected} tasks")
        tokens.append(token)
    if len(seen) != expected:
        raise WalkError(f"the walk listed {len(seen)} tasks, not {expected}")
    return Walk(
        tuple(page_ms),
        tuple(tokens),
        tuple(first_ids),
        len(seen),
        time.perf_counter() - started,
    )


def _rfc3339_key(text: str) -> tuple[int, int]:
    """Seconds and microseconds of a proto3 JSON timestamp, comparable as a tuple."""
    moment = datetime.fromisoformat(text)
    return int(moment.timestamp()), moment.microsecond


class RestWalker:
    label = "REST (HTTP/1.1)"

    def __init__(self, endpoints: Endpoints) -> None:
        self._port = endpoints.roz_port
        self._headers = {"authorization": f"Bearer {endpoints.writer_key}"}

    def walk(self, expected: int) -> Walk:
        connection = http.client.HTTPConnection(HOST, self._port, timeout=CALL_TIMEOUT_SECONDS)
        try:
            self._get(connection, "")  # connected and answered once before anything is timed
            return _check(self._pages(connection), expected)
        finally:
            connection.close()

    def warm(self, seconds: float) -> None:
        connection = http.client.HTTPConnection(HOST, self._port, timeout=CALL_TIMEOUT_SECONDS)
        try:
            _warm(self._pages(connection), seconds)
        finally:
            connection.close()

    def reread(self, tokens: Sequence[str]) -> list[tuple[float, str]]:
        connection = http.client.HTTPConnection(HOST, self._port, timeout=CALL_TIMEOUT_SECONDS)
        try:
            self._get(connection, "")
            times = []
            for token in tokens:
                ms, body = self._get(connection, token)
                listed = json.loads(body)["tasks"]
                times.append((ms, listed[0]["id"] if listed else ""))
            return times
        finally:
            connection.close()

    def _get(self, connection: http.client.HTTPConnection, token: str) -> tuple[float, bytes]:
        query = {"page_size": PAGE_SIZE} | ({"page_token": token} if token else {})
        path = "/api/v1/tasks?" + urllib.parse.urlencode(query)
        started = time.perf_counter()
        connection.request("GET", path, headers=self._headers)
        response = connection.getresponse()
        body = response.read()
        ms = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise WalkError(f"REST page after {token!r}: HTTP {response.status} {body[:200]!r}")
        return ms, body

    def _pages(self, connection: http.client.HTTPConnection) -> PageStream:
        token = ""
        while True:
            ms, body = self._get(connection, token)
            document = json.loads(body)
            token = document["next_page_token"]
            positions = [
                (_rfc3339_key(task["create_time"]), task["id"]) for task in document["tasks"]
            ]
            yield ms, positions, token


class GrpcWalker:
    label = "native gRPC (h2c)"

    def __init__(self, endpoints: Endpoints) -> None:
        self._target = f"{HOST}:{endpoints.roz_port}"
        self._metadata = (("authorization", f"Bearer {endpoints.writer_key}"),)

    def walk(self, expected: int) -> Walk:
        with grpc.insecure_channel(self._target) as channel:
            call: Callable[..., bytes] = channel.unary_unary(LIST_TASKS)  # bytes in and out
            self._get(call, "")  # connected and answered once before anything is timed
            return _check(self._pages(call), expected)

    def warm(self, seconds: float) -> None:
        with grpc.insecure_channel(self._target) as channel:
            _warm(self._pages(channel.unary_unary(LIST_TASKS)), seconds)

    def reread(self, tokens: Sequence[str]) -> list[tuple[float, str]]:
        with grpc.insecure_channel(self._target) as channel:
            call: Callable[..., bytes] = channel.unary_unary(LIST_TASKS)
            self._get(call, "")
            times = []
            for token in tokens:
                ms, answer = self._get(call, token)
                listed = tasks_pb2.ListTasksResponse.FromString(answer).tasks
                times.append((ms, listed[0].id if listed else ""))
            return times

    def _get(self, call: Callable[..., bytes], token: str) -> tuple[float, bytes]:
        request = tasks_pb2.ListTasksRequest(page_size=PAGE_SIZE, page_token=token)
        payload = request.SerializeToString()
        started = time.perf_counter()
        try:
            answer = call(payload, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            raise WalkError(f"gRPC page after {token!r}: {exc}") from exc
        return (time.perf_counter() - started) * 1000, answer

    def _pages(self, call: Callable[..., bytes]) -> PageStream:
        token = ""
        while True:
            ms, answer = self._get(call, token)
            response = tasks_pb2.ListTasksResponse.FromString(answer)
            token = response.next_page_token
            positions = [
                ((task.create_time.seconds, task.create_time.nanos // 1000), task.id)
                for task in response.tasks
            ]
            yield ms, positions, token


def walkers(endpoints: Endpoints) -> list[Walker]:
    return [RestWalker(endpoints), GrpcWalker(endpoints)]


@dataclass(frozen=True)
class Band:
    """Pages first..last (1-based, inclusive) of a walk."""

    first: int
    last: int

    @property
    def label(self) -> str:
        return f"pages {self.first}-{self.last}"

    @property
    def pages(self) -> range:
        return range(self.first, self.last + 1)


def bands(pages: int) -> tuple[Band, Band, Band]:
    """The first, middle and last DEPTH_PAGES pages (they overlap on short walks)."""
    size = min(DEPTH_PAGES, pages)
    middle = max(1, (pages - size) // 2 + 1)
    return Band(1, size), Band(middle, middle + size - 1), Band(pages - size + 1, pages)


@dataclass(frozen=True)
class DepthSample:
    """One walk and the interleaved re-reads of its bands' pages: ms per band."""

    walk: Walk
    band_ms: tuple[list[float], list[float], list[float]]


def probe(walker: Walker, walk: Walk, passes: int = DEPTH_PASSES) -> DepthSample:
    """The walk's band pages, then `passes` interleaved re-reads of each, all timed."""
    chosen = bands(len(walk.page_ms))
    samples: tuple[list[float], list[float], list[float]] = ([], [], [])
    for index, band in enumerate(chosen):
        samples[index].extend(walk.page_ms[page - 1] for page in band.pages)
    order: list[tuple[int, int]] = []  # (band, page)
    for number in range(passes):
        rotation = [(number + k) % 3 for k in range(3)]  # who goes first changes every pass
        for offset in range(DEPTH_PAGES):
            order += [
                (index, chosen[index].first + offset)
                for index in rotation
                if chosen[index].first + offset <= chosen[index].last
            ]
    answers = walker.reread([walk.tokens[page - 1] for _, page in order])
    for (index, page), (ms, first_id) in zip(order, answers, strict=True):
        if first_id != walk.first_ids[page - 1]:
            raise WalkError(f"{walker.label}: page {page} read again starts with {first_id!r}")
        samples[index].append(ms)
    return DepthSample(walk, samples)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass(frozen=True)
class DepthSummary:
    pages: int
    tasks: int
    band_ms: tuple[float, float, float]  # median page time of each band, walks and re-reads
    samples: int  # page times behind each band's median
    seconds: float  # median wall time of a walk
    slowest_ms: float  # of any page of any walk

    @property
    def ratio(self) -> float:
        first, _, last = self.band_ms
        return last / first if first else math.inf


def summarize(samples: Sequence[DepthSample]) -> DepthSummary:
    walks = [sample.walk for sample in samples]
    pages = len(walks[0].page_ms)
    if any(len(walk.page_ms) != pages for walk in walks):
        raise WalkError("walks of the same tasks took different numbers of pages")
    pooled = [[ms for sample in samples for ms in sample.band_ms[index]] for index in range(3)]
    return DepthSummary(
        pages=pages,
        tasks=walks[0].tasks,
        band_ms=(median(pooled[0]), median(pooled[1]), median(pooled[2])),
        samples=len(pooled[0]),
        seconds=statistics.median(walk.seconds for walk in walks),
        slowest_ms=max(max(walk.page_ms) for walk in walks),
    )
