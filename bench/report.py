"""The printed report: one row per side, each comparison's ratio against its goal, the command
scenarios (no comparator), then ListTasks' page time by depth against its goal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.commands import CommandScenario, TransitionSide
from bench.load import LoadResult, median_ms, median_rps
from bench.scenarios import Comparison, Side
from bench.tasks import PAGE_SIZE, DepthSummary, bands

# ListTasks: the median page time of the deepest pages at most this multiple of the first.
DEPTH_GOAL = 1.5

Results = Mapping[Side, Sequence[LoadResult]]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _side_row(title: str, side: Side | TransitionSide, results: Sequence[LoadResult]) -> list[str]:
    rounds = " ".join(f"{result.requests_per_second:,.0f}" for result in results)
    return [
        title,
        side.label,
        f"{side.load.connections}x{side.load.streams}",
        f"{median_rps(results):,.0f}",
        rounds,
        _ms(median_ms([result.p50_ms for result in results])),
        _ms(median_ms([result.p99_ms for result in results])),
        str(sum(result.failed for result in results)),
    ]


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = (
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    return [line(header), line(["-" * width for width in widths]), *map(line, rows)]


def verdict(ratio: float, goal: float) -> str:
    return "PASS" if ratio >= goal else "BELOW"


def render(
    context: Sequence[tuple[str, str]],
    comparisons: Sequence[Comparison],
    extras: Sequence[tuple[str, Side]],
    results: Results,
    commands: Sequence[tuple[CommandScenario, str]],
    command_results: Mapping[CommandScenario, Sequence[LoadResult]],
    walked: Mapping[str, DepthSummary],
    walks: int,
) -> str:
    lines = [f"{name:<9} {value}" for name, value in context]
    rows: list[list[str]] = []
    for comparison in comparisons:
        rows.append(
            _side_row(comparison.title, comparison.ours, results[comparison.ours]),
        )
        rows.append(_side_row("", comparison.theirs, results[comparison.theirs]))
    for title, side in extras:
        rows.append(_side_row(title, side, results[side]))
    lines += ["", "Per side (req/s, p50 and p99 are medians over the rounds):", ""]
    lines += _table(
        ["benchmark", "server", "connxstreams", "req/s", "per round", "p50 ms", "p99 ms", "errors"],
        rows,
        right={3, 4, 5, 6, 7},
    )
    ratio_rows = []
    for comparison in comparisons:
        ours, theirs = median_rps(results[comparison.ours]), median_rps(results[comparison.theirs])
        ratio = ours / theirs if theirs else 0.0
        each_round = " ".join(
            f"{mine.requests_per_second / other.requests_per_second:.2f}"
            for mine, other in zip(
                results[comparison.ours], results[comparison.theirs], strict=True
            )
            if other.requests_per_second
        )
        ratio_rows.append(
            [
                comparison.title,
                f"{ours:,.0f}",
                f"{theirs:,.0f}",
                f"{ratio:.3f}x",
                each_round,
                f">= {comparison.goal:.2f}x",
                verdict(ratio, comparison.goal),
            ]
        )
    lines += ["", "Ratios (median ours / median comparator):", ""]
    lines += _table(
        ["comparison", "ours req/s", "theirs req/s", "ratio", "per round", "goal", "result"],
        ratio_rows,
        right={1, 2, 3, 4},
    )
    lines += _commands(commands, command_results)
    lines += _depth(walked, walks)
    return "\n".join(lines)


def _commands(
    commands: Sequence[tuple[CommandScenario, str]],
    results: Mapping[CommandScenario, Sequence[LoadResult]],
) -> list[str]:
    rows = []
    for scenario, generator in commands:
        runs = results[scenario]
        row = _side_row(scenario.title, scenario.side, runs)
        rows.append([*row, generator])
    lines = [
        "",
        "Commands through roz's port, no comparator (req/s, p50 and p99 are medians over the "
        "rounds). A create is a move",
        "within both safety policies of its host's environment, without idempotency key; a "
        "transition takes a fresh",
        "command PENDING → RUNNING or RUNNING → COMPLETED, half each. Every run is checked "
        "against the database:",
        "",
    ]
    return lines + _table(
        [
            "benchmark",
            "server",
            "connxstreams",
            "req/s",
            "per round",
            "p50 ms",
            "p99 ms",
            "errors",
            "load",
        ],
        rows,
        right={3, 4, 5, 6, 7},
    )


def depth_verdict(ratio: float, goal: float = DEPTH_GOAL) -> str:
    return "PASS" if ratio <= goal else "BELOW"


def _depth(walked: Mapping[str, DepthSummary], walks: int) -> list[str]:
    if not walked:
        return []
    summaries = list(walked.values())
    pages = summaries[0].pages
    first, middle, last = bands(pages)
    tasks = summaries[0].tasks
    rows = [
        [
            protocol,
            *(f"{ms:.1f}" for ms in summary.band_ms),
            f"{summary.slowest_ms:.1f}",
            f"{summary.ratio:.2f}x",
            f"<= {DEPTH_GOAL:.2f}x",
            depth_verdict(summary.ratio),
            f"{summary.seconds:.1f}",
            f"{tasks / summary.seconds:,.0f}",
        ]
        for protocol, summary in walked.items()
    ]
    samples = summaries[0].samples
    lines = [
        "",
        f"ListTasks, {tasks:,} tasks walked first page to last, {pages:,} pages of {PAGE_SIZE}, "
        f"{walks} walk(s) per protocol (median page time in ms",
        f"of each band's {samples} page times, walk and interleaved re-reads; every walk "
        "checked: each task once, newest first;",
        "slowest is the slowest page of the walks; walk s is a walk's wall time, the client's "
        "decoding included):",
        "",
    ]
    return lines + _table(
        [
            "protocol",
            first.label,
            middle.label,
            last.label,
            "slowest",
            "last/first",
            "goal",
            "result",
            "walk s",
            "tasks/s",
        ],
        rows,
        right={1, 2, 3, 4, 5, 8, 9},
    )
