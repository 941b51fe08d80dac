"""The listener's stream scheduler: streams with data take turns; blocked and removed ones do
not come up; it fails as Hypercorn expects of a priority tree."""

from __future__ import annotations

import itertools

import pytest
from priority.priority import DeadlockError, DuplicateStreamError, MissingStreamError

from gateway.serving import RoundRobin


def test_ready_streams_take_turns_in_the_order_they_became_ready() -> None:
    streams = RoundRobin()
    for stream_id in (1, 3, 5):
        streams.insert_stream(stream_id)
    assert list(itertools.islice(streams, 7)) == [1, 3, 5, 1, 3, 5, 1]


def test_blocked_and_removed_streams_are_skipped_until_unblocked() -> None:
    streams = RoundRobin()
    for stream_id in (1, 3, 5):
        streams.insert_stream(stream_id)
    streams.block(3)
    streams.remove_stream(5)
    assert list(itertools.islice(streams, 3)) == [1, 1, 1]
    streams.unblock(3)
    streams.unblock(3)  # twice is once
    assert list(itertools.islice(streams, 4)) == [1, 3, 1, 3]
    streams.block(1)
    streams.block(3)
    with pytest.raises(DeadlockError):
        next(streams)


def test_it_fails_like_the_priority_tree_hypercorn_catches() -> None:
    streams = RoundRobin()
    streams.insert_stream(1, depends_on=None, weight=16, exclusive=False)
    with pytest.raises(DuplicateStreamError):
        streams.insert_stream(1)
    for call in (streams.block, streams.unblock, streams.remove_stream, streams.reprioritize):
        with pytest.raises(MissingStreamError):
            call(7)
    streams.reprioritize(1, depends_on=None, weight=200, exclusive=True)  # accepted, ignored
    assert next(streams) == 1
