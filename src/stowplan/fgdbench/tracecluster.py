"""The cluster model of the trace benchmark: the trace's rows (``NodeRow``, ``PodRow``), the
arrival sequence of the FGD protocol (``arrivals``), the per-node free resources (``Cluster``),
FGD's fragmentation over it (``FragModel``) and where idle capacity lies (``idle_breakdown``).

Callers: ``tracesim`` (the simulator), ``tracedefrag`` (its moves), ``tracebound``, ``synth``,
``tracefiles``, tests. Pure: no I/O, no clock; it imports neither the simulator nor its
defragmentation (they import it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stowplan.placement import fragscore
from stowplan.placement.fragscore import (
    MILLI,
    TaskKind,
)

MAX_GPUS = 8
HALF_MILLI = 500  # two fractional pods above this never share a GPU


@dataclass(frozen=True)
class NodeRow:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


@dataclass(frozen=True)
class PodRow:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str = ""

    @property
    def gpu_request(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def kind(self) -> TaskKind:
        return TaskKind(self.cpu_milli, self.num_gpu, self.gpu_milli, self.gpu_spec)


def arrivals(
    pods: Sequence[PodRow], capacity_milli: int, seed: int, tune: float = 1.3
) -> list[PodRow]:
    """The arrival sequence of one seed: shuffled originals, inflated or trimmed to ``tune``."""
    rng = random.Random(seed)
    base = sorted(pods, key=lambda p: p.name)
    seq = list(base)
    rng.shuffle(seq)
    target = tune * capacity_milli
    total = sum(p.gpu_request for p in seq)
    if total < target:
        while True:
            p = base[rng.randrange(len(base))]
            if total + p.gpu_request > target:
                break
            seq.append(p)
            total += p.gpu_request
    else:
        while total > target:
            p = seq.pop(rng.randrange(len(seq)))
            total -= p.gpu_request
    return seq


@dataclass
class Cluster:
    """Mutable cluster state: per node CPU/memory left and per GPU milli left."""

    nodes: Sequence[NodeRow]
    models: list[str] = field(init=False)
    model_id: np.ndarray = field(init=False)
    cpu_left: np.ndarray = field(init=False)
    mem_left: np.ndarray = field(init=False)
    left: np.ndarray = field(init=False)  # (N, 8), 0 where the GPU does not exist
    ngpu: np.ndarray = field(init=False)
    state_key: list[tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.models = sorted({n.model for n in self.nodes})
        self.model_id = np.asarray([self.models.index(n.model) for n in self.nodes])
        self.cpu_left = np.asarray([n.cpu_milli for n in self.nodes], dtype=np.int64)
        self.mem_left = np.asarray([n.memory_mib for n in self.nodes], dtype=np.int64)
        self.ngpu = np.asarray([n.gpus for n in self.nodes], dtype=np.int64)
        self.left = np.zeros((len(self.nodes), MAX_GPUS), dtype=np.int64)
        for i, n in enumerate(self.nodes):
            self.left[i, : n.gpus] = MILLI
        self.state_key = [self._key(i) for i in range(len(self.nodes))]

    @property
    def capacity_milli(self) -> int:
        return int(self.ngpu.sum()) * MILLI

    def allocated_milli(self) -> int:
        return self.capacity_milli - int(self.left.sum())

    def _key(self, i: int) -> tuple[int, ...]:
        g = int(self.ngpu[i])
        return (int(self.model_id[i]), int(self.cpu_left[i]), *sorted(self.left[i, :g].tolist()))

    def spec_mask(self, spec: str) -> np.ndarray:
        if not spec:
            return np.ones(len(self.nodes), dtype=bool)
        allowed = [self.models.index(m) for m in spec.split("|") if m in self.models]
        return np.isin(self.model_id, allowed)

    def feasible(self, pod: PodRow, spec_mask: np.ndarray) -> np.ndarray:
        ok = (self.cpu_left >= pod.cpu_milli) & (self.mem_left >= pod.memory_mib)
        if pod.num_gpu == 0:
            return ok
        ok &= spec_mask
        if pod.gpu_milli < MILLI:
            shared: np.ndarray = ok & (self.left >= pod.gpu_milli).any(axis=1)
            return shared
        whole: np.ndarray = ok & ((self.left == MILLI).sum(axis=1) >= pod.num_gpu)
        return whole

    def place(self, i: int, pod: PodRow, gpus: Sequence[int]) -> None:
        self.cpu_left[i] -= pod.cpu_milli
        self.mem_left[i] -= pod.memory_mib
        for g in gpus:
            self.left[i, g] -= pod.gpu_milli
        self.state_key[i] = self._key(i)

    def unplace(self, i: int, pod: PodRow, gpus: Sequence[int]) -> None:
        self.cpu_left[i] += pod.cpu_milli
        self.mem_left[i] += pod.memory_mib
        for g in gpus:
            self.left[i, g] += pod.gpu_milli
        self.state_key[i] = self._key(i)


def gpu_choices(left: np.ndarray, n: int, pod: PodRow) -> list[list[int]]:
    """GPU index choices on one node: each distinct fitting left value (share) or the first
    ``num_gpu`` free GPUs (whole)."""
    row = left[:n].tolist()
    if pod.num_gpu == 0:
        return [[]]
    if pod.gpu_milli < MILLI:
        seen: dict[int, int] = {}
        for g, v in enumerate(row):
            if v >= pod.gpu_milli and v not in seen:
                seen[v] = g
        return [[g] for g in seen.values()]
    free = [g for g, v in enumerate(row) if v == MILLI]
    return [free[: pod.num_gpu]] if len(free) >= pod.num_gpu else []


class FragModel(fragscore.FragModel):
    """``fragscore.FragModel`` of a workload's pod rows (node classes: the GPU models)."""

    def __init__(self, typical: Sequence[PodRow], models: Sequence[str]) -> None:
        super().__init__((p.kind for p in typical), models)


Score = Callable[[Cluster, int, PodRow, list[int]], float]


@dataclass(frozen=True)
class IdleBreakdown:
    """Where the idle GPU milli of a final state lies (sums to ``capacity - allocated``)."""

    large_share_gpus: int  # GPUs holding a fractional pod of more than 500 milli
    large_share_milli: int  # idle milli on those GPUs (the hole beside the large pod)
    other_partial_milli: int  # idle milli on every other partly used GPU
    stranded_free_milli: int  # whole free GPUs on nodes where no GPU pod kind fits CPU/memory
    free_milli: int  # whole free GPUs elsewhere (no pod that arrived later fitted them)


def idle_breakdown(
    cluster: Cluster,
    running: dict[int, list[tuple[PodRow, list[int]]]],
    typical: Sequence[PodRow],
) -> IdleBreakdown:
    """Split the idle GPU capacity of ``cluster`` by the cause visible in the final state."""
    large = np.zeros(cluster.left.shape, dtype=bool)
    for i, pods in running.items():
        for p, gs in pods:
            if 500 < p.gpu_milli < MILLI:
                large[i, gs[0]] = True
    gpu_kinds = {(p.cpu_milli, p.memory_mib, p.gpu_spec) for p in typical if p.num_gpu > 0}
    usable = np.zeros(len(cluster.nodes), dtype=bool)
    for cpu, mem, spec in gpu_kinds:
        spec_ok = cluster.spec_mask(spec)
        usable |= spec_ok & (cluster.cpu_left >= cpu) & (cluster.mem_left >= mem)
    exists = np.arange(MAX_GPUS)[None, :] < cluster.ngpu[:, None]
    free = exists & (cluster.left == MILLI)
    partial = exists & (cluster.left < MILLI)
    stranded = free & ~usable[:, None]
    return IdleBreakdown(
        large_share_gpus=int(large.sum()),
        large_share_milli=int(cluster.left[large].sum()),
        other_partial_milli=int(cluster.left[partial & ~large].sum()),
        stranded_free_milli=int(cluster.left[stranded].sum()),
        free_milli=int(cluster.left[free & ~stranded].sum()),
    )
