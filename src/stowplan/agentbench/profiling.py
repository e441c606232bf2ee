"""Measure a model's ``spec.profile`` on this device (``stowplan profile``).

Runs the model at a sweep of batch sizes through :class:`stowplan.agent.runtime.OnnxModel`,
takes the median latency per batch size, and fits latency(b) = base + perItem * b by least
squares (the same linear model placement uses). Weights memory is the model file's size;
per-item memory is the process's resident-set growth between the smallest and largest batch
divided by the batch difference (a CPU stand-in for device memory; on GPU nodes read it from
NVML instead). Callers: :mod:`stowplan.commands.profile_model`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stowplan.agent.runtime import OnnxModel
from stowplan.agent.tensors import V2_TO_NUMPY


@dataclass(frozen=True)
class Profile:
    batch_sizes: tuple[int, ...]
    median_ms: tuple[float, ...]
    base_ms: float
    per_item_ms: float
    r2: float
    weights_mib: float
    per_item_mib: float
    providers: tuple[str, ...]

    def yaml(self, max_batch: int) -> str:
        return (
            "profile:\n"
            f"  latencyMs: {{base: {self.base_ms:.4g}, perItem: {self.per_item_ms:.4g}}}\n"
            f"  memoryMiB: {{weights: {self.weights_mib:.4g}, perItem: {self.per_item_mib:.4g}}}\n"
            f"  maxBatch: {max_batch}\n"
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(
    path: Path,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    repeats: int = 20,
    device: int = -1,
    threads: int = 0,
    progress: Callable[[], None] | None = None,
) -> Profile:
    model = OnnxModel(path, device, threads)
    rng = np.random.default_rng(0)
    medians = []
    rss = {}
    for b in batch_sizes:
        feeds = {}
        for t in model.inputs:
            shape = [b if i == 0 else (d if d > 0 else 1) for i, d in enumerate(t.shape)]
            feeds[t.name] = rng.standard_normal(shape).astype(V2_TO_NUMPY[t.datatype])
        model.run(feeds)  # warm-up (allocates this batch size's buffers)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.run(feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
        medians.append(float(np.median(times)))
        rss[b] = _rss_bytes()
        if progress:
            progress()
    xs = np.asarray(batch_sizes, float)
    ys = np.asarray(medians)
    slope, intercept = np.polyfit(xs, ys, 1) if len(xs) > 1 else (0.0, ys[0])
    pred = intercept + slope * xs
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float(((ys - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    lo, hi = min(batch_sizes), max(batch_sizes)
    per_item = max(0, rss[hi] - rss[lo]) / max(1, hi - lo) / 2**20
    return Profile(
        tuple(batch_sizes),
        tuple(medians),
        max(0.0, float(intercept)),
        max(0.0, float(slope)),
        r2,
        model.size_bytes / 2**20,
        per_item,
        tuple(model.providers),
    )
