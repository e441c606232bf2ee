"""Placement problems for tests: the builders of GPUs and models with the defaults the tests
share (``make_gpus``, ``make_model``), a hypothesis strategy of small mixed problems and a mixed
fleet (three GPU classes, selectors, priorities) built around an existing problem's models.

Callers: tests/placement (examples, best-fit equivalence, kernel equivalence, property tests).
No I/O. The benchmark problems are ``fgdbench.synth``'s; the instance file format is
``placement.instances``'.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from stowplan.placement import (
    BatchingPolicy,
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    Problem,
)


@st.composite
def small_problems(draw: st.DrawFn, max_gpus: int = 8, max_models: int = 6) -> Problem:
    """Up to ``max_gpus`` GPUs (two per node, two types, two zones, three capacities) and up to
    ``max_models`` models mixing SLO models (every batching policy), GPU fractions, whole GPUs,
    types, selectors and priorities; some replicas are unplaceable by design."""
    n_gpus = draw(st.integers(1, max_gpus))
    gpus = tuple(
        Gpu(
            node=f"n{i // 2}",
            index=i % 2,
            memory_mib=draw(st.sampled_from([8000, 16000, 81920])),
            gpu_type=draw(st.sampled_from(["A100", "T4"])),
            labels={"zone": draw(st.sampled_from(["a", "b"]))},
        )
        for i in range(n_gpus)
    )

    def static_size(policy: BatchingPolicy, max_batch: int) -> int:
        if policy is not BatchingPolicy.STATIC:
            return 0
        return min(max_batch, draw(st.integers(1, 8)))

    models = [
        ModelDemand(
            name=f"m{j}",
            replicas=draw(st.integers(0, 4)),
            slo_ms=draw(st.floats(2, 400)),
            target_qps=draw(st.sampled_from([0.0, 5.0, 50.0, 400.0, 3000.0])),
            latency=LatencyProfile(
                base_ms=draw(st.floats(0, 20)), per_item_ms=draw(st.floats(0, 3))
            ),
            memory=MemoryProfile(
                weights_mib=draw(st.floats(0, 20000)), per_item_mib=draw(st.floats(0, 50))
            ),
            max_batch=(max_batch := draw(st.integers(1, 256))),
            priority=draw(st.integers(0, 2)),
            gpu_type=draw(st.sampled_from(["", "", "A100", "T4"])),
            node_selector=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
            gpu_milli=draw(st.sampled_from([0, 0, 0, 250, 1000])),
            batching=(policy := draw(st.sampled_from(list(BatchingPolicy)))),
            static_batch_size=static_size(policy, max_batch),
        )
        for j in range(draw(st.integers(0, max_models)))
    ]
    return Problem(
        gpus=gpus, models=tuple(models), memory_reserve_mib=draw(st.sampled_from([0, 512]))
    )


def mixed_fleet(base: Problem, n_gpus: int, rng: random.Random) -> Problem:
    """``base``'s models on ``n_gpus`` GPUs of three classes (40 and 80 GiB; types A100-40,
    A100, H100; a zone label on every third), with random priorities, some models restricted
    to H100 or to zone z1, and a 512 MiB reserve."""
    gpus = tuple(
        Gpu(
            node=f"h{i // 8}",
            index=i % 8,
            memory_mib=(40960, 81920, 81920)[i % 3],
            gpu_type=("A100-40", "A100", "H100")[i % 3],
            labels={"zone": f"z{(i // 8) % 2}"} if i % 3 == 2 else {},
        )
        for i in range(n_gpus)
    )
    models = []
    for m in base.models:
        x = rng.random()
        upd: dict[str, object] = {"priority": rng.choice((0, 0, 0, 1, 2))}
        if x < 0.1:
            upd["gpu_type"] = "H100"
        elif x < 0.15:
            upd["node_selector"] = {"zone": "z1"}
        models.append(m.model_copy(update=upd))
    return Problem(gpus=gpus, models=tuple(models), memory_reserve_mib=512)


def make_gpus(
    n: int,
    *,
    memory_mib: int = 16000,
    per_node: int = 4,
    gpu_type: str = "A100",
    labels: Mapping[str, str] | None = None,
    prefix: str = "n",
) -> tuple[Gpu, ...]:
    """``n`` identical GPUs, ``per_node`` per node named ``{prefix}{k}``."""
    return tuple(
        Gpu(
            node=f"{prefix}{i // per_node}",
            index=i % per_node,
            memory_mib=memory_mib,
            gpu_type=gpu_type,
            labels=dict(labels or {}),
        )
        for i in range(n)
    )


def make_model(
    name: str,
    *,
    replicas: int = 1,
    slo_ms: float = 50,
    target_qps: float = 100,
    base_ms: float = 4.0,
    per_item_ms: float = 0.5,
    weights_mib: float = 500,
    per_item_mib: float = 20,
    max_batch: int = 128,
    **extra: Any,
) -> ModelDemand:
    """A ModelDemand with the ResNet-50-like defaults used across the tests."""
    return ModelDemand(
        name=name,
        replicas=replicas,
        slo_ms=slo_ms,
        target_qps=target_qps,
        latency=LatencyProfile(base_ms=base_ms, per_item_ms=per_item_ms),
        memory=MemoryProfile(weights_mib=weights_mib, per_item_mib=per_item_mib),
        max_batch=max_batch,
        **extra,
    )


def _ms(top: float) -> st.SearchStrategy[float]:
    # 0 or at least 0.1 us: capacity.replica_capacity overflows on a tiny (subnormal) batch time
    return st.one_of(st.just(0.0), st.floats(1e-4, top))


@st.composite
def demands(draw: st.DrawFn, name: str = "m") -> ModelDemand:
    """One model of 1 to 4 replicas: every batching policy, GPU fractions, GPU types and node
    selectors, SLOs from tight to loose, loads from idle to more than a GPU serves, batch-fill
    waits of 0 or 5 ms."""
    max_batch = draw(st.integers(1, 256))
    policy = draw(st.sampled_from(list(BatchingPolicy)))
    return ModelDemand(
        name=name,
        replicas=draw(st.integers(1, 4)),
        slo_ms=draw(st.floats(1, 1000)),
        target_qps=draw(st.one_of(st.sampled_from([0.0, 50.0, 400.0]), st.floats(0, 20000))),
        latency=LatencyProfile(base_ms=draw(_ms(50)), per_item_ms=draw(_ms(5))),
        memory=MemoryProfile(
            weights_mib=draw(st.floats(0, 90000)), per_item_mib=draw(st.floats(0, 200))
        ),
        max_batch=max_batch,
        gpu_type=draw(st.sampled_from(["", "", "A100", "T4"])),
        node_selector=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
        gpu_milli=draw(st.sampled_from([0, 0, 0, 250, 1000])),
        batching=policy,
        static_batch_size=draw(st.integers(1, max_batch)) if policy is BatchingPolicy.STATIC else 0,
        max_queue_delay_ms=draw(st.sampled_from([0.0, 0.0, 5.0])) if policy != "none" else 0.0,
    )
