"""Time as the operator sees it, injected: wall time for Lease and heartbeat arithmetic,
monotonic time for durations, and an awaitable sleep.

Callers: :mod:`.fleet` and :mod:`.leadership` take a :class:`Clock`; :data:`SYSTEM` is the real
one (``handlers`` passes it), ``stowplan.testing.clock.FakeClock`` the one unit tests use so
that nothing in them waits on real time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM: Clock = SystemClock()
