"""Metrics of one allocator on one trace, and the definitions behind them.

* ``peak_reserved_bytes`` vs ``peak_live_bytes`` (the lower bound: peak of live requested bytes);
  ``excess_bytes`` = their difference.
* ``fragmentation`` = 1 - peak_live / peak_reserved: the share of the reserved peak that never
  held requested data at the worst moment (GMLake's 1 - utilisation, with requested bytes).
* ``device_malloc_calls``/``device_free_calls`` and ``simulated_overhead_us`` (device calls from
  the cost model, plus the per-request bookkeeping cost of a caching allocator).
* ``wall_s``/``events_per_second``: the simulator's own speed.
* ``step_repeat_rate`` (locality): over consecutive execution steps that issue the same sequence
  of request sizes (the steady state of an inference server), the share of allocations placed at
  the same address as in the previous step. Justification: a repeated step that touches the same
  addresses keeps its working set warm in L2/TLB, and CUDA Graphs can only replay a captured
  step if every buffer is at the same address; it is None when the trace has no such step pair.

Callers: :mod:`stowplan.memlab.simulate`, the report and the CLI. No simulation here.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from pydantic import BaseModel, ConfigDict

from stowplan.memlab.alloc_trace import STEP_OP


class SimResult(BaseModel):
    """One allocator replayed on one trace."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allocator: str
    events: int
    peak_live_bytes: int
    peak_reserved_bytes: int
    device_malloc_calls: int
    device_free_calls: int
    simulated_overhead_us: float
    fragmentation: float
    step_repeat_rate: float | None
    wall_s: float
    setup_s: float = 0.0
    events_per_second: float
    timeline: list[tuple[int, int]]  # (event index, reserved bytes) after each device call

    @property
    def excess_bytes(self) -> int:
        return self.peak_reserved_bytes - self.peak_live_bytes

    @property
    def overhead_ratio(self) -> float:
        return self.peak_reserved_bytes / self.peak_live_bytes if self.peak_live_bytes else 1.0

    def summary(self) -> dict[str, object]:
        """The fields of the ``memsim --json`` contract (plus a few extras)."""
        return {
            "allocator": self.allocator,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_malloc_calls": self.device_malloc_calls,
            "device_free_calls": self.device_free_calls,
            "simulated_overhead_us": round(self.simulated_overhead_us, 3),
            "fragmentation": round(self.fragmentation, 6),
            "events_per_second": round(self.events_per_second, 1),
            "excess_bytes": self.excess_bytes,
            "step_repeat_rate": (
                None if self.step_repeat_rate is None else round(self.step_repeat_rate, 6)
            ),
            "wall_s": round(self.wall_s, 6),
            "setup_s": round(self.setup_s, 6),
        }


def fragmentation(peak_live_bytes: int, peak_reserved_bytes: int) -> float:
    if peak_reserved_bytes <= 0:
        return 0.0
    return max(0.0, 1.0 - peak_live_bytes / peak_reserved_bytes)


def step_repeat_rate(ops: list[int], sizes: list[int], addrs: list[int]) -> float | None:
    """Locality: see the module docstring. ``addrs[slot]`` is where slot was placed.

    Steps are compared as multisets (threads interleave records differently from step to step):
    an allocation of step k counts as repeated if step k-1 had an allocation of the same size
    at the same address.
    """
    steps: list[list[int]] = [[]]
    for op in ops:
        if op == STEP_OP:
            steps.append([])
        elif op >= 0:
            steps[-1].append(op)
    same = total = 0
    for prev, cur in pairwise(steps):
        if not cur or sorted(sizes[a] for a in prev) != sorted(sizes[b] for b in cur):
            continue
        before = Counter((sizes[a], addrs[a]) for a in prev)
        total += len(cur)
        for b in cur:
            key = (sizes[b], addrs[b])
            if before[key] > 0:
                before[key] -= 1
                same += 1
    return same / total if total else None
