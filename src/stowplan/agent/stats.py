"""Per-model statistics: completions and batches over a rolling time window, from which the
reports take qps, p99 latency, mean batch size and the device time used; and cumulative totals
since the model was loaded (successes, failures, queue and compute time, per batch size), which
the Triton statistics endpoint serves.

Written by the data path (one completion per answered request) and by each lane's batch
observer (one entry per batch); read by :mod:`stowplan.agent.reports`. Thread-safe; time is
injected. Must not know models, devices or HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Totals:
    """Cumulative counts and nanoseconds since the model was loaded (a copy when returned)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0  # requests whose batch ran (each counted with its batch's time)
    compute_ns: int = 0
    inference_count: int = 0  # batch items executed
    execution_count: int = 0  # batches executed
    last_inference_ms: int = 0  # wall clock, ms since the epoch; 0: never
    #: batch size -> [batches, compute ns]
    by_batch: dict[int, list[int]] = field(default_factory=dict)


class ModelStats:
    """Rolling window of completions for qps, p99 and mean batch size, plus cumulative
    :class:`Totals` (thread-safe)."""

    def __init__(
        self,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._lat: deque[tuple[float, float]] = deque()  # (time, latency ms)
        self._batches: deque[tuple[float, int, float]] = deque()  # (time, items, busy s)
        self._lock = threading.Lock()
        self._totals = Totals()

    def _trim(self, now: float) -> None:
        while self._lat and self._lat[0][0] < now - self.window_s:
            self._lat.popleft()
        while self._batches and self._batches[0][0] < now - self.window_s:
            self._batches.popleft()

    def request(self, latency_ms: float) -> None:
        now = self.clock()
        wall_ms = int(self.wall_clock() * 1000)
        with self._lock:
            self._lat.append((now, latency_ms))
            self._trim(now)
            t = self._totals
            t.success_count += 1
            t.success_ns += int(latency_ms * 1e6)
            t.last_inference_ms = wall_ms

    def failure(self, latency_ms: float) -> None:
        """A request that reached the model and was answered with an error."""
        wall_ms = int(self.wall_clock() * 1000)
        with self._lock:
            t = self._totals
            t.fail_count += 1
            t.fail_ns += int(latency_ms * 1e6)
            t.last_inference_ms = wall_ms

    def batch(self, items: int, compute_s: float = 0.0, queue_s: Sequence[float] = ()) -> None:
        now = self.clock()
        with self._lock:
            self._batches.append((now, items, compute_s))
            self._trim(now)
            t = self._totals
            t.inference_count += items
            t.execution_count += 1
            t.queue_count += len(queue_s)
            t.queue_ns += int(sum(queue_s) * 1e9)
            t.compute_count += len(queue_s)
            t.compute_ns += int(compute_s * 1e9) * len(queue_s)
            row = t.by_batch.setdefault(items, [0, 0])
            row[0] += 1
            row[1] += int(compute_s * 1e9)

    def totals(self) -> Totals:
        with self._lock:
            t = self._totals
            return Totals(**{**t.__dict__, "by_batch": {k: list(v) for k, v in t.by_batch.items()}})

    def snapshot(self) -> tuple[float, float | None, float | None]:
        """(qps, p99 latency ms, mean batch items) over the window."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            lats = [v for _, v in self._lat]
            sizes = [v for _, v, _ in self._batches]
        qps = len(lats) / self.window_s
        p99 = float(np.percentile(lats, 99)) if lats else None
        mean_batch = sum(sizes) / len(sizes) if sizes else None
        return qps, p99, mean_batch

    def busy_fraction(self) -> float:
        """The device time this model's batches took over the window, as a fraction of the
        window (over all its lanes; the same denominator as qps)."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            busy_s = sum(b for _, _, b in self._batches)
        return busy_s / self.window_s


__all__ = ["ModelStats", "Totals"]
