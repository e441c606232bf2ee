"""Synthetic placement instances built from real latency fits (NVIDIA DeepLearningExamples).

Callers: ``stowplan bench placement`` (which reads ``latency_vs_batch_linear_fits.csv`` and
passes the parsed ``LatencyFit`` rows) and tests. Pure and deterministic for a seed.

``synthetic_problem``: each model takes one fitted series ``latency = a + b * batch`` (a, b >= 0,
a well-behaved fit) measured on A100-80GB, an SLO of 3 to 10 times its batch-of-one latency
(clipped to 10..500 ms), 1 to 4 replicas and a per-replica load that needs between a few
percent and most of a GPU at the SLO's largest duty cycle; weights memory between 0.2 and 6 GiB.

``alibaba_mix_problem``: a mix of both kinds of demand on real nodes. Pods with GPUs of an
Alibaba 2023 trace pod list (whole-GPU gangs, whole GPUs, GPU fractions, with their CPU and host
memory; CPU-only pods are out of scope) plus SLO models drawn as above from T4 / V100 latency
fits (typed for that GPU, with CPU and host memory), on about 20 nodes of the trace's GPU node
list. Callers: the test that rebuilds ``placement/instances/alibaba-mix.json``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from stowplan.fgdbench.tracecluster import NodeRow, PodRow
from stowplan.placement.capacity import DUTY_LEVELS_MS, replica_capacity
from stowplan.placement.models import (
    Gpu,
    LatencyProfile,
    MemoryProfile,
    ModelDemand,
    NodeResources,
    Problem,
)


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
        m = _slo_model(rng, f, f"m{len(models)}", n)
        if m is None:
            continue
        models.append(m)
        total += n
    gpus = tuple(
        Gpu(node=f"n{i // 8}", index=i % 8, memory_mib=81920, gpu_type="A100")
        for i in range(max(8, replicas))
    )
    return Problem(gpus=gpus, models=tuple(models))


def _slo_model(rng: random.Random, f: LatencyFit, name: str, n: int) -> ModelDemand | None:
    """One SLO model of ``n`` replicas on fit ``f`` (None when no load fits its SLO)."""
    one = f.base_ms + f.per_item_ms
    slo = min(500.0, max(10.0, one * rng.uniform(3, 10)))
    base = ModelDemand(
        name=name,
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
        return None
    per_replica = qmax * rng.choice((0.03, 0.08, 0.15, 0.3, 0.5, 0.7))
    m = base.model_copy(update={"target_qps": round(per_replica * n, 1)})
    if not any(replica_capacity(m, d) for d in DUTY_LEVELS_MS):
        return None
    return m


# Nodes of the mix instance: (GPU model, GPUs per node, how many nodes), drawn from the node list.
MIX_NODES: tuple[tuple[str, int, int], ...] = (
    ("G2", 8, 6),
    ("G3", 8, 2),
    ("V100M32", 8, 2),
    ("V100M32", 4, 1),
    ("V100M16", 8, 1),
    ("V100M16", 4, 2),
    ("T4", 4, 2),
    ("T4", 2, 3),
    ("P100", 2, 1),
)
# GPU memory by trace GPU model (the trace has none): public specs; G2/G3 are undisclosed
# internal codes, assumed 32 GiB.
GPU_MEMORY_MIB = {
    "P100": 16384,
    "T4": 16384,
    "V100M16": 16384,
    "V100M32": 32768,
    "A10": 24576,
    "G2": 32768,
    "G3": 32768,
}
# latency-fit GPU model -> the trace's GPU model name (gpu_type of the SLO models)
MIX_FIT_TYPES = (("T4", "T4"), ("V100-16GB", "V100M16"), ("V100-32GB", "V100M32"))


def pod_demand(name: str, p: PodRow) -> ModelDemand:
    """A trace pod as a one-replica fixed demand: ``gpu_milli``, ``cpu_milli``,
    ``host_memory_mib``, ``gpus_per_replica = num_gpu``, no GPU memory (the trace has none);
    a ``gpu_spec`` naming several types (``A|B``) becomes "any type" (a ModelDemand names one)."""
    return ModelDemand(
        name=name,
        replicas=1,
        slo_ms=1000.0,
        target_qps=0.0,
        latency=LatencyProfile(base_ms=0.0, per_item_ms=0.0),
        memory=MemoryProfile(weights_mib=0.0, per_item_mib=0.0),
        max_batch=1,
        gpu_milli=p.gpu_milli,
        gpu_type=p.gpu_spec if p.gpu_spec and "|" not in p.gpu_spec else "",
        cpu_milli=p.cpu_milli,
        host_memory_mib=p.memory_mib,
        gpus_per_replica=p.num_gpu,
    )


def alibaba_mix_problem(
    nodes: Sequence[NodeRow],
    pods: Sequence[PodRow],
    fits: Sequence[LatencyFit],
    *,
    seed: int = 1,
    n_pods: int = 70,
    n_slo_models: int = 20,
) -> Problem:
    """Trace pods with GPUs and SLO models on ~20 trace nodes (see module docstring).

    A pod becomes a one-replica model named after it (``pod_demand``). Deterministic for a
    seed; raises ``ValueError`` when the inputs lack a node kind.
    """
    rng = random.Random(seed)
    gpus: list[Gpu] = []
    limits: list[NodeResources] = []
    for model, per_node, count in MIX_NODES:
        kind = sorted(
            (n for n in nodes if n.model == model and n.gpus == per_node), key=lambda n: n.name
        )
        if len(kind) < count:
            raise ValueError(f"node list has {len(kind)} {model}x{per_node} nodes, need {count}")
        for n in sorted(rng.sample(kind, count), key=lambda n: n.name):
            limits.append(
                NodeResources(node=n.name, cpu_milli=n.cpu_milli, memory_mib=n.memory_mib)
            )
            gpus += [
                Gpu(node=n.name, index=i, memory_mib=GPU_MEMORY_MIB[model], gpu_type=model)
                for i in range(n.gpus)
            ]
    with_gpu = sorted((p for p in pods if p.num_gpu > 0), key=lambda p: p.name)
    models = [
        pod_demand(p.name, p)
        for p in sorted(rng.sample(with_gpu, min(n_pods, len(with_gpu))), key=lambda p: p.name)
    ]
    pools = [(usable_fits(fits, fit_model), gpu_type) for fit_model, gpu_type in MIX_FIT_TYPES]
    pools = [(pool, t) for pool, t in pools if pool]
    made = 0
    while pools and made < n_slo_models:
        pool, gpu_type = pools[made % len(pools)]
        m = _slo_model(rng, rng.choice(pool), f"slo-{made}", rng.randint(1, 3))
        if m is None:
            continue
        models.append(
            m.model_copy(
                update={
                    "gpu_type": gpu_type,
                    "cpu_milli": rng.choice((1000, 2000, 4000, 8000)),
                    "host_memory_mib": rng.choice((4096, 8192, 16384)),
                }
            )
        )
        made += 1
    return Problem(gpus=tuple(gpus), models=tuple(models), nodes=tuple(limits))
