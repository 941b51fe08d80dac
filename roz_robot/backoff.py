"""How long a robot waits before reconnecting: exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the exponential ceiling) rather than a fixed delay
plus a little noise, so that a fleet cut off at once by the same outage does not come back at
once either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BASE_SECONDS = 0.5
CAP_SECONDS = 30.0
# A drain names the least wait; each robot adds up to this much (or the wait itself, if longer)
# so that the robots of a draining server spread over the others instead of arriving together.
DRAIN_SPREAD_SECONDS = 1.0


@dataclass
class Backoff:
    """Delays for consecutive failed attempts; `reset()` after one that worked (a welcome)."""

    base: float = BASE_SECONDS
    cap: float = CAP_SECONDS
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, not base={self.base} cap={self.cap}")

    def ceiling(self) -> float:
        """The most the next delay can be: base·2^failures, never above the cap."""
        # min() on the exponent first: 2**failures overflows a float after ~1000 failures.
        return min(self.cap, self.base * float(2 ** min(self.failures, 64)))

    def next_delay(self) -> float:
        """The delay before the next attempt, drawn in [0, ceiling()]; counts one failure."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0

    def after_drain(self, reconnect_after: float) -> float:
        """The wait a drain asks for, spread by a draw of the robot's own."""
        least = max(0.0, reconnect_after)
        return least + self.rng.uniform(0.0, max(least, DRAIN_SPREAD_SECONDS))
