"""Reconnect delays: full jitter under an exponential ceiling, reset by a welcome; drains."""

from __future__ import annotations

import random

import pytest

from roz_robot.backoff import DRAIN_SPREAD_SECONDS, Backoff


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (reproducible draws; nothing secret)


def test_each_delay_is_drawn_between_zero_and_a_doubling_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=seeded(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for ceiling in ceilings:
        assert backoff.ceiling() == ceiling
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
    assert backoff.failures == len(ceilings)


def test_the_delays_are_spread_not_fixed() -> None:
    """Full jitter: a fleet failing at once does not come back at once."""
    draws = []
    for seed in range(200):
        backoff = Backoff(base=0.5, cap=30.0, rng=seeded(seed))
        for _ in range(5):
            backoff.next_delay()
        draws.append(backoff.next_delay())  # ceiling 16 s
    assert max(draws) <= 16.0
    assert min(draws) < 2.0
    assert max(draws) > 14.0


def test_a_reset_starts_over_from_the_base() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=seeded(1))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.ceiling() == 0.5
    assert backoff.next_delay() <= 0.5


def test_a_long_outage_stays_at_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=seeded(2), failures=5000)
    assert backoff.ceiling() == 30.0
    assert backoff.next_delay() <= 30.0


def test_a_drain_waits_at_least_what_it_asks_and_spreads_the_rest() -> None:
    rng = seeded(3)
    backoff = Backoff(rng=rng)
    waits = [backoff.after_drain(5.0) for _ in range(200)]
    assert all(5.0 <= wait <= 10.0 for wait in waits)
    assert max(waits) - min(waits) > 3.0
    short = [backoff.after_drain(0.0) for _ in range(200)]
    assert all(0.0 <= wait <= DRAIN_SPREAD_SECONDS for wait in short)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 30.0), (-1.0, 30.0), (10.0, 5.0)])
def test_impossible_terms_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)
