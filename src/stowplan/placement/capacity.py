"""SLO -> capacity: batch size, busy time and memory of a replica at a duty cycle (DESIGN §3).

A GPU shared by several replicas runs them round-robin in a duty cycle of ``d`` ms. A replica
receiving ``qps`` requests/s collects ``n = max(1, ceil(qps * d / 1000))`` requests per cycle and
runs them as its batching policy says (``ModelDemand.batching``): ``aimd`` runs one batch of
``b = n``; ``static`` runs ``ceil(n / N)`` batches of its fixed size ``N``; ``none`` runs ``n``
batches of 1. Its GPU time per cycle is ``t = runs * (base + per_item * b)`` ms and it holds
``weights + per_item_mib * b`` MiB. A set of replicas fits on one GPU at ``d`` iff ``sum t <= d``,
every member meets its SLO by :func:`stowplan.slo.meets_slo` (``max(d, wait_i) + t_i <= slo_i``,
``wait`` its batch-fill bound ``ModelDemand.max_queue_delay_ms``; the queueing it assumes is
written out in :mod:`stowplan.slo`, which the agent uses for AIMD's target too),
``b_i <= max_batch_i``, and the memory sum fits. ``verify.check_plan`` re-derives the SLO test
with its own arithmetic (``max(d, wait) + t <= slo``).
A replica with ``target_qps == 0`` still runs batches of 1 (it must answer a stray request within
its SLO) and holds its weights.

Fixed demands (the pods of the public GPU-sharing trace) set ``ModelDemand.gpu_milli`` > 0: they
take ``gpu_milli / 1000`` of every cycle whatever ``d`` is, need no batching and hold
``weights_mib``.

``d`` is discretised over ``DUTY_LEVELS_MS`` so that at a fixed level every replica has a fixed
time and memory cost (the linear formulation used by best-fit and CP-SAT). A replica that fits
alone on a GPU only in a narrow band of ``d`` between two levels is found exactly by
:func:`alone_capacity` (over the intervals where its batch size is constant), so the planner
never reports it as not fitting a GPU of its own. Callers: bestfit,
cpsat, bounds, planner, verify (for the reason texts only) and ``placement.replica_capacity``.
Pure arithmetic: no solver, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stowplan import slo
from stowplan.placement.models import BatchingPolicy, ModelDemand, _Frozen

# Duty-cycle levels in ms: roughly geometric (x1.25), fine enough that the packing loses little
# against a continuous d, coarse enough that a GPU has few level choices.
DUTY_LEVELS_MS: tuple[float, ...] = (
    1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0,
    50.0, 60.0, 80.0, 100.0, 120.0, 160.0, 200.0, 250.0, 320.0, 400.0, 500.0, 640.0, 800.0,
    1000.0,
)  # fmt: skip

# Relative slack when comparing floats computed in different orders (solver vs verifier).
EPS = slo.EPS

# alone_capacity looks at no more request counts per cycle than this (static / none policies)
_MAX_COUNTS = 100_000


class ReplicaCapacity(_Frozen):
    """What one replica costs at one duty cycle (shown in InferenceModel.status)."""

    duty_cycle_ms: float
    batch_size: int
    busy_ms: float
    memory_mib: float
    gpu_share: float  # busy_ms / duty_cycle_ms
    max_qps: float  # what this replica could serve at this duty cycle (batch capped by max_batch)


def replica_qps(model: ModelDemand) -> float:
    """Requests per second each replica receives: target_qps / replicas (0 if no replicas)."""
    return slo.per_replica_qps(model.target_qps, model.replicas)


def items_per_cycle(model: ModelDemand, duty_cycle_ms: float) -> int:
    """Requests one replica collects per cycle: max(1, ceil(qps * d / 1000))."""
    return slo.items_per_cycle(replica_qps(model), duty_cycle_ms)


def batch_size(model: ModelDemand, duty_cycle_ms: float) -> int:
    """Items per batch: the cycle's requests (aimd), the fixed size (static) or 1 (none); 0 for
    a fixed (gpu_milli) demand."""
    if model.gpu_milli:
        return 0
    if model.batching is BatchingPolicy.NONE:
        return 1
    if model.batching is BatchingPolicy.STATIC:
        return model.static_batch_size
    return items_per_cycle(model, duty_cycle_ms)


def runs_per_cycle(model: ModelDemand, duty_cycle_ms: float) -> int:
    """Batches one replica runs per cycle: 1 (aimd, fixed demands), ceil(n / N) (static), n
    (none), with n = :func:`items_per_cycle`."""
    if model.gpu_milli or model.batching is BatchingPolicy.AIMD:
        return 1
    n = items_per_cycle(model, duty_cycle_ms)
    if model.batching is BatchingPolicy.NONE:
        return n
    return -(-n // model.static_batch_size)


def busy_ms(model: ModelDemand, duty_cycle_ms: float) -> float:
    """GPU time per cycle of one replica at duty cycle ``d``: its runs times one batch's time."""
    if model.gpu_milli:
        return model.gpu_milli / 1000.0 * duty_cycle_ms
    b = batch_size(model, duty_cycle_ms)
    runs = runs_per_cycle(model, duty_cycle_ms)
    return runs * (model.latency.base_ms + model.latency.per_item_ms * b)


def memory_mib(model: ModelDemand, duty_cycle_ms: float) -> float:
    """Device memory of one replica at duty cycle ``d`` (weights plus the batch's activations)."""
    if model.gpu_milli:
        return model.memory.weights_mib
    return model.memory.weights_mib + model.memory.per_item_mib * batch_size(model, duty_cycle_ms)


def replica_capacity(model: ModelDemand, duty_cycle_ms: float) -> ReplicaCapacity | None:
    """Batch, busy time and memory of one replica of ``model`` at ``duty_cycle_ms``.

    None when no GPU could run it at that duty cycle: the batch exceeds ``max_batch``, a request
    could miss its SLO (not :func:`stowplan.slo.meets_slo`: ``max(d, wait) + busy > slo``) or
    the replica alone needs more than the whole cycle.
    Memory is not checked here (it depends on the GPU).
    """
    if not (duty_cycle_ms > 0 and math.isfinite(duty_cycle_ms)):
        return None
    b = batch_size(model, duty_cycle_ms)
    t = busy_ms(model, duty_cycle_ms)
    if model.gpu_milli == 0:
        if b > model.max_batch:
            return None
        if not slo.meets_slo(model.slo_ms, duty_cycle_ms, t, model.max_queue_delay_ms):
            return None
    if t > duty_cycle_ms * (1 + EPS):
        return None
    if model.gpu_milli:
        max_qps = math.inf
    elif model.batching is BatchingPolicy.AIMD:
        max_qps = model.max_batch * 1000.0 / duty_cycle_ms if duty_cycle_ms else 0.0
    else:  # as many runs of b as one cycle holds
        one = model.latency.base_ms + model.latency.per_item_ms * b
        fit = duty_cycle_ms / one * (1 + EPS) if one > 0 else 0.0
        # a run time so small that the cycle holds more runs than a float counts: unbounded
        max_qps = math.floor(fit) * b * 1000.0 / duty_cycle_ms if math.isfinite(fit) else math.inf
    return ReplicaCapacity(
        duty_cycle_ms=duty_cycle_ms,
        batch_size=b,
        busy_ms=t,
        memory_mib=memory_mib(model, duty_cycle_ms),
        gpu_share=t / duty_cycle_ms,
        max_qps=max_qps,
    )


def alone_capacity(model: ModelDemand) -> ReplicaCapacity | None:
    """The cheapest duty cycle at which one replica of ``model`` runs alone on a GPU, searched
    exactly (not over ``DUTY_LEVELS_MS``); None only when no duty cycle at all works.

    For ``n`` requests per cycle the duty cycles giving that count form the interval
    ``((n - 1) * 1000 / qps, n * 1000 / qps]``; there the replica's runs take a constant ``t_n``
    (see the module docstring) and it fits iff ``t_n <= d`` and ``d + wait + t_n <= slo``.
    The largest such ``d`` in the interval, ``min(n * 1000 / qps, slo - wait - t_n)``, gives the
    smallest GPU share
    ``t_n / d``; the answer is the ``n`` with the smallest share (``n <= max_batch`` for aimd),
    confirmed by
    :func:`replica_capacity` at that ``d`` (same arithmetic as every other caller). Example (the
    model of issue 14): base 9.65 ms, per item 0.0934 ms, 1,420 qps, max batch 16, SLO 494 ms:
    no level fits (10 ms gives batch 15 taking 11.05 ms > 10; 12 ms gives batch 18 > 16), but
    b = 16 at d = 16,000 / 1,420 = 11.27 ms takes 11.14 ms (98.9 % of the GPU). Fixed demands
    (``gpu_milli``) fit at any level: this returns their cost at the first level.
    """
    if model.gpu_milli:
        return replica_capacity(model, DUTY_LEVELS_MS[0])
    qps = replica_qps(model)
    base, per = model.latency.base_ms, model.latency.per_item_ms
    if qps <= 0:
        counts: range | tuple[int, ...] = (1,)
    elif model.batching is BatchingPolicy.AIMD:
        counts = range(1, model.max_batch + 1)
    else:  # n requests per cycle need d > (n - 1) * 1000 / qps, and d < slo
        counts = range(1, min(_MAX_COUNTS, math.floor(model.slo_ms * qps / 1000.0) + 1) + 1)
    best: ReplicaCapacity | None = None
    for n in counts:
        if model.batching is BatchingPolicy.AIMD:
            b, runs = n, 1
        elif model.batching is BatchingPolicy.NONE:
            b, runs = 1, n
        else:
            b, runs = model.static_batch_size, -(-n // model.static_batch_size)
        t = runs * (base + per * b)
        top = n * 1000.0 / qps if qps > 0 else math.inf
        if model.max_queue_delay_ms + t > model.slo_ms * (1 + slo.EPS):
            continue  # max(d, wait) + t <= slo needs wait + t <= slo at any d
        d = min(top, model.slo_ms - t)
        if not (d > 0 and math.isfinite(d)) or d < t:
            continue
        if qps > 0 and d <= (n - 1) * 1000.0 / qps:  # the SLO cuts the interval away
            continue
        cap = replica_capacity(model, d)
        if cap is not None and (best is None or cap.gpu_share < best.gpu_share):
            best = cap
    return best


# batching policy as a number for the vectorised costs (aimd 0, static 1, none 2)
_POLICY_CODE = {BatchingPolicy.AIMD: 0, BatchingPolicy.STATIC: 1, BatchingPolicy.NONE: 2}


@dataclass(frozen=True)
class LevelCosts:
    """Per-level costs of one replica of a model over ``DUTY_LEVELS_MS`` (numpy, read-only).

    ``ok[l]`` is False where ``replica_capacity`` is None; ``busy_ms``/``memory_mib`` hold the
    costs there anyway (finite) so vectorised sums stay finite.
    """

    busy_ms: npt.NDArray[np.float64]
    memory_mib: npt.NDArray[np.float64]
    batch: npt.NDArray[np.int64]
    ok: npt.NDArray[np.bool_]

    @property
    def feasible(self) -> bool:
        return bool(self.ok.any())

    def min_share(self) -> float:
        """Smallest GPU time share over the feasible levels (inf if none)."""
        if not self.feasible:
            return math.inf
        levels = np.asarray(DUTY_LEVELS_MS)
        return float((self.busy_ms / levels)[self.ok].min())

    def min_memory_mib(self) -> float:
        """Smallest memory over the feasible levels (inf if none)."""
        if not self.feasible:
            return math.inf
        return float(self.memory_mib[self.ok].min())


def level_costs(model: ModelDemand) -> LevelCosts:
    """Costs of one replica of ``model`` at every level of ``DUTY_LEVELS_MS``."""
    n = len(DUTY_LEVELS_MS)
    t = np.zeros(n)
    m = np.zeros(n)
    b = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    for i, d in enumerate(DUTY_LEVELS_MS):
        t[i] = busy_ms(model, d)
        m[i] = memory_mib(model, d)
        b[i] = batch_size(model, d)
        ok[i] = replica_capacity(model, d) is not None
    for arr in (t, m, b, ok):
        arr.setflags(write=False)
    return LevelCosts(busy_ms=t, memory_mib=m, batch=b, ok=ok)


@dataclass(frozen=True)
class LevelMatrices:
    """``LevelCosts`` of many models stacked: row ``i`` is model ``i`` (read-only arrays)."""

    busy_ms: npt.NDArray[np.float64]  # (models, levels)
    memory_mib: npt.NDArray[np.float64]
    batch: npt.NDArray[np.int64]
    ok: npt.NDArray[np.bool_]

    def row(self, i: int) -> LevelCosts:
        """Model ``i``'s costs (views, no copy)."""
        return LevelCosts(
            busy_ms=self.busy_ms[i],
            memory_mib=self.memory_mib[i],
            batch=self.batch[i],
            ok=self.ok[i],
        )


def level_cost_matrices(models: Sequence[ModelDemand]) -> LevelMatrices:
    """``level_costs`` for many models at once, vectorised over models and levels.

    Same float operations in the same order as the scalar functions above (so the verifier,
    which uses those, agrees bit for bit); about 100x faster than a loop at 10,000 replicas.
    """
    n = len(DUTY_LEVELS_MS)
    if not models:
        empty = np.zeros((0, n))
        return LevelMatrices(empty, empty, empty.astype(np.int64), empty.astype(bool))
    d = np.asarray(DUTY_LEVELS_MS)[None, :]
    cols = np.asarray(
        [
            (
                m.replicas,
                m.target_qps,
                m.gpu_milli,
                m.latency.base_ms,
                m.latency.per_item_ms,
                m.memory.weights_mib,
                m.memory.per_item_mib,
                m.max_batch,
                m.slo_ms,
                _POLICY_CODE[m.batching],
                m.static_batch_size,
                m.max_queue_delay_ms,
            )
            for m in models
        ],
        dtype=float,
    ).T[:, :, None]
    reps, tq, milli, base, per, weights, per_mib, max_batch, slo_ms, policy, size, wait = cols
    qps = np.divide(tq, reps, out=np.zeros_like(tq), where=reps > 0)
    fixed = milli > 0
    need = qps * d / 1000.0
    n = np.maximum(1.0, np.ceil(need - EPS * np.maximum(1.0, need)))
    static, single = policy == 1, policy == 2
    b = np.where(single, 1.0, np.where(static, size, n))
    runs = np.where(single, n, np.where(static, np.ceil(n / np.maximum(size, 1.0)), 1.0))
    b = np.where(fixed, 0.0, b)
    t = np.where(fixed, milli / 1000.0 * d, runs * (base + per * b))
    mem = np.where(fixed, weights, weights + per_mib * b)
    ok = t <= d * (1 + EPS)
    # slo.meets_slo vectorised: planned_latency_ms = max(d, wait) + t
    ok &= fixed | ((b <= max_batch) & (np.maximum(d, wait) + t <= slo_ms * (1 + EPS)))
    bi = b.astype(np.int64)
    for arr in (t, mem, bi, ok):
        arr.setflags(write=False)
    return LevelMatrices(busy_ms=t, memory_mib=mem, batch=bi, ok=ok)


def level_costs_many(models: Sequence[ModelDemand]) -> tuple[LevelCosts, ...]:
    """``level_costs`` for many models at once (rows of ``level_cost_matrices``)."""
    mats = level_cost_matrices(models)
    return tuple(mats.row(i) for i in range(len(models)))
