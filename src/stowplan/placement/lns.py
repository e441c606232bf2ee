"""Large-neighbourhood search over a best-fit plan (placeholder until the CP-SAT LNS lands).

Callers: planner (when ``time_limit_s > 0``). Must never return a plan worse than its input.
"""

from __future__ import annotations

from collections.abc import Callable

from stowplan.placement.models import Problem
from stowplan.placement.packing import PackState, Replica


def improve(
    state: PackState,
    left: list[Replica],
    problem: Problem,
    *,
    deadline: float,
    seed: int,
    clock: Callable[[], float],
) -> tuple[PackState, list[Replica]]:
    """Return ``(state, left)`` improved within the deadline; never worse than the input."""
    return state, left
