"""Synthetic placement instances built from real latency fits (NVIDIA DeepLearningExamples).

Callers: ``stowplan bench placement`` (which reads ``latency_vs_batch_linear_fits.csv`` and
passes the parsed ``LatencyFit`` rows) and tests. Pure and deterministic for a seed.

Each model takes one fitted series ``latency = a + b * batch`` (a, b >= 0, a well-behaved fit)
measured on A100-80GB, an SLO of 3 to 10 times its batch-of-one latency (clipped to
10..500 ms), 1 to 4 replicas and a per-replica load that needs between a few percent and most
of a GPU at the SLO's largest duty cycle; weights memory between 0.2 and 6 GiB.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from stowplan.placement.capacity import DUTY_LEVELS_MS, replica_capacity
from stowplan.placement.instances import make_gpus
from stowplan.placement.models import LatencyProfile, MemoryProfile, ModelDemand, Problem


@dataclass(frozen=True)
class LatencyFit:
    source: str
    gpu_model: str
    base_ms: float
    per_item_ms: float
    batch_max: int


def usable_fits(fits: Sequence[LatencyFit], gpu_model: str = "A100-80GB") -> list[LatencyFit]:
    """Fits on ``gpu_model`` with non-negative coefficients and a sub-100 ms batch of one."""
    return [
        f
        for f in fits
        if f.gpu_model == gpu_model
        and f.base_ms >= 0.05
        and f.per_item_ms > 0
        and f.base_ms + f.per_item_ms < 100
    ]


def synthetic_problem(fits: Sequence[LatencyFit], replicas: int, seed: int) -> Problem:
    """About ``replicas`` replicas of models drawn from ``fits``, on enough 80 GiB GPUs."""
    rng = random.Random(seed)
    models: list[ModelDemand] = []
    total = 0
    while total < replicas:
        f = rng.choice(fits)
        n = min(rng.randint(1, 4), replicas - total)
        one = f.base_ms + f.per_item_ms
        slo = min(500.0, max(10.0, one * rng.uniform(3, 10)))
        base = ModelDemand(
            name=f"m{len(models)}",
            replicas=n,
            slo_ms=round(slo, 2),
            target_qps=0.0,
            latency=LatencyProfile(base_ms=f.base_ms, per_item_ms=f.per_item_ms),
            memory=MemoryProfile(
                weights_mib=round(rng.uniform(200, 6000)), per_item_mib=round(rng.uniform(2, 40))
            ),
            max_batch=max(8, min(256, f.batch_max * 2)),
        )
        # the largest per-replica qps the SLO allows alone, then a fraction of it
        qmax = 0.0
        for d in DUTY_LEVELS_MS:
            if d >= slo:
                break
            # b items per d ms with d + a + b*per_item <= slo and a + b*per_item <= d
            b = int(min(slo - d - f.base_ms, d - f.base_ms) / f.per_item_ms)
            b = min(b, base.max_batch)
            if b >= 1:
                qmax = max(qmax, b * 1000.0 / d)
        if qmax <= 0:
            continue
        per_replica = qmax * rng.choice((0.03, 0.08, 0.15, 0.3, 0.5, 0.7))
        m = base.model_copy(update={"target_qps": round(per_replica * n, 1)})
        if not any(replica_capacity(m, d) for d in DUTY_LEVELS_MS):
            continue
        models.append(m)
        total += n
    gpus = make_gpus(max(8, replicas), memory_mib=81920, per_node=8, gpu_type="A100")
    return Problem(gpus=gpus, models=tuple(models))
