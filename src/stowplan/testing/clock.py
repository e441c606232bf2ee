"""A fake clock for unit tests: time moves only when a test (or a sleeper) moves it.

Implements :class:`stowplan.operator.clock.Clock`. ``await clock.sleep(s)`` advances the clock by
``s`` at once and yields to the event loop, so code that sleeps in a loop runs as fast as the
test can drive it, in a deterministic order. ``TickingClock`` is a ``time.monotonic`` stand-in
for code that only measures its own duration: each reading is one second after the last.
Imported by tests only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = EPOCH) -> None:
        self._start = start
        self.elapsed_s = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.elapsed_s)

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed_s

    def advance(self, seconds: float) -> None:
        self.elapsed_s += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


class TickingClock:
    """``clock()`` returns ``start``, ``start + 1``, ...: a deterministic ``time.monotonic`` for
    code that times itself (``tracesim.Simulator.run``) or orders by time (the residency pool's
    least recently used)."""

    def __init__(self, start: float = 0.0) -> None:
        self.start = start
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return self.last

    @property
    def last(self) -> float:
        """The latest reading (``start - 1`` before the first)."""
        return self.start + float(self.readings - 1)
