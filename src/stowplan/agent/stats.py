"""Per-model rolling statistics: completions and batch sizes over a time window, from which the
reports take qps, p99 latency and mean batch size.

Written by the data path (one completion per answered request) and by each lane's batch
observer (one entry per batch); read by :mod:`stowplan.agent.reports`. Thread-safe; time is
injected. Must not know models, devices or HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np


class ModelStats:
    """Rolling window of completions for qps, p99 and mean batch size (thread-safe)."""

    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._lat: deque[tuple[float, float]] = deque()  # (time, latency ms)
        self._batches: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def _trim(self, now: float) -> None:
        while self._lat and self._lat[0][0] < now - self.window_s:
            self._lat.popleft()
        while self._batches and self._batches[0][0] < now - self.window_s:
            self._batches.popleft()

    def request(self, latency_ms: float) -> None:
        now = self.clock()
        with self._lock:
            self._lat.append((now, latency_ms))
            self._trim(now)

    def batch(self, items: int) -> None:
        now = self.clock()
        with self._lock:
            self._batches.append((now, items))
            self._trim(now)

    def snapshot(self) -> tuple[float, float | None, float | None]:
        """(qps, p99 latency ms, mean batch items) over the window."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            lats = [v for _, v in self._lat]
            sizes = [v for _, v in self._batches]
        qps = len(lats) / self.window_s
        p99 = float(np.percentile(lats, 99)) if lats else None
        mean_batch = sum(sizes) / len(sizes) if sizes else None
        return qps, p99, mean_batch


__all__ = ["ModelStats"]
