"""Stopping background tasks: a stop that holds even when the task swallowed its cancellation.

A background loop that keeps going on errors (`except Exception`, retry on the next round) can
only be stopped by cancelling it. When a library turns that cancellation into an error of its own
(a driver whose clean-up after the cancel fails, say), the loop takes it for one more failure and
goes round again, and whoever awaits the task waits forever: a server's shutdown once hung in CI
so, with its trigger scheduler "cancelling" and asleep in its next round. `stop` therefore asks
again, every `RESEND_SECONDS`, until the task has ended; a loop never sleeps through two asks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

RESEND_SECONDS = 1.0


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancels `task` and waits until it has ended, cancelling it again while it goes on.
    An exception the task ended with (other than its cancellation) is raised here."""
    if task is None:
        return
    asks = 0
    while not task.done():
        task.cancel()
        asks += 1
        if asks == 2:
            log.warning("task %s went on after it was cancelled; cancelling it again", task)
        await asyncio.wait([task], timeout=RESEND_SECONDS)
    if not task.cancelled():
        task.result()
